"""The local pool against Dask, and what 1,000 students on N machines would take; prints figures only.

    .venv/bin/python benchmarks/bench_dask.py [--students 100] [--overhead-students 20] [--workers 2]
                                              [--demos] [--assignments 4] [--cores 8]

1. The same generated class graded by the local pool (``--workers N``) and by a Dask LocalCluster
   (``--dask local``), in this process, both after the same imports: the times, for ``--students``
   and for ``--overhead-students`` (Dask's overhead there decides whether local grading uses Dask).
2. The Dask run's costs measured one by one: the worker's time per notebook, the client's per
   notebook (prepare = rebuild; finish = judge and sanitize; merge; reports; feedback), and the
   scheduler's per task (1,000 tasks carrying a probe notebook's bytes there and back).
3. Merge and reports for 1,000 students timed on copies of the graded results.
4. The extrapolation to 1,000 students x ``--assignments`` notebooks on N machines of ``--cores``.
"""

import argparse
import copy
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_grading import make_class  # noqa: E402
from sample_submissions import ASSIGNMENTS  # noqa: E402

from int8lab import trained_model  # noqa: E402
from int8lab.grading import cluster, merge, pipeline, report  # noqa: E402
from int8lab.grading.model import Limits  # noqa: E402


class Timer:
    """Wraps ``module.name`` so that its calls' total time and count are kept."""

    def __init__(self, module, name):
        self.module, self.name, self.original = module, name, getattr(module, name)
        self.seconds, self.calls, self.last_args = 0.0, 0, ()
        setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        started, self.last_args = time.perf_counter(), args
        try:
            return self.original(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1

    def restore(self):
        setattr(self.module, self.name, self.original)


def grade(submitted: Path, out: Path, workers: int, limits: Limits, dask: str | None):
    started = time.perf_counter()
    graded = pipeline.grade(
        submitted, out, workers=workers, limits=limits, solutions=ROOT / "solutions", progress=False, dask=dask
    )
    return time.perf_counter() - started, graded.results


def scheduler_overhead(workers: int, probe_bytes: int, executed_bytes: int, tasks: int = 1000) -> float:
    """Seconds of the cluster per task beyond the work: no-op tasks that carry a notebook's bytes both ways."""
    from distributed import wait

    client, local = cluster.connect("local", workers)
    try:
        payload = b"x" * probe_bytes
        client.gather(client.map(_echo, [payload] * 4, [executed_bytes] * 4, pure=False))  # warm
        started = time.perf_counter()
        futures = [client.submit(_echo, payload, executed_bytes, pure=False) for _ in range(tasks)]
        wait(futures)
        client.gather(futures)
        return (time.perf_counter() - started) / tasks
    finally:
        client.close()
        local.close()


def _echo(payload: bytes, size: int) -> bytes:
    return b"y" * size


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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--students", type=int, default=100)
    parser.add_argument("--overhead-students", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--demos", action="store_true", help="run the plot cells too (int8lab grade's default)")
    parser.add_argument("--assignments", type=int, default=4, help="notebooks per student in the extrapolation")
    parser.add_argument("--cores", type=int, default=8, help="cores per machine in the extrapolation")
    parser.add_argument(
        "--client-cores", type=int, default=8, help="the client's cores (--judges) in the extrapolation"
    )
    args = parser.parse_args()
    trained_model("digits", progress=False)
    trained_model("digits", bias=True, progress=False)
    limits = Limits(run_demos=args.demos)
    import distributed  # noqa: F401 (imported before either run is timed)

    times = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for count in sorted({args.overhead_students, args.students}):
            submitted = scratch / f"class{count}"
            make_class(submitted, count)
            times[(count, "local")], _ = grade(submitted, scratch / f"local{count}", args.workers, limits, None)
            timers = {
                "prepare": Timer(cluster, "prepare"),
                "finish": Timer(cluster, "finish"),
                "merge": Timer(pipeline.merge, "merge"),
                "reports": Timer(pipeline.report, "write_reports"),
                "feedback": Timer(pipeline, "_feedback"),
            }
            out = scratch / f"dask{count}"
            times[(count, "dask")], results = grade(submitted, out, args.workers, limits, "local")
            for timer in timers.values():
                timer.restore()
            print(f"{count} submissions, {args.workers} workers, demos {'run' if args.demos else 'skipped'}:")
            local, dask = times[(count, "local")], times[(count, "dask")]
            print(f"  local pool          {local:7.1f} s  ({local / count:.2f} s per notebook)")
            print(f"  Dask LocalCluster   {dask:7.1f} s  ({dask / count:.2f} s per notebook)")
            print(f"  Dask's overhead     {100 * (dask - local) / local:+6.1f} %", flush=True)
        ran = [r for r in results if r.worker]
        per_notebook = sum(r.seconds for r in ran) / len(ran)
        client_side = {name: timer.seconds / max(1, len(results)) for name, timer in timers.items()}
        assignments = timers["merge"].last_args[2]  # as the pipeline built them (with their release)
        probe, _ = cluster.prepare(ran[0].job, assignments[ran[0].job.assignment], limits)
        executed = sum(len(str(r.graded)) for r in ran) // len(ran)
        per_task = scheduler_overhead(args.workers, len(probe), executed)

        big = scaled(results, 1000 // args.students or 1)
        course = scratch / "course1000"
        shutil.copytree(out, course, ignore=shutil.ignore_patterns("feedback", "autograded"))
        started = time.perf_counter()
        merge.merge(course, big, assignments)
        merge_1000 = time.perf_counter() - started
        started = time.perf_counter()
        report.write_reports(course, big, assignments)
        reports_1000 = time.perf_counter() - started

    print(f"\nmeasured on this machine ({args.workers} workers):")
    print(f"  worker time per notebook (sandboxed run):      {per_notebook:7.3f} s")
    print(f"  scheduler overhead per task (1,000 no-ops):    {per_task * 1000:7.2f} ms")
    for name, seconds in client_side.items():
        print(f"  client {name:<9} per notebook:               {seconds * 1000:7.1f} ms")
    each = merge_1000 / len(big) * 1000
    print(f"  merge of {len(big)} results (one gradebook):   {merge_1000:7.1f} s  ({each:.1f} ms each)")
    print(f"  reports of {len(big)} results:                 {reports_1000:7.2f} s")
    extrapolate(args, per_notebook, per_task, client_side, merge_1000 / len(big), reports_1000 / len(big))


def extrapolate(args, per_notebook, per_task, client_side, merge_each, reports_each):
    """1,000 students: runs spread over N machines while the client prepares each notebook (one process) and
    judges what comes back (``--client-cores`` processes), overlapping the runs; then merge, reports and
    feedback, one after the other, after the last run."""
    notebooks = 1000 * args.assignments
    client_per_notebook = client_side["prepare"] + per_task + client_side["finish"] / args.client_cores
    # Feedback runs one nbgrader process per assignment, at most one per core: as measured here (wall time
    # with min(assignments, cores here) processes), then spread over min(assignments, client cores).
    measured_processes = min(len(ASSIGNMENTS), os.cpu_count() or 1)
    feedback_each = client_side["feedback"] * measured_processes / min(args.assignments, args.client_cores)
    after = notebooks * (merge_each + reports_each + feedback_each)
    print(f"\n1,000 students x {args.assignments} notebooks = {notebooks}; machines of {args.cores} cores;")
    print(f"client of {args.client_cores} cores (--judges {args.client_cores}):")
    print("  machines   runs (parallel)   client in flight   after the runs   total")
    for machines in (1, 2, 4, 8, 16, 32, 64):
        runs = notebooks * per_notebook / (machines * args.cores)
        client = notebooks * client_per_notebook
        total = max(runs, client) + after
        limit = "client" if client >= runs else "workers"
        print(f"  {machines:8d}   {runs:12.0f} s   {client:13.0f} s   {after:12.0f} s   {total:6.0f} s  ({limit})")
    crossover = per_notebook / (args.cores * client_per_notebook)
    print(f"  the client's prepare + judge limit the runs beyond about {crossover:.1f} machines of {args.cores} cores;")
    print(f"  merge + reports + feedback add {after:.0f} s after the last run, whatever N")
    print(f"  (feedback {notebooks * feedback_each:.0f} s, merge {notebooks * merge_each:.0f} s of it)")


if __name__ == "__main__":
    main()
