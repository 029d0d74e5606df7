"""`python -m willi`: the same entry point as willi.py and the `willi` command."""

import sys

from willi.cli import main

if __name__ == "__main__":
    sys.exit(main())
