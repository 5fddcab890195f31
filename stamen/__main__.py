"""``python -m stamen``: the ``stamen`` command (for environments without its script on PATH)."""

import sys

from stamen.cli import main

if __name__ == "__main__":
    sys.exit(main())
