"""Grading on Dask, stage by stage, and what 1,000 students would take on N machines; prints figures only.

    .venv/bin/python benchmarks/bench_dask.py [--students 30] [--workers 2] [--demos] [--assignments 5]
                                              [--cores 8] [--real-workers 4] [--merge-submissions 100]

1. A generated class (``--students`` students, each submitting every notebook) graded on a Dask LocalCluster of
   ``--workers`` processes, each stage timed: on the workers the rebuild and the run, then the judge with its
   page (in the worker's judge process); on the client reading the file, accept, the merge, the reports, writing
   the pages.
2. The two ways to make the feedback pages: rendered from the verdicts (pages.py, on the worker that judged; its
   cost measured here in one warm process), or ``nbgrader generate_feedback`` per student, in parallel on the
   client (as many processes at once as this machine has cores).
3. The merge of ``--merge-submissions`` submissions into one gradebook: a transaction per submission against
   one per batch.
4. The client's CPU while a real ``dask scheduler`` and ``--real-workers`` ``dask worker`` processes grade the
   class (getrusage of the client process over the grading phase).
5. The extrapolation to 1,000 students x ``--assignments`` notebooks on N machines of ``--cores`` cores.

The machine may be shared: every figure is one noisy run.
"""

import argparse
import contextlib
import copy
import json
import os
import pickle
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_grading import make_class  # noqa: E402

from int8lab import cache_dir, trained_model  # noqa: E402
from int8lab.grading import (  # noqa: E402
    cluster,
    course,
    merge,
    pages,
    pipeline,
    preload,
    report,
    selfcheck,
)
from int8lab.grading.model import Limits  # noqa: E402


class Timer:
    """Wraps ``module.name`` (a module's function, or a class's method) so that its calls' total CPU time (of the
    calling thread: on a busy machine, wall time would count the waits for a core) and count are kept, and its
    last arguments (a method's first is its object)."""

    def __init__(self, module, name, keep=None):
        self.module, self.name, self.original = module, name, getattr(module, name)
        self.seconds, self.calls, self.last_args, self.keep, self.kept = 0.0, 0, (), keep, []

        def timed(*args, **kwargs):  # a function, so that a class binds it as a method
            return self(*args, **kwargs)

        setattr(module, name, timed)

    def __call__(self, *args, **kwargs):
        started, self.last_args = time.thread_time(), args
        if self.keep:
            self.kept.append(self.keep(*args))
        try:
            return self.original(*args, **kwargs)
        finally:
            self.seconds += time.thread_time() - started
            self.calls += 1

    def restore(self):
        setattr(self.module, self.name, self.original)


