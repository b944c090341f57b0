"""The judge: scores a submission from its probe records, in a process that never loads student code.

It runs the source notebook's setup and provided (locked) cells, then each test cell in order:
INPUT statements and the hidden part run as written; a PROBE statement is not run, its names
are bound to what the student's kernel recorded; CHECK statements then compare. Names that
solution cells define are bound to a placeholder that refuses to run: the judge never calls a
reference implementation in place of the student's, and hidden code computes its own answers.

A test passes when its code runs to the end; its message is the first line of what stopped it.

The records come from the student's own process, so the judge trusts nothing about them but the
values they claim for the student's code (see the README's "What the grader protects"):
  - every recorded value must cover what the test's inputs make, with the shape the reference
    solution's record has (``coverage.py``): a shortened list or an emptied dict fails the test;
  - each probe statement is recorded once, in the order the notebook runs them: a second record,
    or one out of that order, makes its test score 0 ("records tampered");
  - a statement that only computes from recorded plain values (an accuracy from logits) is always
    recomputed here; when those values are not plain data, the test fails instead;
  - each test is judged under a CPU-time limit, and the whole judgement under a memory limit, so
    that a few bytes of record cannot make the judge work for minutes or allocate gigabytes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import resource
import signal
import threading
from dataclasses import dataclass, field

from . import coverage, testcells
from .records import RecordError, Records, Unrecorded, decode
from .testcells import Role, TestCell

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
MAX_MESSAGE = 600  # characters of a failure message kept in int8lab-tests.csv and the feedback
NOT_RUN = "the test did not run in your notebook, so nothing could be checked (it was skipped, changed or stopped)"
TAMPERED = (
    "records tampered: {detail}; only the test's own probes write records, once each and in order, "
    "so this test scores 0"
)
#: CPU seconds the judge spends on one test at most (an honest one takes well under one).
TEST_CPU_SECONDS = 20
#: Memory the judge may allocate beyond what it holds when it starts judging a notebook.
JUDGE_MEMORY_BYTES = 2 << 30


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


class Uncovered(Exception):
    """A recorded value does not cover what the test's inputs make (see ``coverage.py``)."""


class NotPlain(Exception):
    """A value the judge must recompute from is not plain data."""


