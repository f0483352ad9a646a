"""``python -m unsam.train``: see :mod:`unsam.train.cli`."""

from unsam.train.cli import main

raise SystemExit(main())