class WallTimer(Timer):
    """A ``Timer`` of wall-clock seconds: for a call that waits for other processes."""

    def __call__(self, *args, **kwargs):
        started, self.last_args = time.perf_counter(), args
        try:
            return self.original(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1


def grade(submitted: Path, out: Path, workers: int, limits: Limits, dask: str):
    started = time.perf_counter()
    graded = pipeline.grade(
        submitted, out, workers=workers, limits=limits, solutions=ROOT / "solutions", progress=False, dask=dask
    )
    return time.perf_counter() - started, graded.results


def stages(submitted: Path, out: Path, workers: int, limits: Limits) -> dict:
    """Seconds per notebook of each stage, from a Dask LocalCluster grading of the class."""
    timers = {
        "read": Timer(cluster, "_read"),
        "accept": Timer(
            cluster, "accept", keep=lambda job, assignment, answer, *rest: (job.assignment, job.student, answer)
        ),
        "merge": Timer(merge.Merger, "merge"),
        "reports": Timer(pipeline.report, "write_reports"),
        "write pages": Timer(pages, "write_pages"),
        "check the workers": WallTimer(cluster, "_check_every_worker"),
    }
    # The first grading on this machine: every judge process runs its self-check, and nothing is remembered (a
    # copy of the model cache is another machine's to the remembered self-checks and page fragments).
    cache = out.with_name(out.name + "-cache")
    shutil.copytree(cache_dir(), cache)
    before = dict(os.environ)
    os.environ.update({selfcheck.RECHECK_ENV: "1", "INT8LAB_CACHE": str(cache)})
    try:
        wall, results = grade(submitted, out, workers, limits, "local")
    finally:
        os.environ.clear()
        os.environ.update(before)
        for timer in timers.values():
            timer.restore()
    kept = [(name, who, a) for name, who, a in timers["accept"].kept if "seconds" in a and "fault" not in a]
    answers = [a for _, _, a in kept]
    count = max(1, len(answers))
    figures = {name: timer.seconds / count for name, timer in timers.items()}
    figures["worker judge+page"] = sum(a["judge_seconds"] for a in answers) / count
    figures["worker run"] = sum(a["seconds"] - a["judge_seconds"] for a in answers) / count
    # A worker's first notebook of each assignment also pays what a worker pays once: its fork server's start and
    # warm check (the first run), the page template's compilation and the caches of its judge process (the first
    # judge of each assignment). For 1,000 students that is amortised; the model counts it once per worker.
    seen, steady, first = set(), [], []
    for name, who, answer in kept:
        key = (answer.get("worker"), name)
        (steady if key in seen else first).append((name, who, answer))
        seen.add(key)
    steady = steady or kept
    figures["worker run, steady"] = sum(a["seconds"] - a["judge_seconds"] for _, _, a in steady) / len(steady)
    figures["worker judge+page, steady"] = sum(a["judge_seconds"] for _, _, a in steady) / len(steady)
    # The judge process's own CPU: what judge+page costs where a worker has a core of its own (this machine's
    # workers share two cores with the client, the scheduler and each other's kernels).
    for part in ("judge", "page"):
        cpu = [a["judge_cpu"][part] for _, _, a in steady if isinstance(a.get("judge_cpu"), dict)]
        figures[f"worker {part} CPU, steady"] = sum(cpu) / max(1, len(cpu))
    workers_seen = max(1, len({a.get("worker") for a in answers}))
    # The warm-up: each first notebook against the steady ones of its own assignment and kind (make_class leaves
    # one student in four unsolved, whose notebooks cost less; the first ones of each worker are solved ones).
    by_kind: dict = {}
    for name, who, answer in steady:
        by_kind.setdefault((name, _unsolved(who)), []).append(answer["seconds"])
    overall = sum(a["seconds"] for _, _, a in steady) / len(steady)
    extra = 0.0
    for name, who, answer in first:
        same = by_kind.get((name, _unsolved(who)))
        extra += answer["seconds"] - (sum(same) / len(same) if same else overall)
    figures["worker warm-up"] = max(0.0, extra) / workers_seen
    figures["wall"], figures["notebooks"] = wall, len(answers)
    # Once per grading, all workers at once: each judge process's start and self-check, the fork server's start
    # and its check kernels (cluster_worker.check_worker).
    figures["check the workers"] = timers["check the workers"].seconds
    return figures, results, timers["merge"].last_args[0].assignments


def _unsolved(student: str) -> bool:
    """Whether ``make_class`` left this student's notebooks unsolved (one student in four)."""
    digits = "".join(ch for ch in student if ch.isdigit())
    return bool(digits) and int(digits) % 4 == 3


def page_ways(out: Path, results, assignments) -> dict:
    """Seconds per page: rendered from the verdicts (warm, one process), and nbgrader per student in parallel."""
    graded = [r for r in results if r.graded_file is not None]
    notebooks = [nbformat.reads(r.graded_file.decode(), as_version=4) for r in graded]
    pages.render_page(notebooks[0], graded[0].job, assignments[graded[0].job.assignment], graded[0].verdicts)
    started = time.perf_counter()
    for result, notebook in zip(graded, notebooks, strict=True):
        pages.render_page(notebook, result.job, assignments[result.job.assignment], result.verdicts)
    rendered = (time.perf_counter() - started) / len(graded)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)

    def one(result):
        student = f"--CourseDirectory.student_id={result.job.student}"
        course.nbgrader(out, "generate_feedback", result.job.assignment, student)

    started = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 1) as threads:
        list(threads.map(one, graded))
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"rendered": rendered, "nbgrader wall": wall / len(graded), "nbgrader cpu": cpu / len(graded)}


def scaled(results, copies: int):
    """``copies`` renamed copies of every result: a larger class with the same notebooks."""
    more = []
    for index in range(copies):
        for result in results:
            twin = copy.copy(result)
            twin.job = copy.copy(result.job)
            twin.job.student = f"{result.job.student}x{index:03d}"
            more.append(twin)
    return more


