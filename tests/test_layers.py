"""The import layers of .importlinter hold (evals -> models | metrics -> hub -> data; no package imports a script).

    python -m pytest -q tests/test_layers.py        (about 1 s; the same check as `lint-imports`)
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root):
    executable = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    return subprocess.run([executable], cwd=root, capture_output=True, text=True)


def test_the_layer_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("models/wsrpn.py", "import training", "models is not allowed to import training"),
    ("data/labels.py", "from evals import tables", "data.labels -> evals.tables"),
    ("metrics/summary.py", "import models.wsrpn", "metrics.summary -> models.wsrpn"),
])
def test_an_upward_import_breaks_a_contract(tmp_path, module, line, broken):
    """A copy of the packages with one upward import added: lint-imports fails and names it."""
    for name in ("evals", "models", "metrics", "hub", "data", "benchmarks"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    for script in ROOT.glob("*.py"):
        shutil.copy(script, tmp_path)
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{line}  # an upward import\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0 and broken in result.stdout, result.stdout[-3000:]
