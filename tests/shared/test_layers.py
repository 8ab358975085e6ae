"""The import direction of shared/ (.importlinter): each layer imports only the layers below
it, and nothing in shared/ imports the web or worker adapters."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    # Run where the packages are, so that a copy in a temporary directory is what is analysed.
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(ROOT / ".importlinter"), "--no-cache"],
        cwd=root,
        env=os.environ | {"PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_contracts_hold() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_every_package_of_shared_has_its_layer() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    layers = set(config["importlinter:contract:layers"]["layers"].split())
    packages = {
        path.stem if path.is_file() else path.name
        for path in (ROOT / "shared").iterdir()
        if (path.is_dir() and (path / "__init__.py").exists())
        or (path.suffix == ".py" and path.name != "__init__.py")
    }
    assert packages == layers


def test_an_import_against_the_layers_breaks_the_contract(tmp_path: Path) -> None:
    for package in ("shared", "api", "worker"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    engine = tmp_path / "shared" / "store" / "engine.py"
    # The store reaching up into the job runner, and into the worker adapter.
    engine.write_text(
        engine.read_text() + "\nfrom shared.jobs import runner  # noqa\nimport worker.app  # noqa\n"
    )
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 kept, 2 broken" in result.stdout
    assert "shared.store.engine -> shared.jobs.runner" in result.stdout
