"""``python -m unsam.baselines``: the command's name; the code is :mod:`unsam.evaluate.baselines`."""

from unsam.evaluate.baselines import main

if __name__ == "__main__":
    raise SystemExit(main())
