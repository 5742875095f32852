"""The repository stands on its own: a user's clone has no ../shared, so nothing cites it."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_nothing_cites_the_shared_spec():
    """Catches a docstring or README line pointing at ../shared/PAPER.md or DESIGN.md."""
    hits = []
    for top in ("platform", "trainables", "search_spaces", "docs", "README.md"):
        base = ROOT / top
        for f in ([base] if base.is_file() else sorted(base.rglob("*"))):
            if f.is_file() and f.suffix in (".py", ".md", ".yaml", ".toml"):
                text = f.read_text(errors="replace")
                hits += [f"{f.relative_to(ROOT)}: {w}" for w in ("shared/PAPER", "shared/DESIGN",
                                                                 "PAPER.md", "DESIGN.md")
                         if w in text]
    assert not hits, hits


def test_the_docs_the_code_cites_exist():
    assert (ROOT / "docs" / "paper.md").is_file() and (ROOT / "docs" / "dynamics.md").is_file()