class JudgeTimeout(Exception):
    """A test's checks ran past ``TEST_CPU_SECONDS`` of CPU."""


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
    #: ``{(grade_id, statement): {name: shape}}``: what the reference solution's probes bound (coverage.py)
    expected: dict = field(default_factory=dict)
    #: derived statements that read only plain values: always recomputed here, never replayed
    recomputed: frozenset = frozenset()

    @classmethod
    def from_source(cls, source_nb, expected: dict | None = None) -> Judge:
        """``expected``: the reference's shapes (``selfcheck.reference_shapes``), computed here when None."""
        names, tests = testcells.plan_tests(source_nb)
        if expected is None:
            from .selfcheck import reference_shapes

            expected = reference_shapes(source_nb)
        return cls(source_nb, names, tests, expected, _recomputed(tests, expected))

    def judge(self, records: Records | dict) -> dict[str, Verdict]:
        """Every autograded test's verdict, from ``records`` (``records.read_records``; a dict for tests)."""
        if isinstance(records, dict):
            records = Records.from_dict(dict(sorted(records.items(), key=lambda item: self._position(*item[0]))))
        from int8lab import memo  # torch's import, where judging happens, not where a Verdict is read

        by_key, tampered = self._sequence(records)
        namespace: dict = {"__name__": "__judge__"}
        namespace.update({name: StudentCode(name) for name in self.student_names})
        verdicts = {}
        tests = iter(self.tests)
        # The reference values each submission's tests recompute (the trained network quantized by the engine,
        # its profiled activations) come once per process (memo); every judgement draws from generators seeded
        # alike, so no verdict depends on what the process judged before.
        with (
            contextlib.redirect_stdout(io.StringIO()),
            _memory_limit(JUDGE_MEMORY_BYTES),
            memo.seeded(),
            memo.remembering(),
        ):
            for cell in self.source.cells:
                meta = testcells.nbgrader_meta(cell)
                if cell.cell_type != "code" or not meta:
                    continue
                if testcells.is_test_cell(cell):
                    test = next(tests)
                    verdict = self._judge_test(test, namespace, by_key)
                    if test.grade_id in tampered:
                        message = TAMPERED.format(detail=tampered[test.grade_id])
                        verdict = Verdict(test.grade_id, 0.0, test.points, message)
                    verdicts[test.grade_id] = verdict
                elif not meta.get("solution"):
                    self._run(testcells.strip_magics(cell.source), meta.get("grade_id", "setup"), namespace)
        return verdicts

    def _position(self, cell: str, statement: int) -> tuple[int, int]:
        order = next((i for i, test in enumerate(self.tests) if test.grade_id == cell), len(self.tests))
        return order, statement

    def _sequence(self, records: Records) -> tuple[dict, dict[str, str]]:
        """``({(cell, statement): record}, {cell: why its records are tampered})``.

        The kernel records each probe statement once, in the plan's order. A second record of a
        statement, a record that comes after a later statement's, or a record of a statement that is
        no probe, can only have been written by the student's code: its test scores 0, whichever
        record came first (so neither the first nor the last of two can be made to win).
        """
        probes = {
            (test.grade_id, index): (order, index)
            for order, test in enumerate(self.tests)
            for index, statement in enumerate(test.statements)
            if statement.role is Role.PROBE
        }
        cells = {test.grade_id for test in self.tests}
        by_key: dict = {}
        tampered: dict[str, str] = {}
        last = (-1, -1)
        for cell, statement, record in records.entries:
            key = (cell, statement)
            if key not in probes:
                if cell in cells:
                    tampered.setdefault(cell, f"a record for statement {statement}, which is not a probe")
                continue  # a cell this notebook does not have: nothing it could change
            if key in by_key:
                tampered.setdefault(cell, f"statement {statement} was recorded twice")
            elif probes[key] < last:
                tampered.setdefault(cell, f"statement {statement} was recorded out of the order the notebook runs")
            by_key[key] = record
            last = max(last, probes[key])
        if records.dropped:
            for cell in cells - {cell for cell, _ in by_key}:
                tampered.setdefault(cell, f"{records.dropped} record lines beyond the most a run may write")
        return by_key, tampered

    @staticmethod
    def _run(source: str, label: str, namespace: dict) -> None:
        try:
            exec(_compiled(source, f"<{label}>"), namespace)
        except Exception as exc:
            raise JudgeFault(f"cell {label} of the source notebook failed in the judge: {exc!r}") from exc

    def _judge_test(self, test: TestCell, namespace: dict, records) -> Verdict:
        reshaped: list[str] = []
        try:
            with _cpu_limit(TEST_CPU_SECONDS):
                for index, statement in enumerate(test.statements):
                    key = (test.grade_id, index)
                    if statement.role is Role.PROBE and key not in self.recomputed:
                        values = _replay(records.get(key), statement)
                        covered = coverage.check(self.expected.get(key, {}), values)
                        if covered.missing:
                            raise Uncovered(covered.missing[0])
                        reshaped += covered.reshaped
                        namespace.update(values)
                        continue
                    if statement.role is Role.PROBE:
                        _require_plain(statement, namespace)
                    exec(_compiled(statement.source, f"<{test.grade_id}>"), namespace)
                exec(_compiled(test.hidden, f"<{test.grade_id}>"), namespace)
        except JudgeFault:
            raise
        except NotRecorded:
            return Verdict(test.grade_id, 0.0, test.points, NOT_RUN)
        except Uncovered as exc:
            message = f"{exc}: the test checks one result for each of its inputs"
            return Verdict(test.grade_id, 0.0, test.points, failure_message(StudentError("Incomplete", message)))
        except Exception as exc:
            return Verdict(test.grade_id, 0.0, test.points, failure_message(exc))
        if reshaped:
            return Verdict(test.grade_id, 0.0, test.points, failure_message(StudentError("Incomplete", reshaped[0])))
        return Verdict(test.grade_id, test.points, test.points, "")


@functools.lru_cache(maxsize=4096)
def _compiled(source: str, filename: str):
    """The code of a source notebook's statement (the grader's own, never a student's), compiled once per process:
    a code object is immutable, and each judgement runs it in a namespace of its own."""
    return compile(source, filename, "exec")


