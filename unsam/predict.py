"""``python -m unsam.predict``: the command's name; the code is :mod:`unsam.models.predict`."""

from unsam.models.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
