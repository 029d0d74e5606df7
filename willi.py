#!/usr/bin/env python3
"""Willi, an SMTP proxy that routes each transaction by recipient: `python3 willi.py --help`."""

import sys

from willi.cli import main

if __name__ == "__main__":
    sys.exit(main())
