"""``python -m stamen.deploy init|register|install-unit ...``."""

from stamen.deploy.cli import main

raise SystemExit(main())
