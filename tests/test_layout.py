"""The package's shape stays the architecture: small modules, short functions, one-way imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ichdet"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

#: Data flows down this list: a subpackage imports only from its own rank or earlier ones.
#: evaluation sits below training because validation scores with the competition metric.
RANKS = {
    "util": 0,
    "labels": 0,
    "dicom": 1,
    "data": 2,
    "synth": 2,
    "selection": 2,
    "models": 3,
    "evaluation": 3,
    "training": 4,
    "inference": 5,
    "reports": 6,
    "demo": 7,
    "serve": 7,
    "dicomweb": 7,
    "cli": 8,
    "__main__": 9,
    "__init__": 9,  # the public API re-exports every stage, lazily
}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def concern(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_concerns(path: Path, root: Path = PACKAGE) -> set[str]:
    """The ichdet subpackages a module imports (absolute or relative, at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                package = path.relative_to(root).parent.parts
                base = package[: len(package) - (node.level - 1)]
                names = [".".join(("ichdet", *base, node.module or ""))]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "ichdet" and len(parts) > 1 and parts[1]:
                found.add(parts[1])
    return found


def test_every_top_level_module_has_a_rank():
    assert {concern(p) for p in modules()} <= set(RANKS)


def test_imports_flow_one_way():
    backwards = [
        f"{p.relative_to(PACKAGE)} imports ichdet.{other}"
        for p in modules()
        for other in imported_concerns(p)
        if RANKS[other] > RANKS[concern(p)]
    ]
    assert not backwards


def test_the_rank_check_sees_absolute_and_relative_imports(tmp_path):
    assert imported_concerns(PACKAGE / "dicom" / "read.py") <= {"util", "labels", "dicom"}
    (tmp_path / "dicom").mkdir()
    probe = tmp_path / "dicom" / "probe.py"
    probe.write_text("from ..training import loop\nfrom .read import x\nimport ichdet.reports\n")
    assert imported_concerns(probe, root=tmp_path) == {"training", "dicom", "reports"}


def test_modules_stay_small():
    big = {
        str(p.relative_to(PACKAGE)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not big


def long_functions(path: Path, root: Path = PACKAGE) -> dict[str, int]:
    out = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - first + 1
            if length > MAX_FUNCTION_LINES:
                out[f"{path.relative_to(root)}:{node.name}"] = length
    return out


def test_functions_stay_short():
    found: dict[str, int] = {}
    for p in modules():
        found.update(long_functions(p))
    assert not found


def test_the_length_check_sees_a_long_function(tmp_path):
    probe = tmp_path / "long.py"
    probe.write_text("@decorated\ndef f():\n" + "    x = 1\n" * (MAX_FUNCTION_LINES - 2))
    assert long_functions(probe, root=tmp_path) == {}
    probe.write_text("@decorated\ndef f():\n" + "    x = 1\n" * (MAX_FUNCTION_LINES - 1))
    assert long_functions(probe, root=tmp_path) == {"long.py:f": MAX_FUNCTION_LINES + 1}


@pytest.mark.parametrize(
    "module",
    [
        "ichdet",
        "ichdet.cli",
        "ichdet.data.index",
        "ichdet.data.prepare",
        "ichdet.inference.runners",
    ],
)
def test_light_modules_do_not_import_torch(module):
    """The CLI's start, indexing, preparing and ONNX inference never pay for torch."""
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_public_api_resolves_lazily():
    code = (
        "import sys, ichdet; names = [n for n in ichdet.__all__ if n != '__version__']; "
        "light = 'torch' not in sys.modules; "
        "[getattr(ichdet, n) for n in names]; print(light, len(names), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    light, count, heavy = out.stdout.split()
    assert light == "True" and heavy == "True" and int(count) >= 20
