"""The README's file tree names every source, config and test file of the repository, one line each.

    python -m pytest -q tests/test_readme.py
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("configs", "data", "docs", "metrics", "models", "tests")
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".txt", ".ini"}


def repository_files():
    files = {p.name for p in ROOT.iterdir() if p.is_file() and p.suffix in SUFFIXES}
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in SUFFIXES and "__pycache__" not in path.parts:
                files.add(path.relative_to(ROOT).as_posix())
    return files


def readme_tree():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    return [line.split()[0] for line in block.splitlines() if line.strip()]


def test_every_file_has_one_line_in_the_readme_tree():
    listed = readme_tree()
    duplicates = sorted({name for name in listed if listed.count(name) > 1})
    assert not duplicates, f"listed twice in README.md: {duplicates}"
    files = {f for f in repository_files() if f != "README.md"}
    missing = sorted(files - set(listed))
    stale = sorted(name for name in set(listed) - files if not name.endswith("/"))
    assert not missing, f"files missing from the README tree: {missing}"
    assert not stale, f"README tree names files that do not exist: {stale}"


def test_readme_tree_lines_say_what_each_file_is():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    short = [line for line in block.splitlines() if line.strip() and not line.strip().endswith("/")
             and not re.match(r"\s*\S+\s{2,}\S.{8,}", line)]
    assert not short, f"tree lines without a description: {short}"
