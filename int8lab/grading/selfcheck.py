"""Probes run in this process on trusted code: the reference solution must earn every point.

``int8lab grade`` calls ``check_reference`` before grading anyone, so a broken source notebook
or environment stops the run with a clear error instead of failing every student. The tests
use ``probe_in_process`` to judge wrong implementations without starting kernels.
"""

from __future__ import annotations

import contextlib
import hashlib
import io

import nbformat

from . import coverage, records, testcells
from .judge import Judge, Verdict
from .records import RecordError, Records, capture, decode, read_records

#: The reference solution's records, by the source notebook's sha256: its shapes and its self-check read the
#: same run, and the tests judge many patched runs of one source.
_REFERENCE: dict[str, Records] = {}


def probe_in_process(source_nb, patch: str = "", after: str | tuple[str, ...] | None = None) -> Records:
    """Records of the source notebook's probes, run here with its own solution cells.

    ``patch`` runs right after the cell whose grade_id is ``after`` (or each of several): the way a student's
    different code would replace part of the solution. Only trusted code belongs here.
    """
    _, tests = testcells.plan_tests(source_nb)
    by_id = {test.grade_id: test for test in tests}
    namespace: dict = {"__name__": "__main__"}
    module = dict(vars(records))  # a patch may rewrite the records module, as a student's code may in a kernel
    with _restored(module), capture() as lines, contextlib.redirect_stdout(io.StringIO()):
        for cell in source_nb.cells:
            meta = testcells.nbgrader_meta(cell)
            if cell.cell_type != "code" or not meta:
                continue
            grade_id = meta.get("grade_id", "")
            code = by_id[grade_id] if grade_id in by_id else None
            source = testcells.probe_source(code) if code else testcells.strip_magics(cell.source)
            try:
                exec(compile(source, f"<{grade_id}>", "exec"), namespace)
            except Exception:
                if code is None:
                    raise
            if patch and grade_id in ((after,) if isinstance(after, str) else after or ()):
                exec(compile(patch, "<patch>", "exec"), namespace)
    return read_records("\n".join(lines))


@contextlib.contextmanager
def _restored(module: dict):
    try:
        yield
    finally:
        vars(records).clear()
        vars(records).update(module)


def reference_records(source_nb) -> Records:
    """The records of the reference solution's own probes (run once per source notebook and process)."""
    digest = hashlib.sha256(nbformat.writes(source_nb).encode()).hexdigest()
    if digest not in _REFERENCE:
        _REFERENCE[digest] = probe_in_process(source_nb)
    return _REFERENCE[digest]


def reference_shapes(source_nb) -> dict:
    """``{(grade_id, statement): {name: shape}}`` of the reference solution's probe records (coverage.py)."""
    shapes = {}
    for cell, statement, record in reference_records(source_nb).entries:
        values = record.get("values")
        if not isinstance(values, dict):
            continue  # the reference raised here: nothing to cover (check_reference reports it)
        try:
            shapes[(cell, statement)] = {name: coverage.shape_of(decode(v)) for name, v in values.items()}
        except RecordError:
            continue
    return shapes


def judge_in_process(source_nb, patch: str = "", after: str | tuple[str, ...] | None = None) -> dict[str, Verdict]:
    records = probe_in_process(source_nb, patch, after) if patch else reference_records(source_nb)
    return Judge.from_source(source_nb).judge(records)


def check_reference(name: str, source_nb) -> dict:
    """The reference's shapes (``reference_shapes``); ``AssertionError`` naming the tests the reference of
    ``name`` fails."""
    shapes = reference_shapes(source_nb)
    failures = [
        v for v in Judge.from_source(source_nb, shapes).judge(reference_records(source_nb)).values() if not v.passed
    ]
    if failures:
        details = "; ".join(f"{v.grade_id}: {v.message}" for v in failures)
        raise AssertionError(f"the judge fails the reference solution of {name}: {details}")
    return shapes
