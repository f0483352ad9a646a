"""``python -m unsam.evaluate``: see :mod:`unsam.evaluate.cli`."""

from unsam.evaluate.cli import main

raise SystemExit(main())
