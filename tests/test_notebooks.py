"""The notebook series: release in sync with the source, nbgrader validation both ways, clean commits."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from notebook_harness import ROOT, SOURCES, run_tests

RELEASED = {name: ROOT / "notebooks" / name / path.name for name, path in SOURCES.items()}


def _nbgrader(*args, cwd=ROOT / "autograder"):
    return subprocess.run(
        [sys.executable, "-m", "nbgrader", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_release_is_regenerated_cell_for_cell(tmp_path):
    shutil.copytree(ROOT / "solutions", tmp_path / "solutions")
    # Every assignment in one process: nbgrader reads the assignment id as a glob.
    result = _nbgrader("generate_assignment", "*", "--no-db", "--force", f"--CourseDirectory.root={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    for assignment in SOURCES:
        regenerated = json.loads((tmp_path / "notebooks" / assignment / RELEASED[assignment].name).read_text())
        committed = json.loads(RELEASED[assignment].read_text())
        assert len(regenerated["cells"]) == len(committed["cells"]), f"{assignment}: run `make release`"
        for index, (new, old) in enumerate(zip(regenerated["cells"], committed["cells"], strict=True)):
            assert new == old, f"{assignment} cell {index} differs from a fresh release: run `make release`"
        assert regenerated["metadata"] == committed["metadata"]


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").rglob("*.ipynb")) + sorted(RELEASED.values()))
def test_committed_notebooks_have_no_outputs(path):
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path}: strip the outputs"


@pytest.mark.parametrize("assignment", SOURCES)
def test_every_test_cell_has_a_docstring_and_a_named_grade_id(assignment):
    cells = json.loads(SOURCES[assignment].read_text())["cells"]
    tests = [c for c in cells if c.get("metadata", {}).get("nbgrader", {}).get("grade") and c["cell_type"] == "code"]
    assert tests
    for cell in tests:
        source = "".join(cell["source"])
        assert source.startswith('"""') and source.split("\n")[0].endswith('"""'), source[:80]
        grade_id = cell["metadata"]["nbgrader"]["grade_id"]
        assert grade_id.startswith(tuple(_solution_names(cells))), f"{grade_id} does not start with what it checks"


def _solution_names(cells) -> set[str]:
    """What the student writes: functions and classes in snake case (NetQuantized -> net_quantized), answers."""

    names = set()
    for cell in cells:
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution") and cell["cell_type"] == "code":
            for name in re.findall(r"^\s*(?:def|class) (\w+)", "".join(cell["source"]), flags=re.MULTILINE):
                names.add(re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower())
            names.update(re.findall(r"^(\w+) *=", "".join(cell["source"]), flags=re.MULTILINE))  # choice_4_7 = "b"
    return names


def _sections(run) -> dict[Path, str]:
    """What one ``nbgrader validate`` of several notebooks printed (classes.py runs it in the background, once for
    the solutions and once, inverted, for the releases): ``{path: what it printed for that notebook}``."""
    parts = re.split(r"\[ValidateApp \| INFO\] Validating '([^']+)'", run.run.stdout)
    sections = {Path(path).resolve(): text for path, text in zip(parts[1::2], parts[2::2], strict=True)}
    if not sections:
        pytest.fail(f"nbgrader validate printed no notebook (exit {run.run.returncode}): {run.run.stdout[-3000:]}")
    return sections


@pytest.mark.parametrize("assignment", SOURCES)
def test_solution_passes_nbgrader_validate(assignment, solutions_validated):
    printed = _sections(solutions_validated)[SOURCES[assignment].resolve()]
    assert "Success! Your notebook passes all the tests." in printed, printed[-3000:]


@pytest.mark.parametrize("assignment", SOURCES)
def test_released_stubs_fail_every_test(assignment, releases_inverted):
    printed = _sections(releases_inverted)[RELEASED[assignment].resolve()]
    assert "Success! The notebook does not pass any tests." in printed, printed[-3000:]


@pytest.mark.parametrize("assignment", SOURCES)
def test_harness_sees_the_solution_pass(assignment):
    outcomes = run_tests(assignment)
    assert outcomes and all(message is None for message in outcomes.values()), outcomes


@pytest.mark.parametrize("assignment", sorted(SOURCES))
def test_each_notebook_is_a_lesson_with_objectives_time_summary_and_self_check(assignment):
    """Opens with learning objectives and an estimated time; ends with a summary and 3-5 self-check questions."""

    cells = json.loads(RELEASED[assignment].read_text())["cells"]
    opening, closing = "".join(cells[0]["source"]), "".join(cells[-1]["source"])
    assert "**You will learn to**" in opening and re.search(r"\*\*Estimated time:\*\* about \d+ minutes", opening)
    assert closing.startswith("## Summary and self-check")
    questions = re.findall(r"^\d+\. ", closing.split("**Check yourself.**", 1)[1], flags=re.MULTILINE)
    assert 3 <= len(questions) <= 5
    assert closing.count("<details><summary>Answer</summary>") == len(questions)
