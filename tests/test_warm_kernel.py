"""Warm kernels (forkserver.py): one submission's state never reaches the next, and every sandbox layer holds."""

import json
import os
from pathlib import Path

import nbformat
import pytest

from int8lab.grading import run
from int8lab.grading.forkserver import ForkServer
from int8lab.grading.model import Limits

#: A hostile submission: patches torch, numpy and int8lab, leaves globals, a module, an environment
#: variable and files behind, and seeds every generator with 0, as a later submission would want to find.
HOSTILE = """
import builtins, json, os, random, sys, tempfile
import numpy, torch, torch.nn.functional as F
import int8lab
torch.add = lambda *args, **kw: "patched"
F.linear = lambda *args, **kw: "patched"
torch.Tensor.__add__ = lambda self, other: "patched"
numpy.mean = lambda *args, **kw: "patched"
int8lab.trained_model = lambda *args, **kw: "patched"
int8lab.LEAK = builtins.LEAK = "hostile"
sys.modules["leak_module"] = type(sys)("leak_module")
os.environ["INT8LAB_LEAK"] = "hostile"
for folder in (os.environ["HOME"], tempfile.gettempdir()):
    open(os.path.join(folder, "leak.txt"), "w").write("hostile")
seeded = {}
for name, draw in [("torch", lambda: torch.rand(3).tolist()), ("numpy", lambda: numpy.random.rand(3).tolist()),
                   ("random", lambda: [random.random() for _ in range(3)])]:
    torch.manual_seed(0), numpy.random.seed(0), random.seed(0)
    seeded[name] = draw()
torch.manual_seed(0), numpy.random.seed(0), random.seed(0)
print(json.dumps({"patched": torch.add(1, 2), **seeded}))
"""
#: What a later submission observes; its first line tells a warm kernel (torch loaded already) from a fresh one.
OBSERVER = """
import sys
warm = "torch" in sys.modules
import builtins, json, os, random, tempfile
import numpy, torch, torch.nn.functional as F
import int8lab
def look(value):
    try:
        return str(value())
    except Exception as error:
        return f"raised {type(error).__name__}"
print(json.dumps({
    "warm": warm,
    "torch.add": look(lambda: torch.add(torch.ones(1), torch.ones(1)).tolist()),
    "F.linear": look(lambda: F.linear(torch.ones(1, 1), torch.ones(1, 1)).tolist()),
    "Tensor.__add__": look(lambda: (torch.ones(1) + torch.ones(1)).tolist()),
    "numpy.mean": look(lambda: numpy.mean([1.0, 3.0])),
    "int8lab.trained_model": int8lab.trained_model.__module__,
    "globals": [getattr(int8lab, "LEAK", None), getattr(builtins, "LEAK", None), "leak_module" in sys.modules],
    "environment": os.environ.get("INT8LAB_LEAK"),
    "files": [os.path.exists(os.path.join(f, "leak.txt")) for f in (os.environ["HOME"], tempfile.gettempdir())],
    "matplotlib folders": [__import__("matplotlib").get_configdir() == os.environ["MPLCONFIGDIR"],
                           __import__("matplotlib").get_cachedir() == os.environ["MPLCONFIGDIR"]],
    "hash": hash("int8lab"),
    "torch": torch.rand(3).tolist(),
    "numpy": numpy.random.rand(3).tolist(),
    "random": [random.random() for _ in range(3)],
}))
"""
CLEAN = {
    "torch.add": "[2.0]",
    "F.linear": "[[1.0]]",
    "Tensor.__add__": "[2.0]",
    "numpy.mean": "2.0",
    "int8lab.trained_model": "int8lab.training",
    "globals": [None, None, False],
    "environment": None,
    "files": [False, False],
    "matplotlib folders": [True, True],  # the kernel's own, not the fork server's
}
GENERATORS = ("torch", "numpy", "random")


@pytest.fixture(scope="module")
def server():
    forks = ForkServer(run._kernel_environment(Path("/nonexistent")))
    assert forks.ready(), forks.problem
    yield forks
    forks.close()


def _printed(code: str, job_dir: Path, server) -> tuple[dict, dict]:
    """What the one cell ``code`` printed as JSON in a sandboxed kernel (``server``'s, or fresh), and the
    sandbox's report."""
    if os.environ.get("_INT8LAB_TEST_SHARED_KERNEL"):  # only to see the test fail: one kernel for every run
        return _printed_in_a_shared_kernel(code, job_dir)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    done = run.execute(notebook, job_dir, Limits(), None, server)
    assert done.status.value == "ok", (done.reason, done.stderr)
    assert not server or (job_dir / run.KERNEL_PID_FILE).exists()  # the server's child ran it
    texts = [o.get("text", "") for o in done.executed.cells[0].outputs]
    assert texts, done.executed.cells[0].outputs
    return json.loads(texts[-1]), done.sandbox


