"""``stamen device``: device.toml round trip and errors, SuperNode argv, backoff, supervision,
provisioning (layout, modes, endorsement, store at version 0), ``stamen deploy model``."""

from __future__ import annotations

import dataclasses
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from stamen.deploy.keys import new_node_key, signing_key_files
from stamen.deploy.model import export_initial_model
from stamen.device.config import DaemonConfig, DeviceConfig, load_device_config, render_device_config
from stamen.device.daemon import Supervisor, backoff_delays, node_config_arg, supernode_argv
from stamen.device.provision import DeviceInitOptions, device_init
from stamen.protocols import Signer
from stamen.protocols.identity import load_node_key, verify_endorsement

CFG = DeviceConfig(
    superlink="fl.example.org:9092",
    node_key="/d/keys/node.key",
    signing_key="/d/keys/device-signing.pem",
    endorsement="/d/keys/device-signing.endorsement",
    store="/d/store",
    data_source="/d/data/train.npz",
    flwr_home="/d/flwr",
    root_certificates="/d/trust/ca.crt",
    node_config={"partition-id": 3, "label": "a b\\c"},
)


def test_config_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "device.toml"
    path.write_text(render_device_config(CFG))
    assert load_device_config(path) == CFG


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('superlink = "nohost"', "superlink must be HOST:PORT"),
        ('superlink = "h:99999"', "superlink must be HOST:PORT"),
        ('root-certificates = ""', "root-certificates is required"),
        ("colour = 1", "unknown keys ['colour']"),
        ('insecure = "false"', "insecure must be true or false, got 'false'"),  # truthy: plaintext
        ("trusted-entities = true", "trusted-entities must be a string, got True"),
        ("node-key = 5", "node-key must be a string, got 5"),
        ('runtime-port = "9094"', "runtime-port must be an integer, got '9094'"),
        ("runtime-port = true", "runtime-port must be an integer, got True"),
        # flower-supernode would read these as flags (its argv): refused at load
        ('root-certificates = "--insecure"', "root-certificates '--insecure' starts with '-'"),
        (
            'node-key = "-node.key"',
            "node-key '-node.key' starts with '-' .*; write it as ./-node.key or an absolute path",
        ),
        ('trusted-entities = "-t.yaml"', "trusted-entities '-t.yaml' starts with '-'"),
        ('store = "-store"', "store '-store' starts with '-'"),
        ('superlink = "-h:9092"', "superlink '-h:9092' starts with '-'"),
    ],
)
def test_bad_device_values_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    lines = [ln for ln in render_device_config(CFG).splitlines() if not ln.startswith(text.split(" ")[0])]
    lines.insert(lines.index("[device]") + 1, text)
    path = tmp_path / "device.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")) as exc:
        load_device_config(path)
    assert "\n" not in str(exc.value)


def test_other_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_device_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[device\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_device_config(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="may not set 'edge-store'"):
        dataclasses.replace(CFG, node_config={"edge-store": "/elsewhere"})
    with pytest.raises(ValueError, match="backoff-max-s must be >= backoff-initial-s"):
        DaemonConfig(backoff_initial_s=10, backoff_max_s=5)
    with pytest.raises(ValueError, match="stop-timeout-s must be in"):
        DaemonConfig(stop_timeout_s=0)


def test_supernode_argv() -> None:
    argv = supernode_argv(CFG, "/usr/bin/flower-supernode")
    assert argv[:3] == ["/usr/bin/flower-supernode", "--superlink", "fl.example.org:9092"]
    assert argv[argv.index("--root-certificates") + 1] == "/d/trust/ca.crt" and "--insecure" not in argv
    assert argv[argv.index("--auth-supernode-private-key") + 1] == "/d/keys/node.key"
    assert argv[argv.index("--port") + 1] == "9094"
    assert node_config_arg(CFG) == (
        'data-source="/d/data/train.npz" edge-store="/d/store" signing-key="/d/keys/device-signing.pem" '
        'endorsement="/d/keys/device-signing.endorsement" partition-id=3 label="a b\\c"'
    )
    insecure = supernode_argv(dataclasses.replace(CFG, insecure=True, root_certificates=""), "sn")
    assert "--insecure" in insecure and "--root-certificates" not in insecure
    with pytest.raises(ValueError, match="double quotes"):
        node_config_arg(dataclasses.replace(CFG, node_config={"x": 'say "hi"'}))


def test_backoff_doubles_to_the_cap_and_resets_after_a_stable_run() -> None:
    delay = backoff_delays(DaemonConfig(backoff_initial_s=2, backoff_max_s=10, stable_s=60))
    assert [delay(1.0) for _ in range(5)] == [2, 4, 8, 10, 10]
    assert delay(60.0) == 2 and delay(0.5) == 4


def _child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_supervisor_stops_a_running_child_and_exits_0(tmp_path: Path) -> None:
    sup = Supervisor(_child("import time; time.sleep(120)"), {}, DaemonConfig(stop_timeout_s=5))
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(sup.run()))
    thread.start()
    end = time.monotonic() + 30
    while sup.proc is None and time.monotonic() < end:
        time.sleep(0.05)
    assert sup.proc is not None
    sup.stop()
    thread.join(timeout=30)
    assert result == [0] and sup.proc.returncode is not None and sup.starts == 1


