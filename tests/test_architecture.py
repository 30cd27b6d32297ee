"""The layering the README's "Architecture" states is checked by `make lint` (import-linter's
contracts in pyproject.toml): here the check passes on the package and fails on a copy of it
with a planted cycle or a planted upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(package_parent: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over the geoconcept_cli found in ``package_parent``."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT), "--config", str(config), "--no-cache"],
                          capture_output=True, text=True, env=env, cwd=package_parent)  # fmt: skip


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The package and its contracts, copied where a planted import harms nothing."""
    if not LINT.is_file():
        pytest.skip(f"no {LINT.name} beside {sys.executable}: pip install import-linter")
    root = tmp_path_factory.mktemp("layers")
    shutil.copytree(ROOT / "geoconcept_cli", root / "geoconcept_cli",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")  # the contracts
    return root, root / "pyproject.toml"


def plant(root: Path, module: str, line: str) -> str:
    """Append ``line`` to ``module`` (a path under the package); returns what was there."""
    path = root / "geoconcept_cli" / module
    before = path.read_text()
    path.write_text(before + f"\n{line}  # planted\n")
    return before


def test_the_package_keeps_its_layers_and_has_no_cycle(copy):
    root, config = copy
    res = lint(root, config)
    assert res.returncode == 0, res.stdout
    assert "2 kept, 0 broken" in res.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("inference/calibration.py", "from . import predictor", "No import cycles"),  # a cycle
    ("model/losses.py", "from ..serving import service", "Layers"),  # an upward import
    ("plots/maps.py", "from ..evaluation import scores", "Layers"),  # siblings of one layer
])  # fmt: skip
def test_a_planted_cycle_or_upward_import_breaks_the_lint(copy, module, line, broken):
    root, config = copy
    before = plant(root, module, line)
    try:
        res = lint(root, config)
    finally:
        (root / "geoconcept_cli" / module).write_text(before)
    assert res.returncode != 0
    assert f"{broken}" in res.stdout and "BROKEN" in res.stdout
