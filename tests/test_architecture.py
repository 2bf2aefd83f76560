"""The package's shape, checked: layers import only downward (import-linter, the contract in
pyproject.toml), no import of an mpcs module inside a function, and no long file or function
without a reason written at its top (docs/architecture.md)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mpcs"
ROOT = SRC.parents[1]
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80
#: Written in a long file's first lines or a long function's first body lines, with a reason.
REASON_MARK = "# long:"


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports_mpcs(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "mpcs"
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "mpcs" for a in node.names)
    return False


def test_layers_contract_holds() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "import-linter is missing: pip install -e '.[dev]' installs it"
    done = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_no_mpcs_import_inside_a_function() -> None:
    found = []
    for path in _modules():
        for fn in ast.walk(_tree(path)):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [f"{path.relative_to(SRC)}:{n.lineno}" for n in ast.walk(fn)
                          if _imports_mpcs(n)]
    assert not found, "imports inside functions (move them to the top; a cycle means code " \
                      f"belongs in a lower layer): {found}"


def _has_reason(lines: list[str], first: int, count: int = 4) -> bool:
    return any(REASON_MARK in line for line in lines[first:first + count])


def test_no_long_file_or_function_without_a_reason() -> None:
    long_files, long_functions = [], []
    for path in _modules():
        lines = path.read_text(encoding="utf-8").splitlines()
        name = str(path.relative_to(SRC))
        if len(lines) > MAX_FILE_LINES and not _has_reason(lines, 0, 30):
            long_files.append(f"{name} ({len(lines)} lines)")
        for fn in ast.walk(_tree(path)):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (fn.end_lineno or fn.lineno) - fn.lineno + 1
                if size > MAX_FUNCTION_LINES and not _has_reason(lines, fn.body[0].lineno - 1,
                                                                 12):
                    long_functions.append(f"{name}:{fn.lineno} {fn.name} ({size} lines)")
    assert not long_files and not long_functions, (
        f"over {MAX_FILE_LINES} lines: {long_files}; functions over {MAX_FUNCTION_LINES} "
        f"lines: {long_functions} (split them, or write '{REASON_MARK} <why>' at the top)")
