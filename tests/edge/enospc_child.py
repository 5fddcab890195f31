"""Child of the real disk-full test, run as ``unshare -m --propagation private python THIS MNT
MODEL.onnx KEYDIR``: mounts a 256 kB tmpfs at MNT (private to this mount namespace, gone when the
process exits), makes a store on it, fills the rest of the tmpfs, applies an update (which must
fail with ENOSPC), frees the space and applies it again. Prints one JSON line; exit 77 if a tmpfs
cannot be mounted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from stamen.edge import EdgeRuntime, create_delta, create_store
from stamen.protocols import Signer


def _fill(path: Path) -> None:
    """Write zeros to ``path`` until the file system is full."""
    with open(path, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass


def main(mnt: str, model: str, keydir: str) -> int:
    root = Path(mnt)
    root.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(root)]
    if subprocess.run(mount, capture_output=True, check=False).returncode != 0:
        print("cannot mount a tmpfs here")
        return 77
    store = root / "store"
    create_store(store, Path(model), Path(keydir) / "public.pem", model_id="tiny")
    rt = EdgeRuntime.open(store)
    cur = {k: np.array(v) for k, v in rt.global_weights().items()}
    rng = np.random.default_rng(0)
    target = {k: v + rng.normal(0, 0.01, v.shape).astype(np.float32) for k, v in cur.items()}
    update = create_delta(cur, target, "dense", Signer.from_file(Path(keydir) / "private.pem"), version=1)
    files = {p: p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file() and p.name != ".lock"}
    _fill(root / "filler")
    try:
        rt.apply(update)
        err: OSError | None = None
    except OSError as exc:
        err = exc
    after = {p: p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file() and p.name != ".lock"}
    version_after_failure = EdgeRuntime.open(store).version().version
    (root / "filler").unlink()
    retry = EdgeRuntime.open(store).apply(update).version
    print(
        json.dumps(
            {
                "errno": None if err is None else err.errno,
                "filename": None if err is None else err.filename,
                "version_after_failure": version_after_failure,
                "files_unchanged": after == files,
                "version_after_retry": retry,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
