"""docs/architecture.md stays true: every module path it names exists, and so does every
function it names beside a module."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()
# Not preceded by a slash: /api/v2/... is a route, not a path.
PATH = re.compile(r"(?<![/\w])(?:api|worker|shared|migrations|tests|docs|bench)/[\w/]*(?:\.\w+|/)?")
MODULE = r"((?:api|worker|shared)/[\w/]*\.py)"
# A module and the function or class it is cited for: "shared/jobs/runner.py run_job" in the
# diagram, "shared/jobs/sweeper.py `recover_jobs`" in the text.
CITED_IN_DIAGRAM = re.compile(MODULE + r" ([A-Za-z_]\w*)(?=[\s,:])")
CITED_IN_TEXT = re.compile(MODULE + r" `([A-Za-z_]\w*)`")
DIAGRAM = DOC.split("```")[1]
ROW = re.compile(r"^\| `(shared/\w+/)` \| (.*) \|$", re.MULTILINE)


def test_every_path_exists() -> None:
    paths = set(PATH.findall(DOC))
    assert len(paths) > 30
    missing = sorted(path for path in paths if not (ROOT / path).exists())
    assert not missing


def test_every_cited_definition_exists() -> None:
    cited = CITED_IN_DIAGRAM.findall(DIAGRAM) + CITED_IN_TEXT.findall(DOC)
    assert len(cited) > 15
    missing = [
        f"{path} {name}"
        for path, name in cited
        if not re.search(
            rf"^\s*(?:async )?(?:def|class) {name}\b|^{name}\b.*=", (ROOT / path).read_text(), re.M
        )
    ]
    assert not missing


def test_each_package_row_names_only_its_own_modules() -> None:
    rows = ROW.findall(DOC)
    assert {package for package, _ in rows} == {
        f"shared/{path.name}/"
        for path in (ROOT / "shared").iterdir()
        if (path / "__init__.py").exists()
    }
    for package, text in rows:
        for module in re.findall(r"\b(\w+)\.py\b", text):
            assert (ROOT / package / f"{module}.py").exists(), f"{package}{module}.py"
