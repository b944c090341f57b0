"""The judge: scores a submission from its probe records, in a process that never loads student code.

It runs the source notebook's setup and provided (locked) cells, then each test cell in order:
INPUT statements and the hidden part run as written; a PROBE statement is not run, its names
are bound to what the student's kernel recorded; CHECK statements then compare. Names that
solution cells define are bound to a placeholder that refuses to run: the judge never calls a
reference implementation in place of the student's, and hidden code computes its own answers.

A test passes when its code runs to the end; its message is the first line of what stopped it.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass

from . import testcells
from .records import RecordError, Unrecorded, decode
from .testcells import Role, TestCell

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
MAX_MESSAGE = 600  # characters of a failure message kept in tests.csv and the feedback
NOT_RUN = "the test did not run in your notebook, so nothing could be checked (it was skipped, changed or stopped)"


@dataclass(frozen=True)
class Verdict:
    grade_id: str
    score: float
    max_score: float
    message: str  # '' when the test passed

    @property
    def passed(self) -> bool:
        return not self.message


class StudentError(Exception):
    """What a student's function raised in the kernel, replayed by name and message."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}".rstrip())


class NotRecorded(Exception):
    """A probe left no record: the test did not run as written."""


class JudgeFault(RuntimeError):
    """The judge itself failed (a broken source notebook or environment): never a student's fault."""


class StudentCode:
    """Bound to each name a solution cell defines: the judge must not run any implementation of it."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute):
        raise JudgeFault(f"a check used {self._name}.{attribute} directly; it must use what the probe recorded")

    def __call__(self, *args, **kwargs):
        raise JudgeFault(f"a check called {self._name}(); it must use what the probe recorded")


@dataclass
class Judge:
    """The judge of one assignment, built from its source notebook."""

    source: object  # the source notebook (solutions/)
    student_names: set[str]
    tests: list[TestCell]

    @classmethod
    def from_source(cls, source_nb) -> Judge:
        names, tests = testcells.plan_tests(source_nb)
        return cls(source_nb, names, tests)

    def judge(self, records: dict[tuple[str, int], dict]) -> dict[str, Verdict]:
        """Every autograded test's verdict, from ``records`` (see ``records.read_records``)."""
        namespace: dict = {"__name__": "__judge__"}
        namespace.update({name: StudentCode(name) for name in self.student_names})
        verdicts = {}
        tests = iter(self.tests)
        with contextlib.redirect_stdout(io.StringIO()):  # the checks' prints are for the student's kernel
            for cell in self.source.cells:
                meta = testcells.nbgrader_meta(cell)
                if cell.cell_type != "code" or not meta:
                    continue
                if testcells.is_test_cell(cell):
                    test = next(tests)
                    verdicts[test.grade_id] = self._judge_test(test, namespace, records)
                elif not meta.get("solution"):
                    self._run(testcells.strip_magics(cell.source), meta.get("grade_id", "setup"), namespace)
        return verdicts

    @staticmethod
    def _run(source: str, label: str, namespace: dict) -> None:
        try:
            exec(compile(source, f"<{label}>", "exec"), namespace)
        except Exception as exc:
            raise JudgeFault(f"cell {label} of the source notebook failed in the judge: {exc!r}") from exc

    def _judge_test(self, test: TestCell, namespace: dict, records) -> Verdict:
        try:
            for index, statement in enumerate(test.statements):
                if statement.role is Role.PROBE and not (statement.derived and _plain(statement, namespace)):
                    namespace.update(_replay(records.get((test.grade_id, index)), statement))
                else:
                    exec(compile(statement.source, f"<{test.grade_id}>", "exec"), namespace)
            exec(compile(test.hidden, f"<{test.grade_id}>", "exec"), namespace)
        except JudgeFault:
            raise
        except NotRecorded:
            return Verdict(test.grade_id, 0.0, test.points, NOT_RUN)
        except Exception as exc:
            return Verdict(test.grade_id, 0.0, test.points, failure_message(exc))
        return Verdict(test.grade_id, test.points, test.points, "")


def _plain(statement, namespace: dict) -> bool:
    """Whether every name the statement reads is bound to plain data (no object the judge cannot use)."""
    return not any(isinstance(namespace.get(name), Unrecorded | StudentCode) for name in statement.reads)


def _replay(record: dict | None, statement) -> dict:
    """The names a probe statement bound in the student's kernel, or the error it raised there."""
    if not isinstance(record, dict):
        raise NotRecorded()
    error = record.get("error")
    if isinstance(error, dict):
        raise StudentError(str(error.get("type", "Error"))[:100], str(error.get("message", ""))[:2000])
    values = record.get("values")
    if not isinstance(values, dict) or set(values) != set(statement.binds):
        raise NotRecorded()
    bound = {}
    for name in statement.binds:
        encoded = values[name]
        if isinstance(encoded, dict) and isinstance(encoded.get("object"), str):
            bound[name] = Unrecorded(name, encoded["object"][:100])
            continue
        try:
            bound[name] = decode(encoded)
        except (RecordError, ValueError, TypeError) as exc:
            raise StudentError("RecordError", f"{name} could not be read back: {exc}") from None
    return bound


STUB = "NotImplementedError: a function this test calls is still the stub (it raises NotImplementedError)"


def failure_message(exc: BaseException) -> str:
    """One line: ``Type: message`` (a student's replayed error keeps its own type), addresses masked."""
    text = str(exc) if isinstance(exc, StudentError) else f"{type(exc).__name__}: {exc}"
    if text.strip() == "NotImplementedError:":
        return STUB
    first = text.strip().split("\n")[0] or type(exc).__name__
    first = first if len(first) <= MAX_MESSAGE else first[: MAX_MESSAGE - 1] + "…"
    return _ADDRESS.sub("0x…", first)
