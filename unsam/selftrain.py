"""``python -m unsam.selftrain``: the command's name; the code is :mod:`unsam.train.selftrain`."""

from unsam.train.selftrain import main

if __name__ == "__main__":
    raise SystemExit(main())
