"""The suite itself: test files have unique basenames, because the test
folders are not packages and pytest would refuse a second `test_x.py`."""

import collections
import pathlib

TESTS = pathlib.Path(__file__).resolve().parent


def test_every_test_file_has_a_basename_of_its_own() -> None:
    names = collections.Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
