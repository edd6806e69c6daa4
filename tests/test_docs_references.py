"""Every document the repository cites is in the repository.

Users get this tree and nothing else: a docstring, help text or page that points to a design
note kept somewhere else (or to a docs/ page that was renamed) sends them nowhere.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "demo-out", "__pycache__", ".pytest_cache", ".hypothesis"}
TEXT_SUFFIXES = {".py", ".md", ".cfg", ".toml", ".txt", ".yaml", ".yml", ".sh"}
#: documents that live outside the repository (spelled in pieces so this file does not cite them)
OUTSIDE = ["DESIGN" + ".md", "iemocap-" + "format", "../" + "shared", "/work/" + "shared", "shared/" + "papers",
           "STYLE" + ".md"]
DOC_PATH = re.compile(r"(?<![\w/.-])((?:docs|tests|benchmarks|scripts|emofuse)/[\w./-]+\.(?:md|py|yaml|png|json))")
MD_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def text_files():
    for p in sorted(ROOT.rglob("*")):
        rel = p.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if rel.parts[:2] == ("emofuse", "data"):   # the demo corpus: data, not prose
            continue
        if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name in ("Makefile", "run")):
            yield p


def test_the_scan_sees_the_files_that_cite_documents():
    names = {p.relative_to(ROOT).as_posix() for p in text_files()}
    assert {"README.md", "docs/design.md", "docs/iemocap.md", "emofuse/cli.py", "tests/test_docs_references.py"} <= names


def test_no_reference_to_a_document_outside_the_repository():
    found = []
    for p in text_files():
        if p.name == Path(__file__).name:
            continue
        for no, line in enumerate(p.read_text(errors="replace").splitlines(), start=1):
            found += [f"{p.relative_to(ROOT)}:{no}: {name}" for name in OUTSIDE if name in line]
    assert not found, "references to documents that are not in the repository:\n" + "\n".join(found)


def test_every_cited_repository_path_exists():
    missing = []
    for p in text_files():
        if p.name == Path(__file__).name:
            continue
        text = p.read_text(errors="replace")
        for no, line in enumerate(text.splitlines(), start=1):
            for m in DOC_PATH.finditer(line):
                path = m.group(1).rstrip(".")
                if "*" not in path and not (ROOT / path).exists():
                    missing.append(f"{p.relative_to(ROOT)}:{no}: {path}")
            if p.suffix == ".md":
                for m in MD_LINK.finditer(line):
                    target = m.group(1)
                    if "://" in target or target.startswith("mailto:"):
                        continue
                    if not (p.parent / target).exists():
                        missing.append(f"{p.relative_to(ROOT)}:{no}: link {target}")
    assert not missing, "cited paths that do not exist:\n" + "\n".join(missing)


def test_the_checks_catch_what_they_claim():
    """The patterns match the kinds of reference that used to slip through."""
    assert any(name in "under the protocol of DESIGN" ".md (leave" for name in OUTSIDE)
    assert any(name in "implements ``iemocap-" "format.md``" for name in OUTSIDE)
    assert [m.group(1) for m in DOC_PATH.finditer("see docs/nowhere.md and emofuse/heads/options.py.")] == \
        ["docs/nowhere.md", "emofuse/heads/options.py"]
    assert [m.group(1) for m in MD_LINK.finditer("[a](store-format.md#x) [b](https://x.org/y.md)")] == \
        ["store-format.md", "https://x.org/y.md"]
