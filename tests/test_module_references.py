"""Every module a docstring or a doc names exists (issue 36, item 4): a file moved or renamed
leaves no pointer to where it used to be."""

import re

from conftest import ROOT

PACKAGE = ROOT / "pokedex_trainer"
PATH = re.compile(r"(?<![\w./-])((?:[a-z_0-9]+/)+[a-z_0-9]+\.py)\b")
DOTTED = re.compile(r"\bpokedex_trainer(?:\.[a-z_0-9]+)+")


def _texts():
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
                 *(ROOT / "docs").glob("*.md"), ROOT / "README.md"]:
        yield path, path.read_text(encoding="utf-8")


def _exists(reference: str) -> bool:
    return any((base / reference).exists() for base in
               (ROOT, PACKAGE, ROOT / "benchmarks", ROOT / "tests"))


def _module_exists(dotted: str) -> bool:
    """A module, or a name its file defines or imports (pokedex_trainer.core.loop.train_phase)."""
    parts = dotted.split(".")
    for i in range(len(parts), 1, -1):
        base = ROOT.joinpath(*parts[:i])
        source = base.with_suffix(".py") if base.with_suffix(".py").exists() else \
            base / "__init__.py"
        if source.exists():
            return i == len(parts) or re.search(
                rf"\b{re.escape(parts[i])}\b", source.read_text(encoding="utf-8")) is not None
    return False


def test_every_module_named_in_code_or_docs_exists():
    missing = sorted({f"{path.relative_to(ROOT)}: {match}"
                      for path, text in _texts()
                      for match in [m.group(1) for m in PATH.finditer(text)
                                    if not _exists(m.group(1))]
                      + [m.group(0) for m in DOTTED.finditer(text)
                         if not _module_exists(m.group(0))]})
    assert not missing, "\n".join(missing)


def test_the_check_sees_a_name_that_is_gone():
    assert not _exists("core/no_such_module.py") and _exists("core/loop.py")
    assert not _module_exists("pokedex_trainer.core.no_such_module")
    assert _module_exists("pokedex_trainer.core.loop.train_phase")
