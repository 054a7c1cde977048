"""The README stays a user's page: short, its results block generated from committed JSON (never
typed by hand), no issue numbers; every relative link in it and in docs/*.md resolves."""

import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#+\s+(.*)$", re.MULTILINE)


def summarize():
    spec = importlib.util.spec_from_file_location("summarize", ROOT / "bench" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_is_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def test_results_block_is_what_summarize_generates_from_the_folders_it_names():
    module = summarize()
    text = README.read_text()
    begin, end = text.index(module.README_BEGIN), text.index(module.README_END) + len(module.README_END)
    block = text[begin:end]
    named = re.search(r"--readme README\.md (.+?) -->", block)
    assert named, "the block must say which folders it was generated from"
    folders = [pathlib.Path(name) for name in named.group(1).split()]
    assert block == "\n".join(module.readme_block(folders, ROOT)), (
        "regenerate: python bench/summarize.py --readme README.md " + named.group(1))


def test_readme_names_no_issue_numbers():
    found = re.findall(r"\bissues?\s*#?\d+|#\d+\b", README.read_text(), re.IGNORECASE)
    assert not found


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = page.read_text()
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link {target} points to nothing"
        if fragment and linked.suffix == ".md":
            anchors = {anchor(h) for h in HEADING.findall(linked.read_text())}
            assert fragment in anchors, f"{page.name}: link {target}: no such heading in {linked.name}"
