"""The documents keep their promises: every relative link leads to a file (and heading) that exists, so a
result whose evidence folder is gone cannot stay cited, and the README's Python runs as printed."""

import re
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted([ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("bench/**/*.md")])
FENCED = re.compile(r"^```.*?^```", re.S | re.M)  # code blocks: their brackets are code, not links
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _prose(path: Path) -> str:
    return FENCED.sub("", path.read_text(encoding="utf-8"))


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", _prose(path), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path)) if not re.match(r"[a-z]+:", t)]  # http:, mailto: ...


def test_the_documents_are_found():
    assert ROOT / "README.md" in DOCUMENTS and len(DOCUMENTS) > 20
    assert sum(len(_relative_links(p)) for p in DOCUMENTS) > 100


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(document):
    broken = []
    for link in _relative_links(document):
        target, _, anchor = link.partition("#")
        file = (document.parent / urllib.parse.unquote(target)).resolve() if target else document
        if not file.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{link} (no such heading)")
    assert not broken, broken


def test_anchor_rules_match_github():
    # Headings as the documents write them, and the anchors GitHub gives them.
    experiments = _anchors(ROOT / "docs" / "experiments.md")
    assert "2026-11-27-bf16-and-channels_last-on-the-cpu" in experiments
    assert "2026-12-03-float32-for-progressive-resizings-small-epochs-no" in experiments


def test_readme_python_runs():
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S | re.M)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
