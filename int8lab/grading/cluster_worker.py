"""Grading on a Dask cluster, the worker's side: what a worker must match, the model cache and the assignments
shipped to it, its start-up check, and the task that runs, judges and renders one notebook (``grade_on_worker``).

Everything a task receives and returns is bytes and plain data; the client (``cluster.py``) only merges.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import asdict, replace
from functools import cache
from pathlib import Path

from .judging import GraderFault, JudgePool, JudgeProcess, JudgeProcessDied, SelfCheckFailed
from .judging import answer as plain_answer
from .model import Limits
from .workers import JOB_GRACE_SECONDS, prepare, run_probe


class WorkerMismatch(RuntimeError):
    """A worker that cannot grade like the client (another int8lab, no torch, no cache, no sandbox)."""


def expected_worker() -> dict:
    """What every worker must match: ``{"version": str, "code": sha256 of int8lab's .py files, "dataset": str}``."""
    from importlib.metadata import version

    from ..data import dataset_name

    return {"version": version("int8lab"), "code": code_digest(), "dataset": dataset_name()}


@cache
def code_digest() -> str:
    """sha256 over int8lab's Python files: two machines with the same version but other code differ here."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_files(dataset: str) -> dict[str, bytes]:
    """``{path relative to the cache: bytes}``: the three checkpoints the kernels read (notebook 7's NetBN too: a
    worker would otherwise train its own in its judge's self-check, seconds, and its kernels would run another
    network than the client's), and the digits data."""
    from ..data import DIGITS_CACHE_VERSION, cache_dir
    from ..models import Net, NetBN, NetWithBias
    from ..training import DEFAULT_SETTINGS, checkpoint_path

    models = (Net, NetWithBias, NetBN)
    paths = [checkpoint_path(dataset, model, DEFAULT_SETTINGS[dataset]) for model in models]
    if dataset == "digits":
        paths.append(cache_dir() / "data" / f"digits-32x32-v{DIGITS_CACHE_VERSION}.npz")
    return {str(p.relative_to(cache_dir())): p.read_bytes() for p in paths if p.is_file()}


try:
    from distributed import WorkerPlugin
except ImportError:  # the local pool needs no Dask; --dask says what to install
    WorkerPlugin = object


def cache_digest(files: dict[str, bytes]) -> str:
    """sha256 of ``cache_files()``: what a judge process's checkpoints and data are (``ShipAssignments``)."""
    return _sha256(b"".join(bytes.fromhex(_sha256(files[name])) for name in sorted(files)))


class ShipModelCache(WorkerPlugin):
    """Writes the client's model cache into each worker's own cache (now, and on workers that join later).

    ``wanted``: ``expected_worker()``; ``files``: ``cache_files()``.
    """

    def __init__(self, wanted: dict, files: dict[str, bytes]):
        self.wanted, self.files = wanted, files

    def setup(self, worker) -> None:
        """Never raises: a worker that cannot hold the cache is named by ``check_worker`` with its reason."""
        from ..data import cache_dir

        root = cache_dir()
        try:
            for relative, data in self.files.items():
                path = root / relative
                if path.is_file() and _sha256(path.read_bytes()) == _sha256(data):
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(f"{path.name}.{os.getpid()}.part")
                partial.write_bytes(data)
                partial.replace(path)  # atomic: a kernel never reads half a checkpoint
        except OSError as exc:
            _shipped_digests.clear()
            _shipped_digests[SHIPPING_FAILED] = f"cannot write the model cache into {root} ({exc.strerror})"
            return
        _shipped_digests.update({relative: _sha256(data) for relative, data in self.files.items()})


class ShipAssignments(WorkerPlugin):
    """Gives each worker (now, and those that join later) the assignments its judge processes judge against.

    ``assignments``: ``{name: course.Assignment}``; each worker's judge processes run their own self-check.
    """

    def __init__(self, assignments: dict, dataset: str | None = None, model_cache: str = ""):
        self.assignments = {name: replace(a, expected=None, _judge=None) for name, a in assignments.items()}
        self.dataset, self.model_cache = dataset, model_cache

    def setup(self, worker) -> None:
        global _judges, _assignments
        # What a judge process judges against: the assignments, and the dataset and checkpoints its self-check and
        # hidden tests load (a process keeps the ones it loaded first).
        digest = assignments_digest(self.assignments) + f"/{self.dataset}/{self.model_cache}"
        if _judges is None or _judges.digest != digest:
            if _judges is not None:
                _judges.close()
            # Its first judge process loads the assignments now (the one the preload started, or a new one): its
            # self-check runs while check_worker checks the rest (the cache, the fork server and its kernel).
            first = take_spare_judge() or JudgeProcess(self.dataset)
            _judges = JudgePool(self.assignments, self.dataset, first=first)
            _judges.digest = digest
        # else: the same assignments, dataset and model cache as the last grading on this worker: its judge
        # processes, self-checked on exactly these and warm (imports, pages), judge this one too; they never loaded
        # student code.
        _assignments = self.assignments  # the rebuilds' (prepare): releases and test cells, no reference run here
        _worker_ready.cache_clear()


def assignments_digest(assignments: dict) -> str:
    """sha256 of what a judge process judges against: each assignment's name, notebook, points, source, release."""
    digest = hashlib.sha256()
    for name in sorted(assignments):
        a = assignments[name]
        fields = [a.name, a.notebook, a.cells, a.source, a.release]
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode() + b"\0")
    return digest.hexdigest()


#: This worker process's judge processes and assignments (``ShipAssignments``), None until the assignments came.
_judges: JudgePool | None = None
_assignments: dict | None = None
#: A judge process started before any grading (``preload.py``), importing and warming up, no assignments yet.
_spare_judge: list[JudgeProcess] = []
#: Set once assignments came (``take_spare_judge``): a spare started after that would idle until the next grading,
#: holding its memory (torch, nbgrader: some 500 MB a worker).
_assignments_came = threading.Event()
_spare_lock = threading.Lock()


def start_spare_judge() -> None:
    """Start a judge process for this worker's first grading, which loads its assignments into it; none if they
    came first (the preload's thread was late): the grading then started its own."""
    with _spare_lock:
        if not _spare_judge and not _assignments_came.is_set():
            _spare_judge.append(JudgeProcess())


def take_spare_judge() -> JudgeProcess | None:
    """The spare judge process, if it is still alive (then no longer spare), else None."""
    with _spare_lock:
        _assignments_came.set()
        spare = _spare_judge.pop() if _spare_judge else None
    return spare if spare is not None and spare.alive() else None


SHIPPING_FAILED = ""  # the key under which _shipped_digests holds why shipping failed
#: What ShipModelCache wrote in this worker process: ``check_worker`` compares the cache against it.
_shipped_digests: dict[str, str] = {}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_worker(wanted: dict, start_kernel: bool = False) -> str:
    """Empty if this worker can grade like the client, else what differs. ``wanted``: ``expected_worker()``;
    ``start_kernel``: also run a smoke test in a sandboxed kernel (what the local path checks once)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        mine = version("int8lab")
    except PackageNotFoundError:
        return "int8lab is not installed in this worker's Python"
    if mine != wanted["version"] or code_digest() != wanted["code"]:
        here, there = f"{mine} (code {code_digest()[:12]})", f"{wanted['version']} (code {wanted['code'][:12]})"
        return f"int8lab {here} on this worker, {there} on the client: install the client's int8lab here"
    try:
        import nbclient  # noqa: F401 (the run's)
        import torch  # noqa: F401 (the kernels')
    except ImportError as exc:
        return f"cannot import {exc.name}: install int8lab's requirements on the worker"
    problem = _cache_problem(wanted["dataset"])
    if not problem and start_kernel:  # while the judge process runs its self-check (ShipAssignments started it)
        problem = _kernel_problem(wanted["dataset"])
    return problem or _judge_problem()


def _judge_problem() -> str:
    """Empty if this worker's judge process passes the reference solution of every assignment, else why not."""
    if _judges is None:
        return "the assignments were not shipped to this worker (the int8lab-assignments plugin did not run)"
    try:
        _judges.call("load", {})  # a fresh judge process self-checks every assignment before anything else
    except SelfCheckFailed as exc:
        return str(exc)
    except (GraderFault, JudgeProcessDied) as exc:
        return f"the judge cannot start on this worker ({exc})"
    return ""


def _cache_problem(dataset: str) -> str:
    from ..data import cache_dir

    if not _shipped_digests:
        return "the model cache was not shipped to this worker (the int8lab-cache plugin did not run)"
    if SHIPPING_FAILED in _shipped_digests:
        return _shipped_digests[SHIPPING_FAILED]
    for relative, digest in _shipped_digests.items():
        path = cache_dir() / relative
        if not path.is_file() or _sha256(path.read_bytes()) != digest:
            return f"the model cache file {relative} is missing or differs in this worker's cache"
    if dataset == "cifar10" and not (cache_dir() / "cifar10").is_dir():
        return "CIFAR-10 is not in this worker's cache (its cifar10/ folder): copy it there"
    return ""


def _kernel_problem(dataset: str) -> str:
    """Empty if a sandboxed kernel runs the smoke test here. The worker's fork server starts now (its warm
    kernels, ``_warm_kernels``), so that the smoke test runs in a kernel forked like every job's, and no job pays
    the server's start; without a server, the kernel starts from nothing, as each job's will."""
    import nbformat

    from ..data import DATASET_ENV
    from .pipeline import KERNEL_SMOKE_TEST

    os.environ[DATASET_ENV] = dataset  # the server's kernels inherit the client's choice
    warm = _warm_kernels()
    smoke = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(KERNEL_SMOKE_TEST)])
    scratch = Path(tempfile.mkdtemp(prefix="int8lab-check-"))
    try:
        limits = asdict(Limits(notebook_timeout=120))
        done = run_probe(json.dumps(smoke).encode(), limits, scratch, _cgroups(), warm)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if done["status"] != "ok" or b"kernel ready" not in done["executed"]:
        return (
            f"a sandboxed kernel cannot run here ({done['status']}: {done['reason']}); stderr: {done['stderr'][-500:]}"
        )
    return ""


