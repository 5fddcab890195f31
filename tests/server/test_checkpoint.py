"""The checkpoint codec and its atomic writer (server/checkpoint.py)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from stamen.server import checkpoint as cpt
from stamen.server.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_fingerprint,
    decode_checkpoint,
    encode_checkpoint,
    fingerprint,
    read_checkpoint,
    write_checkpoint,
)
from stamen.server.history import RoundRecord


def _record(rnd: int, acc: float = 0.5) -> RoundRecord:
    return RoundRecord(
        round=rnd, accuracy=acc, loss=math.nan, bytes_up=100 * rnd, bytes_down=7, epsilon=None,
        rejected=0, wall_s=0.25, sim_time_s=math.nan, staleness_max=0, staleness_mean=math.nan,
    )  # fmt: skip


def _ck(step: int = 2, finished: bool = False) -> Checkpoint:
    weights = {"b": np.arange(3, dtype=np.float32), "a": np.ones((2, 2), np.float32)}  # not sorted
    return Checkpoint(
        step=step,
        mode="sync",
        weights=weights,
        records=tuple(_record(r) for r in range(1, step + 1)),
        fingerprint=fingerprint({"settings": {"seed": 0, "clients": {"lr": 0.2}}}),
        state={"driver": {"rule": {"kind": "stateless"}}},
        arrays={"rule/center": np.array([1.5, -2.0], np.float32)},
        finished=finished,
    )


def test_round_trip_keeps_everything() -> None:
    ck = _ck()
    back = decode_checkpoint(encode_checkpoint(ck))
    assert list(back.weights) == ["b", "a"]  # the model's order, not the file's sorted one
    for k in ck.weights:
        np.testing.assert_array_equal(back.weights[k], ck.weights[k])
    np.testing.assert_array_equal(back.arrays["rule/center"], [1.5, -2.0])
    assert (back.step, back.mode, back.finished, back.stopped) == (2, "sync", False, None)
    assert cpt.records_equal(back.records, ck.records, skip=())
    assert back.fingerprint == ck.fingerprint and back.state == ck.state


def test_fingerprint_hand_computed() -> None:
    flat = fingerprint({"seed": 3, "clients": {"lr": 0.1, "per_round": 4}, "codec": {"pipeline": ["dense"]}})
    assert flat == {"seed": "3", "clients.lr": "0.1", "clients.per_round": "4", "codec.pipeline": '["dense"]'}


def test_config_mismatch_names_the_keys(tmp_path: Path) -> None:
    saved = fingerprint({"seed": 0, "clients": {"lr": 0.2}, "rounds": 5})
    now = fingerprint({"seed": 0, "clients": {"lr": 0.1}, "rounds": 6})
    with pytest.raises(CheckpointError) as err:
        check_fingerprint(saved, now, tmp_path)
    msg = str(err.value)
    assert "clients.lr (0.2 -> 0.1)" in msg and "rounds (5 -> 6)" in msg and "seed" not in msg
    assert "\n" not in msg
    check_fingerprint(saved, dict(saved), tmp_path)  # the same configuration passes


@pytest.mark.parametrize("cut", [0, 5, 8, 100, -1, -200])
def test_truncated_file_is_one_line(cut: int) -> None:
    data = encode_checkpoint(_ck())
    with pytest.raises(CheckpointError) as err:
        decode_checkpoint(data[:cut], "ck")
    assert str(err.value).startswith("ck ") and "\n" not in str(err.value)


def test_flipped_tensor_byte_is_found() -> None:
    data = bytearray(encode_checkpoint(_ck()))
    data[-3] ^= 0x40  # inside the last tensor's bytes
    with pytest.raises(CheckpointError, match="digest"):
        decode_checkpoint(bytes(data))


def _with_meta(edit: dict) -> bytes:
    """A checkpoint whose JSON metadata has ``edit`` applied (header re-encoded, length fixed)."""
    data = encode_checkpoint(_ck())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"][cpt.META_KEY])
    meta.update(edit)
    header["__metadata__"][cpt.META_KEY] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def test_wrong_version_and_format_are_refused() -> None:
    with pytest.raises(CheckpointError, match="format version 99; this stamen reads version 1"):
        decode_checkpoint(_with_meta({"version": 99}))
    with pytest.raises(CheckpointError, match="not a stamen checkpoint"):
        decode_checkpoint(_with_meta({"format": "other"}))
    with pytest.raises(CheckpointError, match="field 'step'"):
        decode_checkpoint(_with_meta({"step": "2"}))


def test_oversized_header_is_refused_unread() -> None:
    data = struct.pack("<Q", cpt.MAX_HEADER_BYTES + 1) + b"{}"
    with pytest.raises(CheckpointError, match="header of"):
        decode_checkpoint(data)


def test_read_missing_is_none_and_garbage_is_one_line(tmp_path: Path) -> None:
    assert read_checkpoint(tmp_path) is None
    (tmp_path / cpt.FILE_NAME).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="not a stamen checkpoint"):
        read_checkpoint(tmp_path)


def test_crash_inside_the_writer_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_checkpoint(tmp_path, _ck(step=2))

    def half_then_crash(fh, data: bytes) -> None:  # type: ignore[no-untyped-def]
        fh.write(data[: len(data) // 2])
        raise OSError("disk gone")

    monkeypatch.setattr(cpt, "_write_all", half_then_crash)
    with pytest.raises(OSError, match="disk gone"):
        write_checkpoint(tmp_path, _ck(step=3))
    back = read_checkpoint(tmp_path)
    assert back is not None and back.step == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [cpt.FILE_NAME]  # the temp file is gone


def test_crash_before_rename_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_checkpoint(tmp_path, _ck(step=1))

    def no_rename(src: str, dst: Path) -> None:
        raise KeyboardInterrupt  # killed between the fsync'd temp file and the rename

    monkeypatch.setattr(cpt.os, "replace", no_rename)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path, _ck(step=2))
    monkeypatch.undo()
    back = read_checkpoint(tmp_path)
    assert back is not None and back.step == 1
    write_checkpoint(tmp_path, _ck(step=2))
    assert read_checkpoint(tmp_path).step == 2  # type: ignore[union-attr]


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, _ck())
    stale = tmp_path / f"{cpt.TMP_PREFIX}abc.tmp"
    stale.write_bytes(b"half")
    assert cpt.remove_stale_temps(tmp_path) == [stale]
    assert read_checkpoint(tmp_path) is not None


def test_pinned_size_of_a_small_checkpoint() -> None:
    # 7 weights + 2 state floats (36 bytes of tensors) and the JSON header: pinned to catch a layout change
    data = encode_checkpoint(_ck())
    (n,) = struct.unpack("<Q", data[:8])
    assert len(data) - 8 - n == 36
    assert 1150 <= n <= 1400  # 1272 bytes at format version 1 (with hier_* fields; the version varies)


@settings(max_examples=25, deadline=None)
@given(
    st.dictionaries(
        st.text("abcxyz._", min_size=1, max_size=8),
        arrays(
            np.float32,
            st.tuples(st.integers(0, 4), st.integers(1, 3)),
            elements=st.floats(-1e6, 1e6, width=32),
        ),
        min_size=1,
        max_size=4,
    ),
    st.integers(0, 50),
    st.booleans(),
)
def test_round_trip_property(weights: dict[str, np.ndarray], step: int, finished: bool) -> None:
    ck = Checkpoint(step, "fedbuff", weights, (), {"seed": "1"}, {"x": [1, None, "a"]}, {}, finished, None)
    back = decode_checkpoint(encode_checkpoint(ck))
    assert list(back.weights) == list(weights)
    for k, v in weights.items():
        np.testing.assert_array_equal(back.weights[k], v)
    assert (back.step, back.finished, back.state) == (step, finished, {"x": [1, None, "a"]})
