"""The README and docs/study.md as documents: every in-page link names a heading of the page, every
relative link and image names a file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "study.md"]


def _prose(text: str) -> str:
    """The text without fenced code blocks (a `# comment` in a shell block is not a heading)."""
    return re.sub(r"(?ms)^```.*?^```", "", text)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_link_of_a_document_resolves(doc):
    text = _prose(doc.read_text())
    anchors = {_anchor(h) for h in re.findall(r"(?m)^#+ (.+)$", text)}
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    if doc.name == "README.md":
        assert {"#seeds-is-the-effect-real", "docs/rulegraph.svg"} <= set(links)  # the regex sees links
    broken = []
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue  # external: not checked offline
        path, _, anchor = link.partition("#")
        if path and not (doc.parent / path).exists():
            broken.append(link)
        elif not path and anchor not in anchors:
            broken.append(link)
    assert not broken, f"{doc.name}: links to nothing: {broken}"
