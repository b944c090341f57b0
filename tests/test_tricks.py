"""Tricks on the records never score more than the honest wrong code they are played with.

For every graded test cell of every notebook, the *twin* is an honest wrong submission: each function
the student writes gives the right answer on its first call from a test cell and raises on every later
call from that cell. A test with one call passes; a test that checks several results fails. Three
tricks are then played on top of the twin, as a student's code could in its kernel:

- ``truncate``: on its first call from a cell, the function shortens every list it can reach there
  (the notebook's globals, and the locals of the cell's comprehensions) to one item, so that a probe's loop stops early;
- ``forge_empty``: every call writes a record of every probe statement, each name bound to an empty
  list, through the records descriptor (a second record, before or after the honest one);
- ``patch_records``: the records module's ``returned`` and ``failed`` are replaced: every value it
  records is an empty list, and an error is recorded as empty values instead.

Each trick must score at most what the twin scores, cell by cell.
"""

import pytest

from int8lab.grading import testcells
from int8lab.grading.judge import Judge
from int8lab.grading.selfcheck import probe_in_process
from notebook_harness import SOURCES, read_source

TWIN = """
import functools as _functools
import sys as _sys

_first_calls = globals().setdefault("_first_calls", set())
_test_cells = frozenset({test_cells!r})


def _calling_cell():
    frame = _sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename.strip("<>")
        if name in _test_cells:
            return name, frame
        frame = frame.f_back
    return None, None


def _twin(function):
    if getattr(function, "_twin", False):
        return function

    @_functools.wraps(function)
    def wrapper(*args, **kwargs):
        cell, frame = _calling_cell()
        _trick(cell, frame)
        if cell is not None and cell in _first_calls:
            raise ValueError("the twin is wrong after its first call in a test cell")
        _first_calls.add(cell)
        return function(*args, **kwargs)

    wrapper._twin = True
    return wrapper


def _wrap_class(cls):
    for attribute, value in list(vars(cls).items()):
        if attribute.startswith("__") and attribute != "__call__":
            continue
        if isinstance(value, staticmethod):
            setattr(cls, attribute, staticmethod(_twin(value.__func__)))
        elif isinstance(value, classmethod):
            setattr(cls, attribute, classmethod(_twin(value.__func__)))
        elif callable(value):
            setattr(cls, attribute, _twin(value))


for _name in {student_names!r}:
    if _name in globals():
        _value = globals()[_name]
        if isinstance(_value, type):
            _wrap_class(_value)
        elif callable(_value):
            globals()[_name] = _twin(_value)
"""

NO_TRICK = """
def _trick(cell, frame):
    pass
"""

TRUNCATE = """
import test_tricks as _harness

_truncated = globals().setdefault("_truncated", set())


def _trick(cell, frame):
    if cell is None or cell in _truncated:
        return
    _truncated.add(cell)
    reachable = [frame.f_globals]
    while frame is not None and frame.f_code.co_filename.strip("<>") == cell:  # the cell and its comprehensions
        reachable.append(frame.f_locals)
        frame = frame.f_back
    for names in reachable:
        for value in list(names.values()):
            if type(value) is list and len(value) > 1:
                _harness.TRUNCATED.append((value, list(value)))
                del value[1:]
"""

FORGE_EMPTY = """
import int8lab.grading.records as _records


def _trick(cell, frame):
    for grade_id, index, names in {probes!r}:
        _records._write({{"cell": grade_id, "statement": index, "values": {{name: {{"list": []}} for name in names}}}})
"""

PATCH_RECORDS = """
import int8lab.grading.records as _records

_bound = {{(grade_id, index): names for grade_id, index, names in {probes!r}}}

_honest_returned = globals().setdefault("_honest_returned", _records.returned)


def _empty_returned(cell, statement, values):
    _honest_returned(cell, statement, {{name: [] for name in values}})


def _failed_as_empty(cell, statement, error):
    _honest_returned(cell, statement, {{name: [] for name in _bound.get((cell, statement), [])}})


_records.returned, _records.failed = _empty_returned, _failed_as_empty


def _trick(cell, frame):
    pass
"""