_shared = {}


def _printed_in_a_shared_kernel(code: str, job_dir: Path) -> tuple[dict, dict]:
    """The broken design this test must catch: a warm kernel kept from one submission to the next."""
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    if "manager" not in _shared:
        home = job_dir.parent / "shared-home"
        home.mkdir()
        _shared["manager"] = KernelManager(kernel_name="python3")
        _shared["manager"].start_kernel(env={**os.environ, "HOME": str(home), "TMPDIR": str(home)}, cwd=str(home))
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    NotebookClient(notebook, km=_shared["manager"]).execute()
    return json.loads(notebook.cells[0].outputs[-1]["text"]), {}


def test_no_state_of_one_submission_reaches_the_next(tmp_path, server):
    """Patched torch, numpy and int8lab functions, globals, environment, files and seeded generators of a hostile
    submission are gone in the next kernel of the same server, and each kernel draws fresh random numbers."""
    hostile, _ = _printed(HOSTILE, tmp_path / "hostile", server)
    assert hostile["patched"] == "patched"  # its patches did take hold in its own kernel
    first, _ = _printed(OBSERVER, tmp_path / "first", server)
    second, _ = _printed(OBSERVER, tmp_path / "second", server)
    try:
        for observed in (first, second):
            assert observed["warm"]  # torch came from the server, not from this run's imports
            assert {name: observed[name] for name in CLEAN} == CLEAN
            for name in GENERATORS:  # not the state the hostile submission seeded
                assert observed[name] != hostile[name], name
        for name in GENERATORS:  # not one state every child inherits from the server
            assert first[name] != second[name], name
    finally:
        if "manager" in _shared:
            _shared.pop("manager").shutdown_kernel(now=True)


def test_a_warm_kernel_enters_every_layer_a_fresh_one_does(tmp_path, server):
    """The sandbox report of a forked kernel names the same layers as a kernel started from nothing."""
    warm, warm_sandbox = _printed(OBSERVER, tmp_path / "warm", server)
    fresh, fresh_sandbox = _printed(OBSERVER, tmp_path / "fresh", None)
    assert warm["warm"] and not fresh["warm"]
    assert warm_sandbox["enforced"] == fresh_sandbox["enforced"]
    assert warm_sandbox["missing"] == fresh_sandbox["missing"]
    assert {name: warm[name] for name in CLEAN} == {name: fresh[name] for name in CLEAN} == CLEAN
    assert warm["hash"] == fresh["hash"]  # one string hashing, whichever kernel grades


#: What a student's laptop runs: a Pool of two processes and a DataLoader with two worker processes. Both need
#: POSIX shared memory in /dev/shm (multiprocessing's locks are named semaphores; a worker hands each batch over
#: as a tensor in shared memory). Each error is printed, so that a failure names it.
WORKER_PROCESSES = """
import json, multiprocessing, torch
from torch.utils.data import DataLoader, TensorDataset
outcome = {}
try:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        outcome["pool"] = pool.map(abs, [-1, -2])
except Exception as error:
    outcome["pool"] = repr(error)
try:
    loader = DataLoader(TensorDataset(torch.arange(8.0)), batch_size=4, num_workers=2)
    outcome["loader"] = [batch.tolist() for (batch,) in loader]
except Exception as error:
    outcome["loader"] = repr(error)
print(json.dumps(outcome))
"""


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "warm"])
def test_a_pool_and_dataloader_workers_run_in_a_graded_kernel(tmp_path, server, warm):
    """Catches a kernel without a writable /dev/shm: a multiprocessing Pool and a DataLoader with num_workers=2,
    which work on a student's laptop, raised PermissionError 13 in grading, and the answer lost its points."""
    outcome, _ = _printed(WORKER_PROCESSES, tmp_path / "job", server if warm else None)
    assert outcome == {"pool": [1, 2], "loader": [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]}


def test_a_process_the_server_forked_gets_nothing_from_it(tmp_path, server):
    """Catches a server that serves its own descendants: a kernel whose PID namespace could not be made is the
    server's child, and its parent's parent is the grading process (here, this test), as a fork client's is;
    asked for another child, with no sandbox at all, the server must close the connection unanswered."""
    import subprocess
    import sys

    ask = (  # the server may close the connection before the request is sent, or before it is read
        "import json, socket, sys\n"
        "c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "c.connect(sys.argv[1])\n"
        "try:\n"
        "    c.sendall(json.dumps({'argv': ['--', '/bin/true'], 'env': {}}).encode() + b'\\n')\n"
        "    print(repr(c.makefile('r').readline()))\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    print(repr(''))\n"
    )
    printed = tmp_path / "printed.txt"
    client = [sys.executable, "-m", "int8lab.grading.forkclient", server.socket, str(tmp_path / "pid")]
    sandbox = [
        "--ro",
        "/",
        "--rw",
        str(tmp_path),
        "--stdout",
        str(printed),
        "--stderr",
        str(tmp_path / "err.txt"),
        "--",
        sys.executable,
        "-c",
        ask,
        server.socket,
    ]
    subprocess.run([*client, *sandbox], timeout=300, check=False)
    assert printed.read_text().strip() == "''", printed.read_text() + (tmp_path / "err.txt").read_text()[-2000:]


