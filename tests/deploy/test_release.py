"""The version says what changed: CHANGELOG.md has a section for it, and the
guide and the changelog that the README points to exist."""

from __future__ import annotations

import re

from tests.support.willi_process import REPO_ROOT
from willi import __version__


def test_the_changelog_has_a_section_for_this_version() -> None:
    headings = re.findall(r"^## (\S+)", (REPO_ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert headings[0] == __version__, headings


def test_the_files_the_readme_links_to_exist() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    guide = (REPO_ROOT / "docs" / "production.md").read_text()
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme):
        assert (REPO_ROOT / target).exists(), target
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", guide):
        assert (REPO_ROOT / "docs" / target).resolve().exists(), target
