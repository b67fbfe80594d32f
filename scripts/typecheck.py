"""mypy over the one import package, `unlinkwatch`, whose sub-packages live in other directories (setuptools'
package-dir in pyproject.toml: unlinkwatch.agent is agent/, unlinkwatch.collector is collector/). mypy finds
modules by directory, so each file is given to it with its module name; everything else (strictness,
overrides) comes from [tool.mypy] as usual. Usage: python scripts/typecheck.py"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from mypy import build
from mypy.main import process_options
from mypy.modulefinder import BuildSource

ROOT = Path(__file__).resolve().parent.parent
SKIP = ("unlinkwatch.pb",)  # generated code, checked by scripts/gen-proto.sh --check instead


def sources() -> list[BuildSource]:
    dirs: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    mapped = {ROOT / d for d in dirs.values()}
    out: list[BuildSource] = []
    for package, directory in dirs.items():
        base = ROOT / directory
        for path in sorted(base.rglob("*.py")):
            if any(p != base and p in path.parents for p in mapped):
                continue  # another mapping's file
            parts = [*package.split("."), *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            module = ".".join(parts)
            if not module.startswith(SKIP):
                out.append(BuildSource(str(path.relative_to(ROOT)), module, None))
    return out


def main() -> int:
    _, options = process_options(["-c", "0"])  # reads [tool.mypy]; the sources are ours
    srcs = sources()
    try:
        result = build.build(srcs, options)
    except build.CompileError as e:
        print("\n".join(e.messages))
        return 2
    errors = result.errors
    for line in errors:
        print(line)
    files = len({s.path for s in srcs})
    if errors:
        print(f"Found {sum(1 for e in errors if ': error:' in e)} errors (checked {files} source files)")
        return 1
    print(f"Success: no issues found in {files} source files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
