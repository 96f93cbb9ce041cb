"""The README stays a short page for newcomers; README.md and docs/ say what the code does, not how or when it was measured.

    python -m pytest -q tests/test_readme.py
"""
import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_README_LINES = 220
# history belongs in git log: words that describe how a page was made, not what the code does
HISTORY_WORDS = ("session", "dev box", "build 1", "build 2", "helpers' jobs")
ISO_DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def readme_text():
    return (ROOT / "README.md").read_text(encoding="utf-8")


def pages():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def section(text, title):
    """The lines under `## <title>` up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def ignored_patterns():
    gitignore = ROOT / ".gitignore"
    lines = gitignore.read_text(encoding="utf-8").splitlines() if gitignore.exists() else []
    return [line.strip().strip("/") for line in lines if line.strip() and not line.startswith("#")]


def top_level_folders():
    """Folders at the repository root that belong to the project (not hidden, not git-ignored, not empty)."""
    patterns = ignored_patterns()
    return sorted(path.name for path in ROOT.iterdir()
                  if path.is_dir() and not path.name.startswith((".", "_"))
                  and not any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns)
                  and any(path.iterdir()))


def test_readme_is_short():
    lines = readme_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES}): move tables to docs/"


def test_no_history_words_or_dates():
    found = []
    for page in pages():
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            lowered = line.lower()
            hits = [word for word in HISTORY_WORDS if word in lowered] + ISO_DATE.findall(line)
            found += [f"{page.relative_to(ROOT)}:{number}: {hit!r}" for hit in hits]
    assert not found, "history belongs in git log, not in README.md or docs/:\n" + "\n".join(found)


def test_relative_links_in_the_readme_exist():
    links = [link for link in MARKDOWN_LINK.findall(readme_text())
             if not re.match(r"[a-z][a-z0-9+.-]*:", link) and not link.startswith("#")]
    assert links, "README.md links no docs page"
    missing = sorted({link for link in links if not (ROOT / link.split("#", 1)[0]).exists()})
    assert not missing, f"README.md links files that do not exist: {missing}"


def test_layout_names_every_top_level_folder():
    named = set(re.findall(r"`([\w.-]+)/`", section(readme_text(), "Layout")))
    folders = set(top_level_folders())
    assert not folders - named, f"folders missing from the README's layout: {sorted(folders - named)}"
    assert not named - folders, f"the README's layout names folders that do not exist: {sorted(named - folders)}"
