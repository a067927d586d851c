"""The layering is a contract: import-linter checks the contracts in pyproject.toml
([tool.importlinter]: storage <- models <- services <- chunkrec; serving, trainer and the experiment
system never import each other; interfaces never import their implementations), and this
file checks what import-linter cannot: no module outside storage/vhpi/ uses a private name of
the store, and no source module passes 400 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ("chunkrec", "services", "models", "storage")
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(p for d in SOURCE for p in (ROOT / d).rglob("*.py"))


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    assert lint.is_file(), "lint-imports not found: pip install import-linter (dev extras)"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_private_name_of_the_store_outside_it() -> None:
    """`from storage.vhpi... import _x` and `<...store...>._x` (an attribute access whose
    object mentions the store) are the store's business only."""
    found = []
    for path in _modules():
        rel = path.relative_to(ROOT)
        if rel.parts[:2] == ("storage", "vhpi"):
            continue
        tree = ast.parse(path.read_text(), str(rel))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "storage.vhpi"):
                found += [f"{rel}:{node.lineno} imports {a.name}" for a in node.names
                          if a.name.startswith("_")]
            elif (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                    and "store" in ast.unparse(node.value).lower()):
                found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
    assert not found, "\n".join(found)


def test_no_source_module_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
