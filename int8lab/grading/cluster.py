"""Grading on a Dask cluster (``int8lab grade --dask ADDRESS``), the client's side: read, submit, accept, merge.

Per job, the client reads the submitted file's bytes (a file that is none is refused here), a Dask task
(``cluster_worker.grade_on_worker``) rebuilds it into the probe notebook, runs it in a scratch folder of some
worker, judges it there (``judging.py``), renders its feedback page there, and the client ``accept``s what
comes back; only the merge into the gradebook and the reports stay here.
Workers share no filesystem with the client: each needs int8lab (the same code as the client's), torch and the
sandbox; the client ships the model cache and the assignments to them.

Faults: a worker that dies mid-run has its tasks rerun elsewhere by the scheduler; a task involved in
more worker deaths than ``distributed.scheduler.allowed-failures`` becomes ``KilledWorker``: that job's
status is ``error``, the class goes on. A worker whose int8lab, torch, cache or sandbox differs is a
``GradingError`` before (or, for a late joiner, as soon as) it runs anything.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import asdict

from . import intake
from .cluster_worker import (
    ShipAssignments,
    ShipModelCache,
    WorkerMismatch,
    cache_digest,
    cache_files,
    expected_worker,
)
from .judge import Verdict
from .merge import released_answers
from .model import GradingError, Job, Limits, Result, Status
from .tasks import check_worker, grade_on_worker
from .workers import JOB_GRACE_SECONDS, MAX_EXECUTED_BYTES

#: Seconds the client waits for the scheduler to answer, and then for a first worker.
CONNECT_SECONDS = 5
WORKER_WAIT_SECONDS = 30
#: ``allowed-failures`` of a LocalCluster: a job whose worker dies twice is an error, as in the local pool.
LOCAL_ALLOWED_FAILURES = 1
#: Tasks in flight per worker thread: enough to keep workers busy, few enough to bound the client's memory.
TASKS_PER_THREAD = 4
KILLED_REASON = "the grading worker crashed twice on this submission"


def grade_on_dask(client, jobs, assignments, limits: Limits, progress: bool, on_result=None, pages: bool = True):
    """``(results, tally)``: every job's Result, and ``{worker: jobs it ran}``.

    ``client``: ``connect()``'s; ``jobs``: intake's Jobs; ``assignments``: ``{assignment id: course.Assignment}``;
    ``on_result``: called with each Result as it comes (the merge), or None;
    ``pages``: the workers render each feedback page too (``Result.page``).
    Raises ``GradingError`` when a worker cannot grade like this machine (its code, its cache, its judge's
    self-check on the reference solutions).
    """
    wanted = expected_worker()
    files = cache_files(wanted["dataset"])
    client.register_plugin(ShipModelCache(wanted, files), name="int8lab-cache")
    client.register_plugin(
        ShipAssignments(assignments, wanted["dataset"], cache_digest(files)), name="int8lab-assignments"
    )
    problems = _check_every_worker(client, wanted)
    if problems:
        raise GradingError(_mismatch_message(problems))
    return _grade(client, jobs, assignments, limits, wanted, progress, pages, on_result or (lambda result: None))


def connect(address: str, workers: int):
    """``(client, local_cluster_or_None)``, with at least one worker; ``GradingError`` within seconds if not.

    ``address``: ``tcp://HOST:PORT`` of a running scheduler, or ``local`` for a LocalCluster of ``workers``
    single-threaded processes. The caller closes both.
    """
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise GradingError("--dask needs Dask distributed on this machine: pip install distributed") from None
    if address == "local":
        import logging

        dask.config.set({"distributed.scheduler.allowed-failures": LOCAL_ALLOWED_FAILURES})
        cluster = LocalCluster(
            n_workers=max(1, workers),
            threads_per_worker=1,
            processes=True,
            preload=["int8lab.grading.preload"],  # fork servers and judges start while the client reads the course
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        return Client(cluster), cluster
    if not re.fullmatch(r"(tcp|tls)://[^\s/]+:\d+", address):
        raise GradingError(f"--dask takes tcp://HOST:PORT of a running `dask scheduler`, or local; not {address!r}")
    try:
        client = Client(address, timeout=CONNECT_SECONDS)
    except (OSError, TimeoutError) as exc:
        raise GradingError(
            f"cannot reach the Dask scheduler at {address} within {CONNECT_SECONDS} s ({type(exc).__name__}): "
            "is `dask scheduler` running there, on that port, and can this machine reach it?"
        ) from None
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
    except (OSError, TimeoutError):
        client.close()
        raise GradingError(
            f"the Dask scheduler at {address} has no worker after {WORKER_WAIT_SECONDS} s: "
            f"start some with `dask worker {address} --nthreads 1 --preload int8lab.grading.preload`"
        ) from None
    return client, None


def _check_every_worker(client, wanted: dict) -> dict[str, str]:
    """``{worker address: problem}`` of the workers connected now, each checked by a task of its own
    (a task thread, like grading's: ``Client.run`` would block the worker's event loop)."""
    checks = {
        address: client.submit(
            check_worker,
            wanted,
            True,
            workers=[address],
            allow_other_workers=False,
            pure=False,
            key=f"int8lab-check-{os.urandom(4).hex()}",
        )
        for address in client.scheduler_info()["workers"]
    }
    try:
        answers = client.gather(list(checks.values()))
    except Exception as exc:  # a worker that died or left while being checked: the cluster is not ready
        raise GradingError(
            f"checking the Dask workers failed ({type(exc).__name__}: {exc}); nobody was graded"
        ) from None
    return {address: problem for address, problem in zip(checks, answers, strict=True) if problem}


def _grade(client, jobs: list[Job], assignments, limits: Limits, wanted: dict, progress: bool, pages: bool, on_result):
    """Submit the jobs (a bounded number in flight), accept each answer on its return; see ``grade_on_dask``."""
    from distributed import wait
    from tqdm.auto import tqdm

    results: list[Result] = []
    tally: Counter = Counter()
    waiting = list(enumerate(jobs))
    threads = max(1, sum(client.nthreads().values()))
    window = TASKS_PER_THREAD * threads
    running: dict = {}  # future -> (job, seconds the client took to prepare it)
    stall_seconds = 2 * (limits.notebook_timeout + JOB_GRACE_SECONDS)
    last_progress = time.monotonic()
    with tqdm(total=len(jobs), desc="grading", unit="notebook", disable=not progress) as bar:
        while waiting or running:
            while waiting and len(running) < window:
                index, job = waiting.pop(0)
                started = time.perf_counter()
                submitted = _read(job)
                if not isinstance(submitted, bytes):  # nothing to send: final here
                    results.append(submitted)
                    bar.update()
                    continue
                # The rebuild happens on the worker (workers.prepare): here, only reading the file.
                future = client.submit(
                    grade_on_worker,
                    submitted,
                    asdict(limits),
                    wanted,
                    job,
                    pages,
                    key=f"int8lab-grade-{index:05d}-{os.urandom(4).hex()}",
                    pure=False,
                    retries=1,  # an exception of the grader's on that worker; worker deaths are the scheduler's
                )
                running[future] = (job, time.perf_counter() - started)
            done = set()
            if running:
                try:
                    done, _ = wait(list(running), timeout=1.0, return_when="FIRST_COMPLETED")
                except TimeoutError:  # nothing came back in time (Dask raises where concurrent.futures returns)
                    pass
            for future in done:
                job, preparing = running.pop(future)
                result = _collect(future, job, assignments[job.assignment], preparing)
                if result.status is not Status.INVALID_NOTEBOOK:  # that one never ran: no worker's job
                    tally[result.worker or "(no worker finished it)"] += 1
                results.append(result)
                on_result(result)
                bar.update()
            if done:
                last_progress = time.monotonic()
            elif running and time.monotonic() - last_progress > stall_seconds:
                for future, (job, _) in running.items():
                    future.cancel()
                    reason = f"grader fault: the Dask cluster returned nothing for {stall_seconds} s"
                    results.append(Result(job, Status.ERROR, reason))
                    bar.update()
                running.clear()
    return sorted(results, key=lambda r: (r.job.student, r.job.assignment)), tally


def _read(job: Job) -> bytes | Result:
    """The submitted file's bytes, or the job's final Result: intake's verdict, or a file that is none."""
    if job.status is not Status.OK:
        return Result(job, job.status, job.reason)
    try:
        return intake.read_regular_file(job.notebook, intake.MAX_NOTEBOOK_BYTES)
    except intake.InvalidNotebook as exc:
        return Result(job, Status.INVALID_NOTEBOOK, str(exc))


