"""The layer contract of pyproject.toml ([tool.importlinter]) holds, and breaks when a core
module imports Flower or a package imports a layer above it (negative controls on a copy)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_repository_keeps_its_layers() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("fedal/pool.py", "import flwr", "Core imports neither Flower"),
        ("fedal/pool.py", "import strategies.registry", "Core imports neither Flower"),
        ("strategies/entropy.py", "import flwr.app", "Query strategies never import Flower"),
        ("strategies/entropy.py", "import clients.round", "Dependencies flow one way"),
        ("fedal/views.py", "import fedal.training", "No import cycles"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    for name in ("fedal", "clients", "strategies"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / module).open("a") as handle:
        handle.write(f"\n{line}\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert f"{broken}" in result.stdout.split("Broken contracts")[-1]