#: (list, its items) for each list the truncate trick shortened. In a kernel it shortens the kernel's own
#: objects; here the probes run in the judge's process, so the judge's copies (int8lab's LAYER_NAMES...)
#: are put back before it judges.
TRUNCATED: list = []

TRICKS = {"truncate": TRUNCATE, "forge_empty": FORGE_EMPTY, "patch_records": PATCH_RECORDS}


def _plan(assignment):
    source = read_source(assignment)
    names, tests = testcells.plan_tests(source)
    solution_cells = tuple(
        testcells.nbgrader_meta(cell)["grade_id"]
        for cell in source.cells
        if cell.cell_type == "code" and testcells.nbgrader_meta(cell).get("solution")
    )
    probes = [
        (test.grade_id, index, list(statement.binds))
        for test in tests
        for index, statement in enumerate(test.statements)
        if statement.role is testcells.Role.PROBE
    ]
    return source, sorted(names), [test.grade_id for test in tests], solution_cells, probes


def _scores(assignment, trick: str) -> dict[str, float]:
    source, names, test_cells, solution_cells, probes = _plan(assignment)
    patch = trick.format(probes=probes) + TWIN.format(test_cells=test_cells, student_names=names)
    records = probe_in_process(source, patch, solution_cells)
    while TRUNCATED:
        shortened, items = TRUNCATED.pop()
        shortened[:] = items
    return {grade_id: verdict.score for grade_id, verdict in Judge.from_source(source).judge(records).items()}


@pytest.fixture(scope="module")
def twins():
    return {assignment: _scores(assignment, NO_TRICK) for assignment in SOURCES}


def test_the_twin_passes_some_tests_and_fails_others(twins):
    """The twin is right once per cell: it must pass a one-call test and fail a several-call one, or the
    comparison below would prove nothing."""
    scores = [score for assignment in twins.values() for score in assignment.values()]
    assert any(score > 0 for score in scores) and any(score == 0 for score in scores)


@pytest.mark.parametrize("trick", sorted(TRICKS))
@pytest.mark.parametrize("assignment", sorted(SOURCES))
def test_a_trick_never_scores_more_than_its_honest_twin(twins, assignment, trick):
    tricked = _scores(assignment, TRICKS[trick])
    twin = twins[assignment]
    gained = {cell: (twin[cell], score) for cell, score in tricked.items() if score > twin[cell]}
    assert not gained, f"{trick} scored more than the twin (twin, trick) on {gained}"


FORGED_WIDTHS = """
import math as _math

import int8lab.grading.records as _records


def fixed_point_multiplier(multiplier, bits=31):
    if not multiplier >= 0 or _math.isinf(multiplier) or multiplier >= 2**30:
        raise ValueError("refused")
    return (0, 0) if multiplier == 0 else (1, round(-_math.log2(multiplier)))  # a 1-bit m0, whatever bits says


def _rewrite(value):
    if isinstance(value, tuple) and value and value[0] in (8, 16, 31):
        return (1, *value[1:])  # claim that the test asked for 1-bit multipliers
    if isinstance(value, list | tuple):
        return type(value)(_rewrite(item) for item in value)
    return value


_honest_returned = _records.returned
_records.returned = lambda cell, statement, values: _honest_returned(
    cell, statement, {name: _rewrite(value) for name, value in values.items()}
)
"""


def test_a_width_the_test_chose_cannot_be_rewritten_in_the_record():
    """The red team's case: a probe that recorded (bits, results) let the kernel choose the width the checks used;
    a 1-bit m0 then passed the error bound. The widths now come from the judge's own copy of the cell."""
    source = read_source("04_integer_only")
    records = probe_in_process(source, FORGED_WIDTHS, "fixed_point_multiplier_impl")
    verdict = Judge.from_source(source).judge(records)["fixed_point_multiplier_error_bound"]
    assert verdict.score == 0, verdict
