"""``python -m ckd``: the command line (``ckd.cli``)."""

from ckd.cli import main

raise SystemExit(main())
