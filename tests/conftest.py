"""Fixtures shared by the whole suite: the test PKI, a real MariaDB server,
and an `upstream_csv` helper to write a mapping file."""

import warnings

# Hypothesis imports a module that uses a deprecated typing helper only when it
# reports a failure; with warnings as errors that would hide the report itself.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass

from tests.support.certs import pki  # noqa: F401  (session-scoped test CA and certificates)
from tests.support.mariadb import mariadb  # noqa: F401  (session-scoped real MariaDB)
