"""Notebook surgery for grading: rebuild a submission around the release, mark the tests, redact feedback."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import nbformat

from .integrity import VERIFY_NAME

HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
# Runs first in every test cell; a no-op in a kernel without the grader's integrity check.
INTEGRITY_CALL = f'getattr(__import__("builtins"), "{VERIFY_NAME}", lambda: None)()'
REDACTED = "[hidden test redacted]"


class InvalidNotebook(ValueError):
    """The submission is not a readable Jupyter notebook."""


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def is_test_cell(cell) -> bool:
    meta = nbgrader_meta(cell)
    return bool(meta.get("grade")) and not meta.get("solution") and cell.get("cell_type") == "code"


def is_locked_code(cell) -> bool:
    meta = nbgrader_meta(cell)
    return bool(meta.get("locked")) and not meta.get("grade") and cell.get("cell_type") == "code"


def read_submission(path: Path):
    """Parse a submitted notebook, or raise ``InvalidNotebook`` saying why it is not one."""
    try:
        raw = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidNotebook(f"not valid JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
        raise InvalidNotebook("JSON without a list of cells: not a Jupyter notebook")
    try:
        return nbformat.reads(json.dumps(raw), as_version=4)
    except Exception as exc:  # nbformat raises several types for malformed notebooks
        raise InvalidNotebook(f"not a valid notebook ({exc.__class__.__name__}: {exc})") from None


def rebuild_submission(student, release, skip_untouched_demos: bool = True) -> tuple[object, list[str]]:
    """The release notebook with the student's answers in it, whatever the student did to the rest.

    Solution cells come from the student (matched by grade id); every other nbgrader cell
    (setup, provided code, tests, instructions) comes from the release, in the release's
    order, even if the student deleted it, edited it or turned it into markdown. Cells the
    student added stay where they were, after the nbgrader cell they followed. With
    ``skip_untouched_demos``, the release's own plain code cells (plots, the study) that the
    student left as they were are not run: no test depends on them (tests/test_notebooks.py
    runs the tests without them), and they are most of the execution time. Returns the
    notebook and notes on what had to be restored.
    """
    demos = (
        {c.source for c in release.cells if c.cell_type == "code" and not nbgrader_meta(c)}
        if skip_untouched_demos
        else set()
    )
    release_cells = {nbgrader_meta(c)["grade_id"]: c for c in release.cells if nbgrader_meta(c).get("grade_id")}
    answers: dict[str, str] = {}
    extras: dict[str | None, list] = {}
    seen: set[str] = set()
    anchor = None
    for cell in student.cells:
        grade_id = nbgrader_meta(cell).get("grade_id")
        if grade_id in release_cells:
            if grade_id not in seen:
                expected = release_cells[grade_id]
                if nbgrader_meta(expected).get("solution") and cell.cell_type == expected.cell_type:
                    answers[grade_id] = cell.source
                seen.add(grade_id)
            anchor = grade_id
            continue
        if cell.cell_type == "code" and cell.source in demos:
            continue
        own = copy.deepcopy(cell)
        own.metadata.pop("nbgrader", None)
        if own.cell_type == "code":
            own.outputs, own.execution_count = [], None
        extras.setdefault(anchor, []).append(own)
    notes = [f"restored cell {grade_id}" for grade_id in release_cells if grade_id not in seen]
    rebuilt = copy.deepcopy(release)
    cells = list(extras.get(None, []))
    for cell in release.cells:
        grade_id = nbgrader_meta(cell).get("grade_id")
        if grade_id is None:
            continue  # plain release cells live on in the student's copy (the extras), if kept
        restored = copy.deepcopy(cell)
        if grade_id in answers:
            restored.source = answers[grade_id]
        cells.append(restored)
        cells.extend(extras.get(grade_id, []))
    ids: set[str] = set()
    for index, cell in enumerate(cells):
        if cell.get("id") in ids or not cell.get("id"):
            cell["id"] = f"cell-{index:03d}"
        ids.add(cell["id"])
    rebuilt.cells = cells
    return rebuilt, notes


def with_integrity_checks(source_nb):
    """A copy of a source notebook whose test cells first verify, in a hidden region, that nothing was tampered."""
    marked = copy.deepcopy(source_nb)
    for cell in marked.cells:
        if is_test_cell(cell):
            first, _, rest = cell.source.partition("\n")
            cell.source = "\n".join([first, HIDDEN_BEGIN, INTEGRITY_CALL, HIDDEN_END, rest])
    return marked


def locked_cell_hashes(source_nb) -> list[str]:
    """sha256 of each read-only code cell's source, by which the kernel recognises them."""
    return [hashlib.sha256(cell.source.encode()).hexdigest() for cell in source_nb.cells if is_locked_code(cell)]


def hidden_lines(nb) -> set[str]:
    """Every meaningful line (8+ characters, stripped) that only appears inside hidden-test regions."""
    hidden, visible, inside = set(), set(), False
    for cell in nb.cells:
        for line in cell.source.split("\n"):
            if HIDDEN_BEGIN in line:
                inside = True
            elif HIDDEN_END in line:
                inside = False
            elif len(line.strip()) >= 8:
                (hidden if inside else visible).add(line.strip())
    return hidden - visible


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def failure_message(cell) -> str:
    """The first line of the error a test cell ended with ('' if it passed), with memory addresses masked."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            text = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".split("\n")[0].strip()
            return _ADDRESS.sub("0x…", _ANSI.sub("", text))
    return ""


def redact_hidden_tests(nb) -> None:
    """Remove hidden tests from a graded notebook before it becomes feedback.

    Drops the hidden regions from the sources, reduces the tracebacks of test cells to their
    last line (a traceback quotes the failing source line), and blanks any output line that
    repeats a hidden line, in case a student's code printed one.
    """
    secret = hidden_lines(nb)
    for cell in nb.cells:
        kept, inside = [], False
        for line in cell.source.split("\n"):
            if HIDDEN_BEGIN in line:
                inside = True
            elif HIDDEN_END in line:
                inside = False
            elif not inside:
                kept.append(line)
        cell.source = "\n".join(kept)
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error" and nbgrader_meta(cell).get("grade"):
                output["traceback"] = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"]
            _redact_output(output, secret)


def _scrub(text: str, secret: set[str]) -> str:
    return "\n".join(
        REDACTED if line.strip() in secret or _contains(line, secret) else line for line in text.split("\n")
    )


def _contains(line: str, secret: set[str]) -> bool:
    plain = _ANSI.sub("", line)
    return any(hidden in plain for hidden in secret if len(hidden) >= 16)


def _redact_output(output, secret: set[str]) -> None:
    if "text" in output:
        output["text"] = _scrub("".join(output["text"]) if isinstance(output["text"], list) else output["text"], secret)
    if "evalue" in output:
        output["evalue"] = _scrub(output["evalue"], secret)
    if "traceback" in output:
        output["traceback"] = [_scrub(line, secret) for line in output["traceback"]]
    for kind in ("text/plain", "text/html", "text/markdown", "text/latex", "application/javascript"):
        data = output.get("data", {})
        if kind in data:
            value = "".join(data[kind]) if isinstance(data[kind], list) else data[kind]
            data[kind] = _scrub(value, secret)
