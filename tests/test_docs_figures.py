"""No measured figure is lost when the README is shortened: every number of the README as it was
on 2026-12-06 (frozen in ``docs/_archive/``) still appears in the README or in a ``docs/*.md`` page.

Numbers are compared as tokens: thousands separators and signs are dropped (``−1.3`` and ``14,668``
match ``1.3`` and ``14668``), and a number glued to a word (``v10h``, ``resnet150``) is not a figure.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO / "docs" / "_archive" / "README_2026-12-06.md"
NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:e-?\d+)?(?![\w])")


def figures(text: str) -> set[str]:
    """The numbers of a text, normalised (no thousands separators, no trailing dot)."""
    return {m.group(0).replace(",", "").rstrip(".") for m in NUMBER.finditer(text)} - {""}


def current_text() -> str:
    """The README and every docs page (not the archive)."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return "\n".join(p.read_text() for p in pages)


def missing(old: str, new: str) -> list[str]:
    return sorted(figures(old) - figures(new), key=lambda s: (len(s), s))


def test_archive_is_the_long_readme():
    old = ARCHIVE.read_text()
    assert len(old) > 60_000 and "## Results (released model)" in old
    assert {"0.634", "0.279", "14668", "4.812744", "6103", "1.2e-7"} <= figures(old)


def test_every_figure_of_the_old_readme_survives():
    lost = missing(ARCHIVE.read_text(), current_text())
    assert not lost, f"figures of the old README found in neither README.md nor docs/*.md: {lost}"


def test_a_dropped_figure_is_caught():
    """The check above fails when one figure is taken out of the new text."""
    new = current_text()
    assert "0.279" in new
    assert missing(ARCHIVE.read_text(), new.replace("0.279", "")) == ["0.279"]
    assert figures("−1.3 / +0.5, 14,668 rows, 1e-4, v10h, resnet150, 2.") == {"1.3", "0.5", "14668", "1e-4", "2"}