def _collect(future, job: Job, assignment, preparing: float) -> Result:
    """The job's Result from a finished future: the worker's judged answer, or why there is none."""
    from distributed import KilledWorker

    if future.status == "finished":
        return accept(job, assignment, future.result(), preparing)
    if future.status == "cancelled":
        raise GradingError("the Dask scheduler cancelled the grading (did it stop, or did this client lose it?)")
    exc = future.exception()
    if isinstance(exc, WorkerMismatch):
        raise GradingError(_mismatch_message({"a worker that joined during grading": str(exc)}))
    if isinstance(exc, KilledWorker):  # its workers died more than allowed-failures times while running it
        return Result(job, Status.ERROR, KILLED_REASON)
    message = re.sub(r"/[^\s'\"]+", "<path>", str(exc))  # no machine's path in a report
    return Result(job, Status.ERROR, f"grader fault: {type(exc).__name__}: {message}")


def accept(job: Job, assignment, answer: dict, preparing: float = 0.0) -> Result:
    """The Result a worker's answer (``judging.answer`` plus ``worker``, ``seconds``) stands for.

    The worker is the grader's (its code checked against the client's), so its verdicts are taken as they
    are; what is checked here is that the answer has the shape of one, for the gradebook's sake: known
    grade ids, scores within their points, a notebook of bounded size.
    """
    try:
        worker = str(answer.get("worker", ""))[:200]
        if "fault" in answer:  # the judge raised on that worker: the grader's fault, as in the local pool
            message = re.sub(r"/[^\s'\"]+", "<path>", str(answer["fault"]))[:2000]
            return Result(job, Status.ERROR, f"grader fault: {message}", worker=worker)
        points = {grade_id: points for grade_id, points, autograded in assignment.cells if autograded}
        verdicts = {}
        for grade_id, score, max_score, message in answer["verdicts"]:
            if points.get(grade_id) != max_score or not 0 <= score <= max_score or not isinstance(message, str):
                raise ValueError(f"a verdict out of range for {grade_id!r}")
            verdicts[grade_id] = Verdict(grade_id, float(score), float(max_score), message)
        graded = answer["graded"]
        if graded is not None and (not isinstance(graded, bytes) or len(graded) > MAX_EXECUTED_BYTES):
            raise ValueError("the graded notebook is too large")
        unchanged = frozenset(answer["unchanged"])
        known = released_answers(assignment.release).keys() if assignment.release is not None else set()
        if not unchanged <= known:
            raise ValueError("an unknown answer cell")
        page = answer.get("page")
        if page is not None and not isinstance(page, str):
            raise ValueError("the page is not text")
        sandbox = answer["sandbox"] if isinstance(answer["sandbox"], dict) else None
        status, reason = Status(answer["status"]), str(answer["reason"])
        result = Result(
            job, status, reason, verdicts, None, sandbox, page=page, graded_file=graded, unchanged=unchanged
        )
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        reason = f"grader fault: a worker sent back an unusable answer ({type(exc).__name__})"
        return Result(job, Status.ERROR, reason)
    result.worker = worker
    seconds = answer.get("seconds")
    result.seconds = preparing + (float(seconds) if isinstance(seconds, int | float) and 0 <= seconds < 1e6 else 0.0)
    return result


def _mismatch_message(problems: dict) -> str:
    lines = "\n".join(f"  {worker}: {problem}" for worker, problem in sorted(problems.items()))
    return f"some Dask workers cannot grade like this machine; nobody was graded:\n{lines}"