def merge_ways(out: Path, scratch: Path, results, assignments, count: int) -> dict:
    """Seconds per submission merging ``count`` submissions: a transaction each, then one per batch."""
    big = scaled([r for r in results if r.graded_file is not None], -(-count // len(results)))[:count]
    figures = {}
    for label, batch in (("a transaction each", 1), ("one per batch", merge.MERGE_BATCH)):
        course_copy = scratch / f"merge-{batch}"
        shutil.copytree(out, course_copy, ignore=shutil.ignore_patterns("feedback", "autograded", ".mathjax"))
        started, cpu = time.perf_counter(), time.process_time()
        merge.merge(course_copy, big, assignments, batch=batch)
        figures[label] = (time.perf_counter() - started) / len(big)
        figures[label + " cpu"] = (time.process_time() - cpu) / len(big)
    started = time.perf_counter()
    report.write_reports(course_copy, big, assignments)
    figures["reports"] = (time.perf_counter() - started) / len(big)
    return figures


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def real_cluster(workers: int, base: Path, name: str, env: dict | None = None):
    """A `dask scheduler` and ``workers`` workers started with the preload, as the README says; yields the
    scheduler's address once every worker's preload is done (its fork server and judge process started).
    ``env``: more environment variables for the workers."""
    dask = str(Path(sys.executable).with_name("dask"))
    address = f"tcp://127.0.0.1:{_free_port()}"
    logs = [open(base / f"{name}-{i}.log", "wb") for i in range(workers + 1)]  # noqa: SIM115 (closed below)
    host = ["--host", "127.0.0.1", "--no-dashboard"]
    processes = [subprocess.Popen([dask, "scheduler", *host, "--port", address.rsplit(":", 1)[1]], stdout=logs[0])]
    try:
        for index in range(workers):
            command = [dask, "worker", address, "--nthreads", "1", "--name", f"w{index}", *host]
            command += ["--preload", "int8lab.grading.preload"]
            processes.append(
                subprocess.Popen(
                    command, stdout=logs[index + 1], stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
                )
            )
        from distributed import Client

        with Client(address, timeout=60) as waiting:
            waiting.wait_for_workers(workers, timeout=120)
            for _ in range(240):
                if all(waiting.run(preload.ready).values()):
                    break
                time.sleep(0.5)
        yield address
    finally:
        for process in processes:
            process.kill()
            process.wait()
        for log in logs:
            log.close()


def fresh_check(submitted: Path, out: Path, workers: int, limits: Limits, base: Path, checked: bool) -> float:
    """Seconds of the check of ``workers`` fresh workers (preloaded, one per core), grading one student's
    notebooks: on a machine whose self-checks of these assignments are remembered (``checked``), or on one that
    never checked them: the workers then have a model cache of their own, empty (the client ships its files), and
    so no remembered self-check (the client's, beside its own cache, is another machine's)."""
    one = base / "one-student"
    if not one.exists():
        first = sorted(path for path in submitted.iterdir() if path.is_dir())[0]
        shutil.copytree(first, one / first.name)
    name = "fresh" if checked else "never-checked"
    env = {} if checked else {"INT8LAB_CACHE": str(base / f"{name}-cache")}
    check = WallTimer(cluster, "_check_every_worker")
    try:
        with real_cluster(workers, base, name, env) as address:
            grade(one, out, workers, limits, address)
    finally:
        check.restore()
    return check.seconds


def machine_shared_cpu(assignments: dict) -> dict[str, float]:
    """CPU seconds of what a machine's judge processes share out when they load the assignments, measured in a
    fresh process started as a judge process starts (``judging.main``'s warm-up): each assignment's self-check
    (``selfcheck.check_reference``) and the rendering of its release's page fragments
    (``fragments.render_release``), each a unit of work that one process does. (In this process they would cost
    less: the grading's own self-check left its records and the models warm here.)"""
    measure = (
        "import json, pickle, sys, time\n"
        "from int8lab.grading.workers import _warm_worker\n"
        "_warm_worker()\n"
        "from int8lab.grading import fragments, judging, selfcheck\n"
        "judging.warm()\n"
        "seconds = {}\n"
        "for name, assignment in pickle.loads(sys.stdin.buffer.read()).items():\n"
        "    started = time.process_time()\n"
        "    assignment.expected = selfcheck.check_reference(name, assignment.source)\n"
        "    seconds[name + ' self-check'] = time.process_time() - started\n"
        "    if assignment.release is not None:\n"
        "        started = time.process_time()\n"
        "        fragments.render_release(name, assignment)\n"
        "        seconds[name + ' fragments'] = time.process_time() - started\n"
        "print(json.dumps(seconds))\n"
    )
    plain = {name: replace(a, expected=None, _judge=None) for name, a in assignments.items()}
    done = subprocess.run([sys.executable, "-c", measure], input=pickle.dumps(plain), capture_output=True, check=True)
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def client_cpu(submitted: Path, out: Path, workers: int, limits: Limits, base: Path) -> dict:
    """The client process's CPU seconds per wall second while a real scheduler and ``workers`` workers grade."""
    with real_cluster(workers, base, "dask") as address:
        window = {}

        def measured(module, name, prefix):
            original = getattr(module, name)

            def timed(*args, **kwargs):
                before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    after = resource.getrusage(resource.RUSAGE_SELF)
                    window[prefix + "ended"] = time.perf_counter()
                    window[prefix + "wall"] = window[prefix + "ended"] - started
                    window[prefix + "cpu"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)

            setattr(module, name, timed)
            return original

        # The whole of grade_on_dask (shipping the model cache and the assignments, checking the workers, then
        # the jobs), and its jobs alone (cluster._grade: from the first job sent to the last answer merged).
        whole, jobs = measured(pipeline, "grade_on_dask", ""), measured(cluster, "_grade", "jobs ")
        check = measured(cluster, "_check_every_worker", "check ")
        # The merging thread's own CPU: at this class's few results a second it merges them in small batches; the
        # model puts in their place the batches that gather at its rate (``extrapolate``).
        merges, merge_original = [], pipeline._MergeWhileGrading._merge

        def merge_timed(self, batch):
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return merge_original(self, batch)
            finally:
                merges.append((started, len(batch), time.thread_time() - cpu))

        pipeline._MergeWhileGrading._merge = merge_timed
        # What the merging thread's CPU goes to: opening the gradebook (once), merging, writing the pages.
        parts = {
            "open": Timer(merge.Merger, "__init__"),
            "merge": Timer(merge.Merger, "merge"),
            "pages": Timer(pages, "write_pages"),
        }
        try:
            total, results = grade(submitted, out, workers, limits, address)
            # The merges within the jobs' window (the last ones come after it, when the grading finishes).
            inside = [(size, cpu) for started, size, cpu in merges if started <= window["jobs ended"]]
            window["merge cpu"] = sum(cpu for _, cpu in inside)
            window["merge batches"] = [size for size, _ in inside]
            merged = max(1, sum(size for _, size, _ in merges))
            window["merge parts"] = {name: timer.seconds for name, timer in parts.items()}
            window["merge parts"]["merged"] = merged
            for timer in parts.values():
                timer.restore()
            first_check = window["check wall"]
            # The same class again on the same workers (a re-grade): their fork servers and judge processes stay.
            window["again total"], _ = grade(submitted, out.with_name(out.name + "-again"), workers, limits, address)
            window["again check"], window["check wall"] = window["check wall"], first_check
        finally:
            pipeline.grade_on_dask, cluster._grade, cluster._check_every_worker = whole, jobs, check
            pipeline._MergeWhileGrading._merge = merge_original
        window["total"], window["notebooks"] = total, sum(1 for r in results if r.worker)
        return window


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--students", type=int, default=30, help="generated students, each submitting every notebook")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster workers for the stage figures")
    parser.add_argument("--demos", action="store_true", help="run the plot cells too (int8lab grade's default)")
    parser.add_argument("--assignments", type=int, default=5, help="notebooks per student in the extrapolation")
    parser.add_argument("--cores", type=int, default=8, help="cores per machine in the extrapolation")
    parser.add_argument("--real-workers", type=int, default=4, help="dask workers for the client-CPU figure (0: skip)")
    parser.add_argument("--merge-submissions", type=int, default=100)
    args = parser.parse_args()
    trained_model("digits", progress=False)
    trained_model("digits", bias=True, progress=False)
    limits = Limits(run_demos=args.demos)
    import distributed  # noqa: F401 (imported before anything is timed)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        submitted = scratch / "class"
        make_class(submitted, args.students)
        figures, results, assignments = stages(submitted, scratch / "dask", args.workers, limits)
        print(
            f"{args.students} submissions on a Dask LocalCluster of {args.workers} workers, demos "
            f"{'run' if args.demos else 'skipped'}: {figures['wall']:.1f} s; per notebook ({figures['notebooks']}):"
        )
        names = ("worker run", "worker judge+page", "worker run, steady", "worker judge+page, steady")
        names += ("worker judge CPU, steady", "worker page CPU, steady")
        for name in (*names, "read", "accept", "merge", "reports", "write pages"):
            side = "worker" if name.startswith("worker") else "client"
            print(f"  {side:<6} {name.removeprefix('worker '):<24} {figures[name] * 1000:8.1f} ms")
        print(
            f"  check of the workers before any job, once per grading, on machines that never checked these "
            f"assignments ({selfcheck.RECHECK_ENV}=1): {figures['check the workers']:.1f} s"
        )
        print(
            f"  worker warm-up, once per worker process (fork server, first judge of each assignment): "
            f"{figures['worker warm-up']:.1f} s"
        )
        ways = page_ways(scratch / "dask", results, assignments)
        print("feedback pages, per page:")
        print(f"  rendered from the verdicts (pages.py, one warm process):      {ways['rendered'] * 1000:7.1f} ms")
        print(
            f"  nbgrader generate_feedback per student, {os.cpu_count()} at once: wall "
            f"{ways['nbgrader wall'] * 1000:7.1f} ms, CPU {ways['nbgrader cpu'] * 1000:7.1f} ms"
        )
        merging = merge_ways(scratch / "dask", scratch, results, assignments, args.merge_submissions)
        print(f"merge of {args.merge_submissions} submissions, per submission:")
        for name in ("a transaction each", "one per batch"):
            print(f"  {name:<20} {merging[name] * 1000:7.1f} ms (CPU {merging[name + ' cpu'] * 1000:.1f} ms)")
        real = None
        if args.real_workers:
            real = client_cpu(submitted, scratch / "real", args.real_workers, limits, scratch)
            print(
                f"real dask scheduler, {args.real_workers} workers, {real['notebooks']} notebooks: grading "
                f"{real['wall']:.1f} s, the client's CPU {real['cpu']:.2f} s = "
                f"{real['cpu'] / real['wall']:.3f} of a core (total {real['total']:.1f} s); of which the jobs "
                f"(first sent to last merged) {real['jobs wall']:.1f} s, the client's CPU {real['jobs cpu']:.2f} s "
                f"= {real['jobs cpu'] / real['jobs wall']:.3f} of a core, "
                f"{real['jobs cpu'] / max(1, real['notebooks']) * 1000:.1f} ms a notebook; the check of the workers "
                f"{real['check wall']:.1f} s. The same class again on the same workers: {real['again total']:.1f} s, "
                f"of which the check {real['again check']:.1f} s"
            )
            real["fresh check"] = fresh_check(submitted, scratch / "fresh", args.workers, limits, scratch, True)
            real["never checked"] = fresh_check(submitted, scratch / "never", args.workers, limits, scratch, False)
            real["shared"] = machine_shared_cpu(assignments)
            print(
                f"the check of {args.workers} fresh workers started with the preload (one a core): "
                f"{real['never checked']:.1f} s on a machine that never checked these assignments (the workers "
                f"share its self-checks out), {real['fresh check']:.1f} s where its self-checks are remembered; "
                f"the CPU of what a machine shares out: "
                + ", ".join(f"{name[:2]}{name[name.index(' ') :]} {cpu:.2f} s" for name, cpu in real["shared"].items())
            )
    extrapolate(args, figures, merging, ways, real)


def machine_check(real: dict, cores: int) -> float:
    """Seconds of the check of a machine's fresh workers (one a core) that never checked these assignments: what
    each worker does as where the self-checks are remembered (measured: its smoke kernel, its judge reading them,
    Dask's round trips), then the machine's self-checks and release fragments, which its judge processes share
    out (``selfcheck.checked_references``, ``fragments.share``): their CPU spread over its cores, and the longest
    one once more (the last one's imbalance: the others may wait for it). The second part is not overlapped with
    the first, though it runs beside the smoke kernels."""
    spread = sum(real["shared"].values()) / cores
    return real["fresh check"] + spread + max(real["shared"].values())


def extrapolate(args, figures, merging, ways, real=None):
    """1,000 students x ``--assignments`` notebooks on N machines of ``--cores``. On the workers, each notebook
    costs its run, its judge and its page (measured, steady: a worker's first notebook of each assignment left
    out), and each worker process pays its warm-up once (counted in full, the runs alone do not include it), after
    the check of every worker that starts each grading (its judge processes' start and self-check, its fork
    server and check kernels; counted too, as measured here, all workers at once). The client, one process,
    reads each submitted file, accepts its answer, merges it and writes its page while the runs go on. Its
    merging thread lets results gather for G = pipeline.GATHER_SECONDS, merges them as one transaction and
    gathers again: with results coming at r a second, a transaction's fixed cost F and c per submission, its
    batches settle at k = r (G + F) / (1 - r c) (at most merge.MERGE_BATCH; all of them when r c >= 1, the
    client then being the limit), and a result costs the client c + F / k. After the last run come the last
    batch's merge (F + k c, without waiting) and the reports."""
    notebooks = 1000 * args.assignments
    run = figures["worker run, steady"]
    worker_each = run + figures["worker judge+page, steady"]
    warm_up = figures["worker warm-up"]  # each worker process once, all of them at the same time
    # Once per grading, before any job: the check of fresh workers (started with the preload before the grading,
    # as a cluster's are) on machines that never checked these assignments; without a real scheduler, the check of
    # a LocalCluster that the grading starts, each worker checking alone.
    check = figures["check the workers"]
    if real:
        check = machine_check(real, args.cores)
    merge_each = merging["one per batch cpu"]  # c
    fixed = max(0.0, merging["a transaction each cpu"] - merge_each)  # F: a commit and its fsync
    if real and real["merge batches"]:  # F as the merging thread paid it under the real scheduler, if more
        batches = real["merge batches"]
        fixed = max(fixed, (real["merge cpu"] - merge_each * sum(batches)) / len(batches))
    # The client's work on a result besides its merge: read, accept, pages; or, measured under a real scheduler,
    # everything its process did while the jobs ran (Dask's threads too) but the merging thread's batches, whose
    # size depends on the rate.
    other_each, once = figures["read"] + figures["accept"] + figures["write pages"], 0.0
    if real:  # the merging thread writes the pages too; it opens the gradebook once
        parts = real["merge parts"]
        pages_each = parts["pages"] / parts["merged"]
        other_each = max(other_each, (real["jobs cpu"] - real["merge cpu"]) / max(1, real["notebooks"]) + pages_each)
        once = parts["open"]

    def merge_batch(rate: float) -> float:
        if rate * merge_each >= 1:
            return merge.MERGE_BATCH
        return min(merge.MERGE_BATCH, max(1.0, rate * (pipeline.GATHER_SECONDS + fixed) / (1 - rate * merge_each)))

    def client_time(rate: float) -> float:
        return once + notebooks * (other_each + merge_each + fixed / merge_batch(rate))

    print(f"\n1,000 students x {args.assignments} notebooks = {notebooks}; machines of {args.cores} cores;")
    print(
        f"per notebook: workers {worker_each:.2f} s (run {run:.2f} s, steady: a worker's first notebook of each "
        f"assignment left out), client {other_each * 1000:.1f} ms + its merge ({merge_each * 1000:.2f} ms + "
        f"{fixed * 1000:.1f} ms a transaction); each worker's warm-up {warm_up:.1f} s once, after the check of the "
        f"workers, {check:.1f} s"
        + (
            f" (fresh preloaded workers of machines that never checked these assignments: {real['fresh check']:.1f} s "
            f"as where the self-checks are remembered, plus the machine's self-checks and release fragments, "
            f"{sum(real['shared'].values()):.1f} s of CPU spread over its {args.cores} workers, and the longest "
            f"one, {max(real['shared'].values()):.2f} s, once more)"
            if real
            else ""
        )
    )
    if real:
        batches = real["merge batches"]
        parts = real["merge parts"]
        print(
            f"  (under the real scheduler, {len(batches)} merges of {sum(batches) / max(1, len(batches)):.1f} results "
            f"on average, the merging thread's CPU {real['merge cpu'] / max(1, sum(batches)) * 1000:.1f} ms a result: "
            f"opening the gradebook {parts['open']:.2f} s once, merging "
            f"{parts['merge'] / parts['merged'] * 1000:.1f} ms and writing the page "
            f"{parts['pages'] / parts['merged'] * 1000:.1f} ms a result)"
        )
    print("  machines   runs alone   workers' work   client in flight   after the runs    total   /runs   /work")
    worst, worst_work, worst_unchecked = 0.0, 0.0, 0.0

    def total_time(work: float) -> tuple[float, float, float]:
        client = client_time(notebooks / work)
        if client > work:  # the client is the limit: results come at its pace
            client = client_time(notebooks / client)
        batch = merge_batch(notebooks / max(work, client))
        after = fixed + batch * merge_each + notebooks * merging["reports"]
        return max(work, client) + after, client, after

    for machines in (1, 2, 4, 8, 16, 32, 64):
        alone = notebooks * run / (machines * args.cores)
        work = check + notebooks * worker_each / (machines * args.cores) + warm_up
        total, client, after = total_time(work)
        if machines <= 16:
            worst, worst_work = max(worst, total / alone), max(worst_work, total / work)
            worst_unchecked = max(worst_unchecked, (total - check) / alone)
        print(
            f"  {machines:8d}   {alone:8.0f} s   {work:11.0f} s   {client:14.0f} s   {after:12.1f} s"
            f"   {total:6.0f} s   {total / alone:5.2f}   {total / work:5.2f}"
        )
    print(f"  up to 16 machines: total <= {worst:.2f}x the sandboxed runs alone, <= {worst_work:.2f}x the workers'")
    print(
        f"  own work (run + judge + page); the target is 1.25x. Without the check of the workers (as this model "
        f"counted until 2026-12-01): <= {worst_unchecked:.2f}x"
    )

    def ratios(fixed_seconds: float) -> str:
        shown = []
        for machines in (1, 2, 4, 8, 16):
            alone = notebooks * run / (machines * args.cores)
            total, _, _ = total_time(fixed_seconds + notebooks * worker_each / (machines * args.cores))
            shown.append(f"{machines}: {total / alone:.2f}x")
        return ", ".join(shown)

    if real:
        measured = real["never checked"]
        print(
            f"  the same with the check as measured here, {args.workers} workers sharing the self-checks out on "
            f"{args.workers} cores ({measured:.1f} s; the check's model gives "
            f"{machine_check(real, args.workers):.1f} s for {args.workers} cores):"
        )
        print(f"  total / runs alone on 1, 2, 4, 8, 16 machines = {ratios(measured + warm_up)}")
        started = figures["check the workers"]
        print(
            f"  the same with workers that the grading starts (a LocalCluster: their preload runs during the check, "
            f"each checks every assignment alone, {selfcheck.RECHECK_ENV}=1; check {started:.1f} s):"
        )
        print(f"  total / runs alone on 1, 2, 4, 8, 16 machines = {ratios(started + warm_up)}")
    if real and "again check" in real:
        # Fresh workers (started with the preload) on machines that checked these assignments before: their judges
        # read the remembered self-check (selfcheck.checked_reference). Measured with 4 workers on 2 cores.
        fresh = real.get("fresh check", real["check wall"])
        print(
            f"  a grading on fresh workers started with the preload before it (their preload done: fork server and "
            f"judge process started) on machines that checked these assignments before, the same hostname, code, "
            f"packages and cache (check {fresh:.1f} s, a worker a core; {real['check wall']:.1f} s with 4 workers on "
            f"2 cores; warm-up {warm_up:.1f} s):"
        )
        print(f"  total / runs alone on 1, 2, 4, 8, 16 machines = {ratios(fresh + warm_up)}")
        # Workers that graded this course before keep their fork servers and judge processes.
        check_again = real["again check"]
        print(f"  a re-grade on workers that graded this course before (check {check_again:.1f} s, no warm-up):")
        print(f"  total / runs alone on 1, 2, 4, 8, 16 machines = {ratios(check_again)}")
    client_pages = notebooks * ways["nbgrader cpu"]
    print(
        f"  the other way to the pages, nbgrader on the client: {client_pages:.0f} s of its CPU for {notebooks} pages "
        f"({client_pages / 8:.0f} s on 8 cores), against {notebooks * ways['rendered']:.0f} s spread over the workers"
    )


if __name__ == "__main__":
    main()
