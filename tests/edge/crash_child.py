"""Child process of the crash-safety test: open the store, say "ready", wait for "go", apply the
next update (the one whose version follows the current one in the sorted list), exit."""

from __future__ import annotations

import sys
from pathlib import Path

from stamen.edge.runtime import EdgeRuntime


def main(store: str, updates: str) -> None:
    rt = EdgeRuntime.open(Path(store), verify=False)
    files = sorted(Path(updates).glob("*.stamen"))
    current = rt.version().version
    nxt = next((f for f in files if int(f.stem) > current), None)
    data = nxt.read_bytes() if nxt is not None else b""
    print("ready", flush=True)
    sys.stdin.readline()  # "go": the parent starts its random kill timer now
    if data:
        rt.apply(data)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
