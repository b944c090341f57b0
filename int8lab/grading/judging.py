"""The judge on a Dask worker: a process of its own, fed with runs, that sends back plain verdicts and pages.

A Dask task runs in a thread of the worker process, where judge.py's per-test CPU limit (SIGPROF, main thread
only) cannot apply and its memory limit (RLIMIT_AS) would bind the whole worker. So each worker process keeps
``JudgeProcess``es: ``python -m int8lab.grading.judging``, which judges in its main thread, under both limits.
It is the grader's own code, started by the worker: it never loads a student's code (the run happened in a
sandboxed kernel, and what it reads of it is JSON), so what it sends back is pickled, not checked as hostile.

Protocol: on the child's stdin and stdout, frames of an 8-byte length and a pickle; a request is
``(function name, args)`` of ``CALLS``, an answer ``(True, value)`` or ``(False, "Type: message")``.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
from importlib import import_module

from .model import Result

_FRAME = struct.Struct("<Q")


class JudgeProcessDied(RuntimeError):
    """The judge process ended while it judged (its memory limit was not enough to stop it, or it was killed)."""


class JudgeProcess:
    """One ``python -m int8lab.grading.judging`` child; ``call`` sends one request and waits for its answer."""

    def __init__(self, dataset: str | None = None):
        """``dataset``: the grading's (``data.DATASET_ENV``), which the reference self-check and the hidden tests
        load; None keeps this process's."""
        from ..data import DATASET_ENV

        env = {**os.environ, DATASET_ENV: dataset} if dataset else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "int8lab.grading.judging"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )

    def call(self, name: str, *args):
        self.begin(name, *args)
        return self.end()

    def begin(self, name: str, *args) -> None:
        """Send one request, in a thread of its own: a process still importing reads nothing yet, and a request
        larger than a pipe holds (the assignments) would block the caller (a Dask worker's event loop) until then.
        ``end`` waits for its answer."""
        self.sending, self.send_error = threading.Thread(target=self._send, args=((name, args),), daemon=True), None
        self.sending.start()

    def _send(self, request) -> None:
        try:
            _write_frame(self.process.stdin, request)
        except BaseException as exc:  # noqa: BLE001 (raised again by end(), in the caller's thread)
            self.send_error = exc

    def end(self):
        """The answer to the request ``begin`` sent: its value, ``GraderFault`` if it raised there."""
        self.sending.join()
        if self.send_error is not None and not isinstance(self.send_error, OSError):
            raise self.send_error  # the request could not be pickled: the caller's fault, the process is fine
        try:
            ok, value = _read_frame(self.process.stdout) if self.send_error is None else (None, None)
            if self.send_error is not None:
                raise self.send_error  # the pipe broke: the process is gone
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            self.close()
            raise JudgeProcessDied(f"the judge process ended while judging ({type(exc).__name__})") from None
        if not ok:
            raise GraderFault(value)
        return value

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class JudgePool:
    """Judge processes of this worker process, one per task thread at most, started when first needed.

    Every new process first loads the shipped assignments, running the reference self-check on each (``load``).
    ``first``: a process to load them into at once (``JudgeProcess``, still importing perhaps): its self-check
    then runs while the worker does the rest of its check (the fork server, the smoke kernel).
    """

    def __init__(self, assignments: dict, dataset: str | None = None, first: JudgeProcess | None = None):
        self.assignments, self.dataset = assignments, dataset
        self.digest = ""  # what they are (cluster_worker.assignments_digest), when a worker may keep the pool
        self.idle: list[JudgeProcess] = []
        self.loading: list[JudgeProcess] = []  # sent the assignments, their self-check's answer not read yet
        self.lock = threading.Lock()
        if first is not None:
            first.begin("load", self.assignments, self.dataset)
            self.loading.append(first)

    def call(self, name: str, *args):
        with self.lock:
            process = self.idle.pop() if self.idle else None
            loading = process is None and bool(self.loading)
            if loading:
                process = self.loading.pop()
        if process is None or not (process.alive() or loading):
            process = JudgeProcess(self.dataset)
            process.begin("load", self.assignments, self.dataset)
            loading = True
        if loading:
            try:
                problems = process.end()
            except JudgeProcessDied:  # before it answered (a spare that died while the worker waited): once more
                process = JudgeProcess(self.dataset)
                problems = process.call("load", self.assignments, self.dataset)
            if problems:
                process.close()
                raise SelfCheckFailed("; ".join(problems[name] for name in sorted(problems)))
        value = process.call(name, *args)  # JudgeProcessDied: this process is gone, not returned to the pool
        with self.lock:
            self.idle.append(process)
        return value

    def close(self) -> None:
        with self.lock:
            for process in self.idle + self.loading:
                process.close()
            self.idle.clear()
            self.loading.clear()


