"""Run a source notebook's graded cells in-process, optionally with a wrong implementation patched in.

Only nbgrader cells run (setup, provided code, solutions, tests): the plots and the study are
skipped, which keeps one run to a second or two. Each test cell's outcome is recorded; an
exception in one does not stop the others, as in nbgrader's autograde.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "01_weights": ROOT / "solutions" / "01_weights" / "weights.ipynb",
    "02_activations": ROOT / "solutions" / "02_activations" / "activations.ipynb",
    "03_biases": ROOT / "solutions" / "03_biases" / "biases.ipynb",
}


def graded_cells(notebook: Path):
    for cell in json.loads(notebook.read_text())["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader")
        if cell["cell_type"] == "code" and meta:
            source = "".join(cell["source"])
            # IPython magics (%matplotlib) are not Python; they only matter in a kernel.
            yield meta, "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("%"))


def run_tests(assignment: str, patch: str = "", after: str | None = None) -> dict[str, str | None]:
    """Execute the notebook's nbgrader cells; return ``{grade_id: None if passed else the error message}``.

    ``patch`` runs right after the cell whose grade_id is ``after`` (a solution cell), replacing
    part of the solution the way a student's different code would.
    """
    namespace: dict = {"__name__": "__main__"}
    outcomes: dict[str, str | None] = {}
    for meta, source in graded_cells(SOURCES[assignment]):
        if meta.get("grade"):
            try:
                exec(compile(source, meta["grade_id"], "exec"), namespace)
                outcomes[meta["grade_id"]] = None
            except Exception as exc:  # a failing test, as the student would see it
                outcomes[meta["grade_id"]] = f"{type(exc).__name__}: {exc}"
        else:
            exec(compile(source, meta["grade_id"], "exec"), namespace)
        if patch and meta["grade_id"] == after:
            exec(compile(patch, "patch", "exec"), namespace)
    return outcomes
