"""`pip install .` and a wheel install the `willi` package only, with a
`willi` command (issue 13 item 2).

The wheel is built from a copy of the tree (`pip wheel --no-deps`, as `pip
install .` would build it), installed into a fresh venv together
with its two dependencies, and `willi --version` is run from that venv's bin/.
"""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.support.willi_process import REPO_ROOT, child_environ
from willi import __version__


def pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env=child_environ())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy, so the checkout gets no build/ or *.egg-info of its own
    tree = out / "tree"
    _copy_tracked(REPO_ROOT, tree)
    result = pip("wheel", "--no-deps", "-w", str(out), str(tree), cwd=out)
    assert result.returncode == 0, result.stdout + result.stderr
    [built] = out.glob("willi-*.whl")
    return built


def _copy_tracked(source: Path, target: Path) -> None:
    """The files git knows, plus any new ones not ignored (a branch before commit)."""
    listing = subprocess.run(
        ["git", "-C", str(source), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listing):
        path = source / name
        if path.is_file() and not path.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(path.read_bytes())


def test_the_wheel_holds_the_willi_package_and_nothing_else(wheel: Path) -> None:
    assert wheel.name == f"willi-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(f"willi-{__version__}.dist-info/entry_points.txt").decode()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"willi", f"willi-{__version__}.dist-info"}, tops
    assert "willi/cli.py" in names and "willi/routing/router.py" in names
    assert "willi = willi.cli:main" in entry_points


def test_willi_version_runs_from_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    python = target / "bin" / "python"
    # the venv's own interpreter sees nothing yet
    assert subprocess.run([python, "-c", "import willi"], capture_output=True,
                          cwd=tmp_path).returncode != 0
    installed = pip("--python", str(python), "install", "-q", str(wheel), cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    result = subprocess.run([target / "bin" / "willi", "--version"], capture_output=True, text=True,
                            timeout=30, cwd=tmp_path, env=child_environ())
    assert (result.returncode, result.stdout.strip()) == (0, f"willi {__version__}"), result
    as_module = subprocess.run([python, "-m", "willi", "--version"], capture_output=True, text=True,
                               timeout=30, cwd=tmp_path, env=child_environ())
    assert as_module.stdout.strip() == f"willi {__version__}", as_module
    imported = subprocess.run([python, "-c", "import pymysql, dotenv, willi; print(willi.__file__)"],
                              capture_output=True, text=True, cwd=tmp_path)
    assert str(target) in imported.stdout, imported
