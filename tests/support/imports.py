"""The import graph of the unlinkwatch package, from its source files (ast): every import statement, at module
level or inside functions, relative ones resolved. Module names come from pyproject's package-dir mapping
(scripts/typecheck.py), the same that setuptools installs."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _typecheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("uw_typecheck", ROOT / "scripts" / "typecheck.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def modules() -> dict[str, Path]:
    """Module name -> source file, for every module of the package (generated code included)."""
    tc = _typecheck()
    out = {s.module: ROOT / s.path for s in tc.sources()}
    for f in (ROOT / "unlinkwatch" / "pb").glob("*.py"):
        out["unlinkwatch.pb" + ("" if f.stem == "__init__" else "." + f.stem)] = f
    return out


def graph() -> dict[str, set[str]]:
    """Module -> the names it imports (modules of the package where they resolve to one, else the name)."""
    mods = modules()
    out: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for a in node.names:  # `from pkg import module` imports the module
                    sub = f"{target}.{a.name}"
                    found.add(sub if sub in mods else target)
        out[name] = found
    return out


def reaches(imported: str, target: str) -> bool:
    """Whether an imported name is `target` or inside it."""
    return imported == target or imported.startswith(target + ".")
