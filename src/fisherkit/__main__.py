"""``python -m fisherkit ...``: the same as the ``fisherkit`` command (useful where the console
script is not on PATH, e.g. ``python -m fisherkit stats binomial --successes 6 --trials 10``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
