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

from hypothesis import settings as _hypothesis_settings

# No test may depend on timing: Hypothesis's 200 ms deadline per example would
# fail a property test on a busy CI machine, so there is none.
_hypothesis_settings.register_profile("willi", deadline=None)
_hypothesis_settings.load_profile("willi")

from tests.support.certs import pki  # noqa: F401  (session-scoped test CA and certificates)
from tests.support.mariadb import mariadb  # noqa: F401  (session-scoped real MariaDB)
