"""``python -m unsam.label``: see :mod:`unsam.label.cli`."""

from unsam.label.cli import main

raise SystemExit(main())
