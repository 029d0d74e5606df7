"""The architecture, checked: which module may import what (STYLE: layering).

The sans-IO layers (smtp/, tls.py) touch no sockets, clocks, threads or logs;
only the MySQL mapping imports PyMySQL; only the CLI reads argv and the
environment; no event-loop framework anywhere.
"""

import ast
import pathlib
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "willi"
MODULES = sorted(PACKAGE.rglob("*.py"))
SANS_IO = [p for p in MODULES if p.parent.name == "smtp" or p.name in ("tls.py", "replies.py", "errors.py")]
FORBIDDEN_IN_SANS_IO = {"socket", "selectors", "threading", "time", "logging", "signal", "willi.reactor",
                        "willi.connection", "willi.workers", "willi.session", "willi.log"}
EVENT_LOOPS = {"asyncio", "twisted", "trio", "gevent", "eventlet", "curio", "anyio"}
RUNTIME_THIRD_PARTY = {"pymysql", "dotenv"}


def imports(path: pathlib.Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("path", SANS_IO, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_sans_io_modules_touch_no_sockets_clocks_threads_or_logs(path: pathlib.Path) -> None:
    bad = {name for name in imports(path) if name in FORBIDDEN_IN_SANS_IO or top(name) in FORBIDDEN_IN_SANS_IO}
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_runtime_imports_are_the_standard_library_pymysql_and_dotenv_only(path: pathlib.Path) -> None:
    outside = {top(n) for n in imports(path)} - set(sys.stdlib_module_names) - RUNTIME_THIRD_PARTY - {"willi"}
    assert not outside and not ({top(n) for n in imports(path)} & EVENT_LOOPS)


def test_only_the_mysql_mapping_imports_pymysql_and_only_config_imports_dotenv() -> None:
    users = {p.relative_to(PACKAGE).as_posix(): {top(n) for n in imports(p)} for p in MODULES}
    assert [m for m, names in users.items() if "pymysql" in names] == ["routing/mysql.py"]
    assert [m for m, names in users.items() if "dotenv" in names] == ["config.py"]


def test_only_the_cli_reads_argv_and_the_environment() -> None:
    readers = [p.name for p in MODULES if "sys.argv" in p.read_text() or "os.environ" in p.read_text()]
    assert readers == ["cli.py"]
