"""Grading on a Dask cluster (``int8lab grade --dask ADDRESS``), the client's side: only runs leave this machine.

Per job, the client ``prepare``s the probe notebook (bytes), a Dask task (``cluster_worker.grade_on_worker``)
runs it in a scratch folder of some worker, and the client ``finish``es (judge, sanitize) what comes back;
merge, feedback and reports stay here. Workers share no filesystem with the client: each needs int8lab
(the same code as the client's), torch and the sandbox; the client ships the model cache to them.

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

from .cluster_worker import ShipModelCache, WorkerMismatch, cache_files, check_worker, expected_worker, grade_on_worker
from .model import GradingError, Job, Limits, Result, Status
from .workers import JOB_GRACE_SECONDS, finish, prepare

#: Seconds the client waits for the scheduler to answer, and then for a first worker.
CONNECT_SECONDS = 5
WORKER_WAIT_SECONDS = 30
#: ``allowed-failures`` of a LocalCluster: a job whose worker dies twice is an error, as in the local pool.
LOCAL_ALLOWED_FAILURES = 1
#: Tasks in flight per worker thread: enough to keep workers busy, few enough to bound the client's memory.
TASKS_PER_THREAD = 4
#: Worker threads per client process that judges (``--judges`` unset): a judge takes about a third of a run.
JUDGE_EVERY_THREADS = 3
KILLED_REASON = "the grading worker crashed twice on this submission"


def grade_on_dask(client, jobs, assignments, limits: Limits, progress: bool, judges: int = 0):
    """``(results, tally)``: every job's Result, and ``{worker: jobs it ran}``.

    ``client``: ``connect()``'s; ``jobs``: intake's Jobs; ``assignments``: ``{assignment id: course.Assignment}``;
    ``judges``: client processes that judge (0: one per three worker threads, at most this machine's cores).
    Raises ``GradingError`` when a worker cannot grade like this machine.
    """
    wanted = expected_worker()
    client.register_plugin(ShipModelCache(wanted, cache_files(wanted["dataset"])), name="int8lab-cache")
    problems = _check_every_worker(client, wanted)
    if problems:
        raise GradingError(_mismatch_message(problems))
    return _grade(client, jobs, assignments, limits, wanted, progress, judges)


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
            f"start some with `dask worker {address} --nthreads 1`"
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


def _grade(client, jobs: list[Job], assignments, limits: Limits, wanted: dict, progress: bool, judges: int):
    """Submit the jobs (a bounded number in flight), finish each on its return; see ``grade_on_dask``."""
    from distributed import wait
    from tqdm.auto import tqdm

    results: list[Result] = []
    tally: Counter = Counter()
    waiting = list(enumerate(jobs))
    threads = max(1, sum(client.nthreads().values()))
    window = TASKS_PER_THREAD * threads
    # The judge costs about a third of a run (1.4 s for notebooks 2 to 4): one process judges for ~3 worker threads.
    judging = _Judges(judges or min(os.cpu_count() or 1, max(1, threads // JUDGE_EVERY_THREADS)))
    running: dict = {}  # future -> (job, notes, seconds the client took to prepare it)
    stall_seconds = 2 * (limits.notebook_timeout + JOB_GRACE_SECONDS)
    last_progress = time.monotonic()
    with tqdm(total=len(jobs), desc="grading", unit="notebook", disable=not progress) as bar:
        while waiting or running or judging.pending:
            while waiting and len(running) + len(judging.pending) < window:
                index, job = waiting.pop(0)
                started = time.perf_counter()
                prepared = prepare(job, assignments[job.assignment], limits) if job.status is Status.OK else None
                if not isinstance(prepared, tuple):  # no notebook to run: final here
                    results.append(prepared or Result(job, job.status, job.reason))
                    bar.update()
                    continue
                probe, notes = prepared
                future = client.submit(
                    grade_on_worker,
                    probe,
                    asdict(limits),
                    wanted,
                    key=f"int8lab-grade-{index:05d}-{os.urandom(4).hex()}",
                    pure=False,
                    retries=1,  # an exception of the grader's on that worker; worker deaths are the scheduler's
                )
                running[future] = (job, notes, time.perf_counter() - started)
            done = set()
            if running:
                try:
                    done, _ = wait(
                        list(running), timeout=0.2 if judging.pending else 1.0, return_when="FIRST_COMPLETED"
                    )
                except TimeoutError:  # nothing came back in time (Dask raises where concurrent.futures returns)
                    pass
            elif judging.pending:
                judging.wait(timeout=1.0)
            finished = []
            for future in done:
                job, notes, preparing = running.pop(future)
                ran = _collect(future, job)
                if isinstance(ran, Result):
                    finished.append(ran)
                else:
                    finished += judging.submit(job, assignments[job.assignment], ran, notes, preparing)
            finished += judging.done()
            for result in finished:
                tally[result.worker or "(no worker finished it)"] += 1
                results.append(result)
                bar.update()
            if done or finished:
                last_progress = time.monotonic()
            elif running and time.monotonic() - last_progress > stall_seconds:
                for future, (job, _, _) in running.items():
                    future.cancel()
                    reason = f"grader fault: the Dask cluster returned nothing for {stall_seconds} s"
                    results.append(Result(job, Status.ERROR, reason))
                    bar.update()
                running.clear()
    judging.close()
    return sorted(results, key=lambda r: (r.job.student, r.job.assignment)), tally


def _collect(future, job: Job) -> Result | dict:
    """The run's dict from a finished future (to be judged), or the job's Result when it failed."""
    from distributed import KilledWorker

    if future.status == "finished":
        return future.result()
    if future.status == "cancelled":
        raise GradingError("the Dask scheduler cancelled the grading (did it stop, or did this client lose it?)")
    exc = future.exception()
    if isinstance(exc, WorkerMismatch):
        raise GradingError(_mismatch_message({"a worker that joined during grading": str(exc)}))
    if isinstance(exc, KilledWorker):  # its workers died more than allowed-failures times while running it
        return Result(job, Status.ERROR, KILLED_REASON)
    message = re.sub(r"/[^\s'\"]+", "<path>", str(exc))  # no machine's path in a report
    return Result(job, Status.ERROR, f"grader fault: {type(exc).__name__}: {message}")


class _Judges:
    """``finish`` (judge, sanitize) for each run that comes back: here, or in ``processes`` client processes
    when one process cannot keep up with the cluster. Results are the same either way."""

    def __init__(self, processes: int):
        self.processes, self.pool = processes, None
        self.pending: dict = {}  # concurrent future -> (job, assignment, ran, notes, seconds so far)

    def submit(self, job: Job, assignment, ran: dict, notes: list[str], preparing: float) -> list[Result]:
        """The Result now (judged here), or [] when it is judged in a process (see ``done``)."""
        if self.processes <= 1:
            started = time.perf_counter()
            result = _with_run(finish(job, assignment, ran, notes), ran, preparing)
            result.seconds += time.perf_counter() - started
            return [result]
        if self.pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            from .workers import _warm_worker

            context = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(self.processes, mp_context=context, initializer=_warm_worker)
        self.pending[self.pool.submit(finish, job, assignment, ran, notes)] = (job, assignment, ran, notes, preparing)
        return []

    def done(self) -> list[Result]:
        from concurrent.futures.process import BrokenProcessPool

        results = []
        for future in [f for f in self.pending if f.done()]:
            job, assignment, ran, notes, preparing = self.pending.pop(future)
            try:
                result = future.result()
            except BrokenProcessPool:  # a judge process died: the judge is the grader's code, judge here instead
                self.close()
                result = finish(job, assignment, ran, notes)
            results.append(_with_run(result, ran, preparing))
        return results

    def wait(self, timeout: float) -> None:
        from concurrent.futures import FIRST_COMPLETED, wait

        wait(list(self.pending), timeout=timeout, return_when=FIRST_COMPLETED)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def _with_run(result: Result, ran: dict, preparing: float) -> Result:
    """``result`` with the worker that ran it and its own time (prepare and run, not its wait in the queue)."""
    result.worker = str(ran.get("worker", ""))[:200]
    seconds = ran.get("seconds")
    result.seconds = preparing + (float(seconds) if isinstance(seconds, int | float) and 0 <= seconds < 1e6 else 0.0)
    return result


def _mismatch_message(problems: dict) -> str:
    lines = "\n".join(f"  {worker}: {problem}" for worker, problem in sorted(problems.items()))
    return f"some Dask workers cannot grade like this machine; nobody was graded:\n{lines}"