def test_a_request_that_is_no_json_object_leaves_the_server_serving(tmp_path, server):
    """Catches a server that a malformed request takes down (every later kernel would start cold): a JSON list,
    a request nested too deep and one cut short are refused, and the server still forks the next kernel."""
    import subprocess
    import sys

    send = (
        "import socket, sys\n"
        "for request in (b'[1]\\n', b'[' * 100000 + b'\\n', b'{\"argv\": '):\n"
        "    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "    c.connect(sys.argv[1])\n"
        "    c.sendall(request)\n"
        "    c.shutdown(socket.SHUT_WR)\n"
        "    print(repr(c.makefile('r').readline()))\n"
    )
    printed = subprocess.run([sys.executable, "-c", send, server.socket], capture_output=True, text=True, timeout=60)
    assert printed.stdout.split() == ["''"] * 3, printed
    assert server.process.poll() is None
    observed, _ = _printed(OBSERVER, tmp_path / "after", server)
    assert observed["warm"]


def test_a_fork_server_that_dies_fails_no_student(tmp_path):
    """Catches the server's death reported as the student's (kernel_died) and later jobs left without a kernel: the
    kernel it forked is run again from nothing, and so is the next submission, both with their full output."""
    import threading
    import time
    from dataclasses import asdict

    from int8lab.grading import workers

    forks = ForkServer(run._kernel_environment(Path("/nonexistent")))
    try:
        assert forks.ready(), forks.problem
        code = "import time\ntime.sleep(3)\nprint('finished')"
        probe = json.dumps(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])).encode()

        def kill_once_the_kernel_runs():
            while not (tmp_path / "first" / run.KERNEL_PID_FILE).exists():
                time.sleep(0.05)
            time.sleep(1)
            forks.process.kill()

        killer = threading.Thread(target=kill_once_the_kernel_runs, daemon=True)
        killer.start()
        for job in ("first", "next"):
            ran = workers.run_probe(probe, asdict(Limits()), tmp_path / job, None, forks.address())
            assert ran["status"] == "ok", ran["reason"]
            assert "finished" in ran["executed"].decode(), job
            assert "run again in a fresh kernel" in ran["reason"], ran["reason"]
        assert (tmp_path / "first" / run.KERNEL_PID_FILE).exists()  # the server did fork the first kernel
    finally:
        forks.close()


def test_a_dask_workers_fork_server_outlives_the_task_thread_that_started_it():
    """Catches a fork server started in a Dask task's thread: its parent-death signal follows that thread, and
    Dask may retire it; the server must go on serving once the thread that waited for it has ended."""
    import threading
    import time

    from int8lab.grading import cluster_worker

    started = {}

    def task():  # as a Dask task would: start the server, wait until it serves, then end
        started["server"] = cluster_worker._in_a_thread_that_stays(
            lambda: ForkServer(run._kernel_environment(Path("/nonexistent")))
        )
        started["ready"] = started["server"].ready()

    thread = threading.Thread(target=task)
    thread.start()
    thread.join()
    forks = started["server"]
    try:
        assert started["ready"], forks.problem
        time.sleep(1)
        assert forks.process.poll() is None, forks.process.returncode
    finally:
        forks.close()


def test_a_dask_workers_kernels_require_what_its_check_kernel_got(monkeypatch):
    """Catches Dask workers whose kernels may run with fewer sandbox layers than their check kernel had (a local
    grading requires them): the worker's warm check records the layers every later kernel of it must get."""
    import atexit

    from int8lab.grading import cluster_worker, pipeline

    at_exit = []  # the worker closes its fork server at its exit: here, at the test's end
    monkeypatch.setattr(atexit, "register", at_exit.append)
    monkeypatch.setattr(cluster_worker, "_fork_server", {})
    try:
        assert cluster_worker._warm_kernels() is not None
        assert cluster_worker._fork_server["required"] == pipeline.ISOLATION_LAYERS  # all of them, on this machine
    finally:
        for close in at_exit:
            close()


def test_the_fork_server_imports_every_module_behind_int8labs_lazy_names():
    """Catches a fork server that leaves a module of ``from int8lab import ...`` to every kernel: the package
    imports its names when first used, so each setup cell would import int8lab.data, .training... again."""
    import int8lab
    from int8lab.grading.forkserver import WARM_MODULES

    behind = {f"int8lab.{module}" for module in int8lab._WHERE.values()}
    assert behind <= set(WARM_MODULES), sorted(behind - set(WARM_MODULES))
