"""``python -m unsam.view``: see :mod:`unsam.view.cli`."""

from unsam.view.cli import main

raise SystemExit(main())
