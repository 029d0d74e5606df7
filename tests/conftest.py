"""Fixtures shared by the whole suite: the test PKI, a real MariaDB server,
and an `upstream_csv` helper to write a mapping file."""

from tests.support.certs import pki  # noqa: F401  (session-scoped test CA and certificates)
from tests.support.mariadb import mariadb  # noqa: F401  (session-scoped real MariaDB)
