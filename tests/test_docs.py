"""Documentation points only at files that are in the repository (a figure from elsewhere is quoted, not linked)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", "runs", ".git", "node_modules", ".pytest_cache"}
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")  # [text](target)
# a path with at least one folder, ending in .md: docs/integrity.md, ../bench/README.md (not <out>/report.md)
PATH = re.compile(r"(?<![\w<>/.-])((?:\.\./|[\w-]+/)+[\w.-]+\.md)\b")


def _sources():
    for p in sorted(ROOT.rglob("*")):
        if p.suffix in (".md", ".py") and p.is_file() and not SKIP & set(p.relative_to(ROOT).parts):
            yield p


def test_every_referenced_document_is_in_the_repository():
    missing = []
    for src in _sources():
        text = src.read_text(errors="replace")
        refs = set(PATH.findall(text))
        if src.suffix == ".md":
            refs |= {t for t in LINK.findall(text) if "://" not in t and not t.startswith("mailto:")}
        for ref in refs:
            if ref.startswith("runs/"):
                continue  # what `make run` writes
            if not ((src.parent / ref).exists() or (ROOT / ref).exists()):
                missing.append(f"{src.relative_to(ROOT)}: {ref}")
    assert not missing, missing