_fork_server_lock = threading.Lock()
#: This worker process's fork server: ``{"address": forkserver.Address or None}`` once its first job asked.
_fork_server: dict = {}


def _warm_kernels():
    """The address of this worker process's fork server (``forkserver.py``), started and checked by its first job,
    as ``workers.grade_all`` does for a local grading; None if it cannot serve: kernels then start from nothing."""
    with _fork_server_lock:  # a worker may run several tasks at once, in threads
        if "address" not in _fork_server:
            import atexit

            from . import run
            from .forkserver import ForkServer
            from .workers import _warm_kernels as checked

            try:
                forks = _in_a_thread_that_stays(lambda: ForkServer(run._kernel_environment(Path("/nonexistent"))))
            except (OSError, RuntimeError):  # no warm kernels, never a failed job: they start from nothing
                _fork_server["address"] = None
                return None
            scratch = Path(tempfile.mkdtemp(prefix="int8lab-warm-"))
            try:
                _fork_server["address"] = checked(forks, scratch, Limits(), _cgroups())
            except Exception:  # the grader's warm kernels failed: kernels start from nothing, no job fails
                _fork_server["address"] = None
            finally:
                # What the check kernel's sandbox got here, every kernel of this worker must get (as pipeline.py
                # requires of a local grading's kernels what its check kernel got).
                from .pipeline import required_layers

                _fork_server["required"] = required_layers(run._last_json_line(scratch / "sandbox.json"))
                shutil.rmtree(scratch, ignore_errors=True)
            if _fork_server["address"] is None:
                forks.close()  # unused, it must not stay to serve whoever reaches its socket
            else:
                atexit.register(forks.close)
        return _fork_server["address"]