def test_supervisor_restarts_a_failing_child_until_max_starts(tmp_path: Path) -> None:
    daemon = DaemonConfig(backoff_initial_s=0.01, backoff_max_s=0.02)
    log = tmp_path / "sn.log"
    sup = Supervisor(_child("print('up'); raise SystemExit(3)"), {}, daemon, log, max_starts=3)
    assert sup.run() == 1 and sup.starts == 3
    assert log.read_text().split() == ["up", "up", "up"]


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("model") / "initial.onnx"
    return out, export_initial_model("smoke", ["clients.runtime=edge"], out)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
def test_device_init_layout_keys_and_store(tmp_path: Path, onnx_model: tuple[Path, str]) -> None:
    from stamen.edge import EdgeRuntime

    model, digest = onnx_model
    trust = tmp_path / "server.pub.pem"
    trust.write_bytes(signing_key_files()[1])
    opts = DeviceInitOptions(model, trust, "127.0.0.1:9092", "mod:fn", insecure=True)
    cfg = device_init(tmp_path / "dev", opts)
    home = tmp_path / "dev"
    assert load_device_config(home / "device.toml") == cfg and cfg.insecure
    assert _mode(home) == 0o700
    assert _mode(home / "keys" / "node.key") == _mode(home / "keys" / "device-signing.pem") == 0o600
    status = EdgeRuntime.open(Path(cfg.store)).status()
    assert status["version"] == 0 and status["hash"] == digest and status["model_id"]
    node_pub = load_node_key((home / "keys" / "node.key").read_bytes()).public_key()
    pem = node_pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    raw = Signer.from_file(cfg.signing_key).public_key_bytes()
    verify_endorsement(pem, raw, (home / "keys" / "device-signing.endorsement").read_bytes())
    with pytest.raises(ValueError, match="already holds a device"):
        device_init(home, opts)
    with pytest.raises(ValueError, match="--ca is required"):
        device_init(tmp_path / "dev2", dataclasses.replace(opts, insecure=False))
    private, _ = new_node_key()
    (tmp_path / "given.key").write_bytes(private)
    again = device_init(home, dataclasses.replace(opts, node_key=tmp_path / "given.key", force=True))
    assert (home / "keys" / "node.key").read_bytes() == private and again.store == cfg.store
    assert again.trusted_entities == "" and "--trusted-entities" not in supernode_argv(again, "sn")
    reviewer = ed25519.Ed25519PrivateKey.generate().public_key()
    ssh = reviewer.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    (tmp_path / "entities.yaml").write_text(f"fpk_reviewer: '{ssh}'\n")
    signed = device_init(
        home, dataclasses.replace(opts, trusted_entities=tmp_path / "entities.yaml", force=True)
    )
    assert signed.trusted_entities == str(home / "trust" / "trusted-entities.yaml")
    assert Path(signed.trusted_entities).read_text() == (tmp_path / "entities.yaml").read_text()
    assert load_device_config(home / "device.toml") == signed


def test_deploy_model_refuses_bad_output_and_models(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must end in \.onnx"):
        export_initial_model("smoke", [], tmp_path / "m.pt")
    with pytest.raises(ValueError, match="cannot be exported"):
        export_initial_model("smoke", ["lora.adapter=lora"], tmp_path / "m.onnx")