def _recomputed(tests: list[TestCell], expected: dict) -> frozenset:
    """The derived statements the judge recomputes: those whose inputs, in the reference's records, are plain.

    A derived statement that reads a student's *object* (calls a model the student's class built, reads
    its attributes) runs student code: its record is the student's answer, and is replayed like any probe.
    """
    latest: dict = {}  # name -> the shape the latest probe binding it recorded
    recomputed = set()
    for test in tests:
        for index, statement in enumerate(test.statements):
            if statement.role is not Role.PROBE:
                continue
            key = (test.grade_id, index)
            if statement.derived and not any(_holds_object(latest.get(name)) for name in statement.reads):
                recomputed.add(key)
            latest.update(expected.get(key, {}))
    return frozenset(recomputed)


def _holds_object(shape) -> bool:
    if shape == coverage.OBJECT:
        return True
    if isinstance(shape, dict):
        inner = shape.get("seq") or list((shape.get("dict") or {}).values())
        return any(_holds_object(item) for item in inner)
    return False


def _require_plain(statement, namespace: dict) -> None:
    """A recomputed statement needs plain values: an object in their place fails the test, never trusted."""
    for name in statement.reads:
        value = namespace.get(name)
        if isinstance(value, Unrecorded | StudentCode):
            raise NotPlain(
                f"the grader computes {', '.join(statement.binds)} itself from {name}, but your code gave "
                f"{object.__getattribute__(value, '_what') if isinstance(value, Unrecorded) else name} "
                "instead of numbers, arrays or tensors"
            )


@contextlib.contextmanager
def _cpu_limit(seconds: float):
    """Raise ``JudgeTimeout`` in this test after ``seconds`` of the process's CPU time (CPU, not wall
    clock: a busy machine does not make an honest test time out). Only the main thread gets signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise JudgeTimeout(
            f"the judge stopped this test after {seconds} s of CPU: the values your code recorded made its "
            "checks too costly (a huge number or shape?)"
        )

    previous = signal.signal(signal.SIGPROF, stop)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


@contextlib.contextmanager
def _memory_limit(extra: int):
    """The judge may map at most ``extra`` bytes more than it has now (a MemoryError then fails one test)."""
    try:
        with open("/proc/self/status") as status:
            held = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = held + extra
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        if soft != resource.RLIM_INFINITY and soft < limit:
            limit = soft
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (OSError, StopIteration, ValueError):  # no /proc (another OS): the worker's own limits apply
        yield
        return
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _replay(record: dict | None, statement) -> dict:
    """The names a probe statement bound in the student's kernel, or the error it raised there."""
    if not isinstance(record, dict):
        raise NotRecorded()
    error = record.get("error")
    if isinstance(error, dict):
        type_name, message = str(error.get("type", "Error"))[:100], str(error.get("message", ""))[:2000]
        if type_name == "NotImplementedError" and not message.strip():
            raise StudentError(type_name, "")  # the stub: failure_message says so in its own words
        call = " ".join(statement.source.split())
        call = call if len(call) <= 160 else call[:159] + "…"
        hint = error_hint(type_name, message)
        raise StudentError(type_name, f"{message.split(chr(10))[0]} (raised by `{call}`){hint}")
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


#: Errors whose own text does not say what went wrong in the student's code: (type, words in the message, hint).
ERROR_HINTS = (
    (
        "OverflowError",
        "too big to convert",
        "an integer beyond 64 bits: a shift of 63 or more, or 1 << shift with a large shift? The docstring says "
        "what such a shift gives",
    ),
    (
        "RuntimeError",
        "Boolean value of Tensor with more than one value is ambiguous",
        "a tensor of several values was used as one True or False (an `if` on a tensor of scales?): test it "
        "with torch operations such as (scale <= 0).any()",
    ),
    (
        "RuntimeError",
        "result type Float can't be cast to the desired output type",
        "a float result was written into an integer tensor: round and convert with .to(dtype) first",
    ),
)


def error_hint(type_name: str, message: str) -> str:
    """``'; hint: ...'`` for an error that ``ERROR_HINTS`` knows, else ''."""
    for known_type, words, hint in ERROR_HINTS:
        if type_name == known_type and words in message:
            return f"; hint: {hint}"
    return ""


def failure_message(exc: BaseException) -> str:
    """One line: ``Type: message`` (a student's replayed error keeps its own type), addresses masked."""
    text = str(exc) if isinstance(exc, StudentError) else f"{type(exc).__name__}: {exc}"
    if text.strip() == "NotImplementedError:":
        return STUB
    first = text.strip().split("\n")[0] or type(exc).__name__
    first = first if len(first) <= MAX_MESSAGE else first[: MAX_MESSAGE - 1] + "…"
    return _ADDRESS.sub("0x…", first)