def _in_a_thread_that_stays(start):
    """``start()`` called in a daemon thread that then waits forever. The fork server dies with the thread that
    started it (PR_SET_PDEATHSIG follows the thread, not the process), and Dask may retire a task's thread."""
    started, ready = [], threading.Event()

    def keeper():
        try:
            started.append(start())
        finally:
            ready.set()
        threading.Event().wait()

    threading.Thread(target=keeper, name="int8lab-fork-server", daemon=True).start()
    ready.wait()
    if not started:
        raise RuntimeError("the fork server could not be started")
    return started[0]


@cache
def _worker_ready(expected_json: str) -> str:
    return check_worker(json.loads(expected_json))


@cache
def _cgroups():
    """This worker process's own pids cgroups (never the client's), or None; closed when it exits."""
    import atexit

    from .cgroups import PidsCgroups

    cgroups = PidsCgroups.available()
    if cgroups:
        atexit.register(cgroups.close)
    return cgroups


def grade_on_worker(submitted: bytes, limits: dict, wanted: dict, job, page: bool) -> dict:
    """The Dask task: the rebuild (``workers.prepare``), ``run_probe`` in a scratch folder of this worker, then the
    judge (``judging.judge_run``) in one of this worker's judge processes; its answer plus ``worker``, ``seconds``
    and ``judge_seconds``.

    ``submitted``: the submitted file's bytes (``intake.read_regular_file``'s: the client only reads it);
    ``limits``: ``Limits`` as a dict; ``wanted``: ``expected_worker()``; ``job``: the ``model.Job``;
    ``page``: also render the feedback page (pages.py).
    """
    from distributed import get_worker

    from ..data import DATASET_ENV

    problem = _worker_ready(json.dumps(wanted, sort_keys=True))
    if problem:
        raise WorkerMismatch(problem)
    started = time.perf_counter()
    prepared = prepare(job, _assignments[job.assignment], Limits(**limits), submitted)
    if not isinstance(prepared, tuple):  # no notebook at all: said as the local pool says it, nothing ran
        return {**plain_answer(prepared), "worker": "", "seconds": time.perf_counter() - started, "judge_seconds": 0.0}
    probe, notes = prepared
    os.environ[DATASET_ENV] = wanted["dataset"]  # the kernels inherit the client's choice
    warm = _warm_kernels()  # its start-up (the first task only) is no part of this job's time limit
    if not limits.get("required_layers"):
        limits = {**limits, "required_layers": list(_fork_server.get("required", ()))}
    # run.execute stops a notebook at its time limit; if the run or its judging hangs past it, this worker dies
    # and the scheduler gives the job to another one (then KilledWorker): the client never waits forever.
    # run_probe may run the notebook up to three times (a lost fork server, then a refused kernel): each its own time.
    deadline = 3 * Limits(**limits).notebook_timeout + JOB_GRACE_SECONDS
    watchdog = threading.Timer(deadline, os.kill, (os.getpid(), signal.SIGKILL))
    watchdog.daemon = True
    scratch = Path(tempfile.mkdtemp(prefix="int8lab-job-"))
    try:
        watchdog.start()
        # The student's code runs only in the kernel run_probe starts: a separate process, sandboxed (namespaces,
        # Landlock, seccomp, limits), that shares no memory with this one. What comes back here is text: the
        # executed notebook's JSON and the records' JSON lines, read by json.loads, never unpickled or imported.
        # So this worker process, and the judge process it feeds, never load student code.
        ran = run_probe(probe, limits, scratch, _cgroups(), warm)
        shutil.rmtree(scratch, ignore_errors=True)
        judging = time.perf_counter()
        try:
            answer = _judges.call("judge", job, job.assignment, ran, notes, page)
        except SelfCheckFailed as exc:  # a judge process that replaced a dead one failed the self-check
            raise WorkerMismatch(str(exc)) from None
        except GraderFault as exc:  # the judge raised (JudgeFault...): the same on any worker, so not retried
            answer = {"fault": str(exc)}
    finally:
        watchdog.cancel()
        shutil.rmtree(scratch, ignore_errors=True)
    worker = get_worker()
    answer["worker"] = worker.address if str(worker.name) == worker.address else f"{worker.name} ({worker.address})"
    answer["seconds"] = time.perf_counter() - started
    answer["judge_seconds"] = time.perf_counter() - judging
    return answer
