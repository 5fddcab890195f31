"""The device daemon's systemd unit: pinned lines, validation, and systemd's own verifier."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stamen.deploy.cli import main
from stamen.deploy.unit import UnitConfig, render_device_unit


def _lines(text: str) -> set[str]:
    return set(text.splitlines())


def test_unit_has_the_lines_the_daemon_relies_on() -> None:
    text = render_device_unit(UnitConfig(config="/etc/stamen/dev 1.toml", user="stamen-dev"))
    assert {
        "After=network-online.target time-sync.target",
        "Wants=network-online.target time-sync.target",
        "Restart=on-failure",
        "RestartSec=10",
        "User=stamen-dev",
        "ExecStart=/opt/stamen/venv/bin/stamen device run --config '/etc/stamen/dev 1.toml'",
        "StateDirectory=stamen",
        "NoNewPrivileges=yes",
        "WantedBy=multi-user.target",
    } <= _lines(text)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"config": "device.toml"}, "config must be an absolute path"),
        ({"exec_path": "/bin/x$HOME"}, "exec_path must be"),
        ({"user": "root"}, "non-root"),
        ({"user": "Bad User"}, "non-root system user name"),
        ({"restart_s": 0}, "restart_s must be 1..3600"),
    ],
)
def test_bad_unit_config_is_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UnitConfig(**kwargs)  # type: ignore[arg-type]


def test_cli_writes_the_unit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "stamen-device.service"
    assert main(["install-unit", "--config", "/srv/dev.toml", "-o", str(out)]) == 0
    assert "ExecStart=/opt/stamen/venv/bin/stamen device run --config /srv/dev.toml" in out.read_text()
    assert main(["install-unit", "--user", "root"]) == 2


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit_and_rejects_a_broken_one(tmp_path: Path) -> None:
    stamen = Path(sys.executable).with_name("stamen")  # an executable that exists here
    good = tmp_path / "stamen-device.service"
    good.write_text(render_device_unit(UnitConfig(exec_path=str(stamen))))
    run = subprocess.run(["systemd-analyze", "verify", str(good)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = bad_dir / "stamen-device.service"
    bad.write_text(render_device_unit(UnitConfig(exec_path="/nonexistent/stamen")))
    run = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "not executable" in run.stderr
