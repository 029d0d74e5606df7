"""The front's pure parts stay pure: the PROXY codec and the connection-rate
counter touch no socket, clock, thread or log (STYLE: layering)."""

from __future__ import annotations

import pathlib

import pytest

from tests.test_layers import FORBIDDEN_IN_SANS_IO, imports, top

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "willi"


@pytest.mark.parametrize("name", ["proxy_protocol.py", "anvil.py"])
def test_the_front_pure_modules_import_no_io(name: str) -> None:
    found = imports(PACKAGE / name)
    bad = {n for n in found if n in FORBIDDEN_IN_SANS_IO or top(n) in FORBIDDEN_IN_SANS_IO}
    assert not bad, f"{name} imports {bad}"
    assert not {n for n in found if n.startswith("willi.")}, f"{name} depends on other Willi modules"
