"""``python -m unsam.export``: the command's name; the code is :mod:`unsam.label.export`."""

from unsam.label.export import main

if __name__ == "__main__":
    raise SystemExit(main())
