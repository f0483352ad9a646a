"""``python -m unsam.fuse``: the command's name; the code is :mod:`unsam.train.fuse`."""

from unsam.train.fuse import main

if __name__ == "__main__":
    raise SystemExit(main())
