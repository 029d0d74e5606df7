"""The architecture, checked: which module may import what (STYLE: layering).

The sans-IO layers (smtp/, relay/, tls.py, deadlines.py) touch no sockets,
clocks, threads or logs; only the MySQL mapping imports PyMySQL; only the
CLI reads argv and the environment; no event-loop framework anywhere; and
the package has no import cycle (imports under TYPE_CHECKING and inside
functions do not run at import time, so they do not count).
"""

import ast
import pathlib
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "willi"
MODULES = sorted(PACKAGE.rglob("*.py"))
SANS_IO = [p for p in MODULES if p.parent.name in ("smtp", "relay")
           or p.name in ("tls.py", "replies.py", "errors.py", "deadlines.py")]
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


# --- no cycles ------------------------------------------------------------------------
def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


KNOWN = {module_name(p): p for p in MODULES}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(path: pathlib.Path) -> set[str]:
    """The willi modules `path` imports when it is imported: module level only
    (also inside try/if, not under TYPE_CHECKING, not inside functions)."""
    found: set[str] = set()
    pending = list(ast.parse(path.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If):
            if not _is_type_checking(node):
                pending += node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from willi.pkg import sub` imports the submodule; a name from
            # the package itself needs the package's __init__.
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & KNOWN.keys()
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(node.module)
    return {name for name in found if name in KNOWN}


def import_graph() -> dict[str, set[str]]:
    graph = {name: runtime_imports(path) - {name} for name, path in KNOWN.items()}
    # Importing willi.a.b runs willi/a/__init__.py first.
    for name, deps in graph.items():
        for dep in list(deps):
            parent = dep.rsplit(".", 1)[0]
            if parent in KNOWN and parent != name and not name.startswith(parent + "."):
                deps.add(parent)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
