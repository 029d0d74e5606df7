"""Container HEALTHCHECK: speak SMTP to Willi's first listen address.

Reads the configuration the way Willi does (./willi.env, then WILLI_*
variables), with Willi's own loader from the pyz next to this file, connects,
expects the 220 greeting and says QUIT. Exit 0 when healthy, 1 otherwise.
"""

import os
import smtplib
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "willi.pyz"))

from willi.config import load_config  # noqa: E402

LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def main() -> int:
    try:
        host, port = load_config(None, os.environ).listen[0]
        host = LOOPBACK.get(host, host)
        with smtplib.SMTP(host, port, local_hostname="healthcheck.invalid", timeout=5) as smtp:
            code, _ = smtp.noop()
    except Exception as exc:  # any failure is "unhealthy", with the reason
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    if code != 250:
        print(f"unhealthy: NOOP answered {code}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