class GraderFault(RuntimeError):
    """The judge process raised: ``str()`` is its ``Type: message``, as the local pool reports a grader fault."""


class SelfCheckFailed(RuntimeError):
    """The judge fails the reference solution in this worker's judge process."""


# In the judge process: the assignments loaded there, self-checked.
_assignments: dict = {}


def load(assignments: dict, dataset: str | None = None) -> dict[str, str]:
    """Keep ``assignments`` ({name: course.Assignment}) here, each with the reference shapes of its own
    self-check (never the client's); ``{name: what the reference fails}`` for those that fail it.
    ``dataset``: the grading's (``data.DATASET_ENV``), which the self-check and the hidden tests load; a process
    started before the grading was known (``cluster_worker.start_spare_judge``) has loaded no data before this."""
    from ..data import DATASET_ENV
    from . import fragments, selfcheck
    from .judge import Judge

    if dataset:
        os.environ[DATASET_ENV] = dataset
    problems = {}
    checked = selfcheck.checked_references({name: assignment.source for name, assignment in assignments.items()})
    for name, assignment in assignments.items():
        if isinstance(checked[name], AssertionError):
            problems[name] = f"on this worker, {checked[name]}"
            continue
        assignment.expected = checked[name]
        # Built now, with these shapes: the first submission does not pay for it.
        assignment._judge = Judge.from_source(assignment.source, assignment.expected)
        _assignments[name] = assignment
    # The releases' page fragments, shared out like the self-checks: not paid by each first page. A failure is a
    # head start lost (a page that cannot render says so when it is asked for), said on the judge's stderr.
    for failure in fragments.share({name: _assignments[name] for name in assignments if name in _assignments}):
        print(f"int8lab: the page fragments of {failure}", file=sys.stderr)
    return problems


def judge_run(job, name: str, ran: dict, notes: list[str], page: bool) -> dict:
    """``workers.finish`` on a run of ``job`` (assignment ``name``), as plain data (``answer``), with the CPU
    seconds this process spent on it (``judge_cpu``, "judge" and "page": the benchmark's figures)."""
    import time

    from .workers import finish

    started = time.process_time()
    assignment = _assignments[name]
    result = finish(job, assignment, ran, notes)
    judged = time.process_time()
    plain = answer(result, assignment if page else None)
    plain["judge_cpu"] = {"judge": judged - started, "page": time.process_time() - judged}
    return plain


def answer(result: Result, page_of=None) -> dict:
    """A judged Result as plain data: ``{"status": str, "reason": str, "verdicts": [[grade_id, score, max_score,
    message], ...], "graded": bytes (its ``graded_file``) or None, "unchanged": [grade_id, ...], "sandbox": dict or
    None, "page": str or None}``;
    ``page_of``: the Assignment whose feedback page to render (pages.py), or None for no page."""

    page = None
    if page_of is not None and result.graded is not None:
        from .pages import render_page

        page = render_page(result.graded, result.job, page_of, result.verdicts)
    return {
        "status": result.status.value,
        "reason": result.reason,
        "verdicts": [[v.grade_id, v.score, v.max_score, v.message] for v in result.verdicts.values()],
        "graded": result.graded_file,
        "unchanged": sorted(result.unchanged),
        "sandbox": result.sandbox,
        "page": page,
    }


CALLS = {"load": load, "judge": judge_run}


def _write_frame(stream, value) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)) + data)
    stream.flush()


def _read_frame(stream):
    header = stream.read(_FRAME.size)
    if len(header) < _FRAME.size:
        raise EOFError("no answer")
    (size,) = _FRAME.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("a truncated answer")
    return pickle.loads(data)


def warm() -> None:
    """What a judge process does when it starts, before its first request (for a Dask worker's preloaded spare:
    before the grading), so that no self-check or page pays it."""
    from .pages import warm as warm_pages
    from .selfcheck import machine_digest

    warm_pages()  # nbgrader's imports and the templates' compilation
    import_module("int8lab.plots")  # the reference solutions import it (matplotlib)
    import_module("torch._dynamo")  # an optimizer's first step imports it: 0.8 s of notebook 7's self-check
    machine_digest()  # what a remembered self-check is keyed on (installed packages...)


def main() -> None:
    """The judge process's loop; what the judge prints goes to stderr, never into the protocol's frames."""
    from .workers import _warm_worker

    requests, answers = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _warm_worker()
    try:
        warm()
    except Exception:  # noqa: BLE001 (a head start only: the first page and load do the same, and say what fails)
        pass
    while True:
        try:
            name, args = _read_frame(requests)
        except EOFError:
            return
        try:
            reply = (True, CALLS[name](*args))
        except Exception as exc:
            reply = (False, f"{type(exc).__name__}: {exc}")
        _write_frame(answers, reply)


if __name__ == "__main__":
    main()
