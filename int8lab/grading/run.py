"""Run: execute a probe notebook in a sandboxed kernel and take back its executed cells and records.

Per job, a folder the grader owns:

    JOB/spec/       the kernel spec (the sandbox launcher around ipykernel)
    JOB/sandbox.json    what the sandbox enforced
    JOB/kernel-stdout.log, JOB/kernel-stderr.log   the kernel's descriptors 1 and 2 (never the grader's)
    JOB/records.jsonl   the probe records, which the kernel writes through a descriptor
    JOB/root/       where the sandbox builds the kernel's private root (see namespaces.py)
    JOB/kernel/     the kernel's working folder and HOME: in the private root, a tmpfs of
                    ``Limits.disk_bytes``, gone when the kernel exits
    JOB/connection.json the kernel's connection file (read-only to it)
    /tmp/int8lab-kXXXX/   its socket folder (Unix socket paths must stay short): only a name on
                    the host; the kernel sees a small tmpfs of its own there, which the grader
                    reaches as /proc/LAUNCHER/root/tmp/int8lab-kXXXX (``_SandboxedKernelManager``)

The executed notebook comes back over the kernel's channels (nbclient), not from a file; the
only file read back is ``records.jsonl``, opened without following links and capped. Nothing
the kernel writes reaches OUT.
"""

from __future__ import annotations

import atexit
import json
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from .intake import InvalidNotebook, read_regular_file
from .model import Limits, Status
from .records import MAX_RECORD_BYTES, read_records
from .testcells import nbgrader_meta

SANDBOX_SCRIPT = Path(__file__).resolve().with_name("sandbox.py")
FORK_CLIENT_SCRIPT = Path(__file__).resolve().with_name("forkclient.py")
PACKAGE_DIR = Path(__file__).resolve().parents[1]
KERNEL_NAME = "int8lab-sandbox"
MAX_OUTPUT_BYTES = 1 << 20  # one output larger than this is replaced by a note
MAX_NOTEBOOK_OUTPUT_BYTES = 16 << 20  # outputs beyond this total are replaced by a note
MAX_RECEIVED_BYTES = 64 << 20  # output the grader accepts from one kernel at all
#: The largest file the kernel may write (RLIMIT_FSIZE): its records and stderr go to the real disk.
MAX_FILE_BYTES = MAX_RECORD_BYTES


@dataclass
class Run:
    """What came back from one kernel run."""

    status: Status
    reason: str = ""
    executed: object = None
    records: dict = field(default_factory=dict)
    #: The record file's text (at most ``MAX_RECORD_BYTES``), what ``records`` was parsed from: a cluster
    #: worker sends this back, and the client parses it again itself.
    records_text: str = ""
    sandbox: dict | None = None
    stderr: str = ""
    #: The notebook watchdog killed the kernel: the run stopped at a moment that varies.
    cut_short: bool = False
    #: Wall-clock seconds of the run's steps (``STEPS``), for grading.log's medians.
    steps: dict = field(default_factory=dict)
    #: Why the fork server failed this run ('' if it did not): the submission must run again from nothing.
    server_lost: str = ""
    #: The sandbox refused to start the kernel without a required layer (nothing ran): worth one more try.
    refused: bool = False


#: The steps of a run whose seconds grading.log gives: the sandbox and the kernel up to its first answer,
#: the release's first code cell (its imports), the plain code cells (the release's demonstrations: plots and
#: studies, none with --skip-demos; and cells a student added), and the nbgrader cells (the student's answers,
#: the provided code and the probes).
STEPS = ("kernel start", "setup cell", "plain cells", "other cells")


def _readable_paths() -> list[str]:
    from ..data import cache_dir

    system = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev"]
    site = [p for p in sys.path if p.endswith("site-packages")]
    return [*system, sys.base_prefix, sys.prefix, str(PACKAGE_DIR), str(cache_dir()), *site]


def _kernel_environment(kernel_dir: Path) -> dict:
    """The kernel's whole environment: every folder it writes is inside ``kernel_dir``."""
    import os

    from ..data import DATASET_ENV, cache_dir, dataset_name

    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV")}
    return {
        **keep,
        "HOME": str(kernel_dir),
        "TMPDIR": str(kernel_dir),
        "IPYTHONDIR": str(kernel_dir / ".ipython"),
        "MPLCONFIGDIR": str(kernel_dir / ".matplotlib"),
        "XDG_CACHE_HOME": str(kernel_dir / ".cache"),
        "JUPYTER_RUNTIME_DIR": str(kernel_dir / ".runtime"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        # One thread per kernel: N kernels share the cores, and results do not depend on N.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "INT8LAB_CACHE": str(cache_dir()),
        DATASET_ENV: dataset_name(),  # the judge's hidden tests read the same dataset in the worker
        "INT8LAB_NO_TRAINING": "1",  # grading reads the model cache, never trains
        "PYTHONDONTWRITEBYTECODE": "1",
        # One string hashing for every kernel, warm (a fork server's children share its seed) or fresh: set and
        # dict orders of strings, which a student's output may show, do not change from one grading to the next.
        "PYTHONHASHSEED": "0",
    }


def _kernel_spec(
    job_dir: Path, kernel_dir: Path, sockets: Path, limits: Limits, cgroup, memory_group, server=None
) -> Path:
    """The kernel spec: the sandbox launcher around ipykernel, or with ``server`` (a ``ForkServer``) the same
    launcher's arguments sent to the server, whose child enters the same sandbox with ipykernel loaded."""
    launcher = ["--report", str(job_dir / "sandbox.json")]
    launcher += ["--memory", str(limits.memory_bytes), "--processes", str(limits.processes)]
    launcher += ["--stdout", str(job_dir / "kernel-stdout.log"), "--stderr", str(job_dir / "kernel-stderr.log")]
    launcher += ["--records", str(job_dir / "records.jsonl")]
    (job_dir / "root").mkdir(exist_ok=True)
    launcher += ["--isolate", str(job_dir / "root"), "--workdir", str(kernel_dir), "--sockets", str(sockets)]
    launcher += ["--quota", str(limits.disk_bytes), "--shm", str(limits.shm_bytes), "--file-size", str(MAX_FILE_BYTES)]
    for layer in limits.required_layers:
        launcher += ["--require", str(layer)]
    if cgroup:
        launcher += ["--cgroup", str(cgroup)]
    if memory_group:
        launcher += ["--memory-cgroup", str(memory_group)]
    for path in [*_readable_paths(), str(job_dir / "connection.json")]:
        launcher += ["--ro", path]
    launcher += ["--rw", "/dev/null"]
    spec_dir = job_dir / "spec" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    if server is None:
        launcher = [sys.executable, str(SANDBOX_SCRIPT), *launcher]
    else:
        launcher = [sys.executable, str(FORK_CLIENT_SCRIPT), server.socket, str(job_dir / KERNEL_PID_FILE), *launcher]
    argv = [*launcher, "--", sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL_NAME, "language": "python"}))
    return spec_dir.parent


#: With a fork server: the file in which the fork client names the kernel's sandbox (its PID on this host).
KERNEL_PID_FILE = "kernel.pid"


def execute(notebook, job_dir: Path, limits: Limits, cgroups=None, server=None) -> Run:
    """Run ``notebook`` in a fresh sandboxed kernel; never raises for what the notebook does.

    ``server``: a ready ``forkserver.ForkServer`` of this process, whose child becomes the kernel (its imports
    done already), or None for a kernel started from nothing."""
    kernel_dir = job_dir / "kernel"
    kernel_dir.mkdir(parents=True, exist_ok=True)
    from .forkclient import SERVER_LOST_FILE

    for stale in (KERNEL_PID_FILE, SERVER_LOST_FILE):  # a job retried in its folder: nothing of the last attempt
        (job_dir / stale).unlink(missing_ok=True)
    # Unix socket paths are limited to about 100 bytes: the kernel's sockets get a short folder.
    sockets = Path(tempfile.mkdtemp(prefix="int8lab-k", dir="/tmp"))
    cgroup = cgroups.create(job_dir.name, limits.processes) if cgroups else None
    memory_group = cgroups.create_memory(job_dir.name, limits.memory_bytes) if cgroups and limits.memory_bytes else None
    spec_root = _kernel_spec(job_dir, kernel_dir, sockets, limits, cgroup, memory_group, server)
    manager = _SandboxedKernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_root)], ensure_native_kernel=False),
        transport="ipc",
        ip=str(sockets / "k"),
        connection_file=str(job_dir / "connection.json"),
    )
    manager.pid_file = job_dir / KERNEL_PID_FILE if server else None
    client = _Client(notebook, km=manager, timeout=limits.cell_timeout, allow_errors=True, interrupt_on_timeout=True)
    stopped = threading.Event()

    def stop_kernel():  # the whole notebook ran too long: kill every process of the kernel
        stopped.set()
        _kill(cgroups.pids(cgroup) if cgroup else _children(server))
        _kill_group(manager.pid_file)

    watchdog = threading.Timer(limits.notebook_timeout, stop_kernel)
    watchdog.daemon = True
    run = Run(Status.OK)
    try:
        watchdog.start()
        client.execute(env=_kernel_environment(kernel_dir), cwd=str(kernel_dir))
    except DeadKernelError:
        run.status, run.reason = Status.KERNEL_DIED, "the kernel died (crash, os._exit, kill or memory exhausted)"
    except Exception as exc:  # nbclient raises several types when a kernel misbehaves
        run.status, run.reason = Status.KERNEL_DIED, f"the kernel stopped answering ({type(exc).__name__})"
    finally:
        watchdog.cancel()
        _shut_down(manager, client)  # nbclient leaves a kernel it did not create running
        # nbclient's exit hook for a kernel that failed to start stays registered, and at the worker's exit
        # printed an AssertionError traceback into the grader's stderr; the kernel is shut down above.
        atexit.unregister(client._cleanup_kernel)
        _kill(cgroups.pids(cgroup) if cgroup else [])
        _kill_group(manager.pid_file)
        for group in (cgroup, memory_group):
            if group:
                cgroups.remove(group)
        shutil.rmtree(sockets, ignore_errors=True)
    run.cut_short = stopped.is_set()
    run.sandbox = _last_json_line(job_dir / "sandbox.json")
    run.server_lost = _server_lost(job_dir, run.status) if server is not None else ""
    refused = (run.sandbox or {}).get("refused")
    run.refused = bool(refused) and not run.server_lost
    # The grader's faults win over whatever the run looked like to nbclient.
    if run.server_lost:
        run.status, run.reason = Status.ERROR, f"grader fault: {run.server_lost}"
    elif refused:  # the kernel never started: nothing of the submission ran
        run.status = Status.ERROR
        run.reason = (
            f"grader fault: this kernel's sandbox could not make {', '.join(map(str, refused))}, which the "
            "grader's check kernel had on this machine; the notebook did not run (grade it again)"
        )
    elif stopped.is_set():
        run.status, run.reason = Status.TIMEOUT, f"the notebook ran longer than {limits.notebook_timeout} s"
    elif client.timed_out and run.status is Status.OK:
        run.status, run.reason = Status.TIMEOUT, f"a cell ran longer than {limits.cell_timeout} s and was stopped"
    run.steps = client.steps
    run.executed = capped(client.nb)
    run.stderr = _tail(job_dir / "kernel-stderr.log")
    if run.status is Status.OK and _errors_named(run.executed, "MemoryError"):
        run.status, run.reason = Status.ERROR, "a cell ran out of memory (the sandbox's memory limit)"
    if run.status is not Status.TIMEOUT and not run.server_lost and not refused and _disk_full(run):
        run.status = Status.DISK_QUOTA
        run.reason = (
            f"the notebook wrote more than its {limits.disk_bytes} bytes of disk "
            f"(or more than {limits.shm_bytes} bytes to /dev/shm)"
        )
    run.records_text = _records_text(job_dir / "records.jsonl")
    run.records = read_records(run.records_text)
    return run


def _server_lost(job_dir: Path, status: Status) -> str:
    """Why the fork server, not the submission, ended this run ('' if it did not): the fork client said so, or
    the kernel died before the server named it."""
    from .forkclient import SERVER_LOST_FILE

    try:
        return (job_dir / SERVER_LOST_FILE).read_text(errors="replace")[:500] or "the fork server failed"
    except OSError:
        pass
    if status is Status.KERNEL_DIED and not (job_dir / KERNEL_PID_FILE).exists():
        return "the fork server did not start this kernel"
    return ""


class _SandboxedKernelManager(AsyncKernelManager):
    """Connects to the kernel's sockets through its launcher's root (``/proc/PID/root``).

    In a private root the socket folder is a tmpfs of the kernel's own mount namespace (inside no
    quota of the host's /tmp); the launcher shares that namespace and is this manager's child.
    Without one, ``/proc/PID/root`` is the host's root and the same path still names the folder.
    """

    #: With a fork server, where the fork client writes the PID of the kernel's sandbox (its launcher).
    pid_file: Path | None = None

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        await super()._async_launch_kernel(kernel_cmd, **kw)
        launcher = self.provisioner.pid if self.pid_file is None else await self._forked_launcher()
        self.ip = f"/proc/{launcher}/root{self.ip}"

    async def _forked_launcher(self) -> int:
        import asyncio

        while not self.pid_file.exists():
            if self.provisioner.process.poll() is not None:
                raise RuntimeError("the fork server did not start the kernel")
            await asyncio.sleep(0.005)
        return int(self.pid_file.read_text())

    def cleanup_ipc_files(self) -> None:
        """Nothing to remove: the tmpfs dies with the kernel, and its launcher's PID may be reused."""


class _Client(NotebookClient):
    """nbclient's NotebookClient, noting whether a cell ran past its time limit, and keeping no more
    than ``MAX_RECEIVED_BYTES`` of output in memory, whatever the kernel sends."""

    timed_out = False
    received = 0

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.started = time.perf_counter()
        self.steps: dict[str, float] = {}

    async def async_start_new_kernel_client(self):
        kernel_client = await super().async_start_new_kernel_client()
        self.steps["kernel start"] = time.perf_counter() - self.started
        return kernel_client

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        started = time.perf_counter()
        try:
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        finally:
            self._count(cell, cell_index, time.perf_counter() - started)

    def _count(self, cell, cell_index: int, seconds: float) -> None:
        if cell.cell_type != "code":
            return
        first = next(i for i, c in enumerate(self.nb.cells) if c.cell_type == "code")
        step = "setup cell" if cell_index == first else "other cells" if nbgrader_meta(cell) else "plain cells"
        self.steps[step] = self.steps.get(step, 0.0) + seconds

    async def _async_handle_timeout(self, timeout, cell=None):
        self.timed_out = True
        return await super()._async_handle_timeout(timeout, cell)

    def output(self, outs, msg, display_id, cell_index):
        self.received += _size(msg.get("content", {}))
        if self.received > MAX_RECEIVED_BYTES:
            note = f"[output beyond {MAX_RECEIVED_BYTES} bytes in all was dropped]\n"
            if not any(o.get("text") == note for o in outs):
                outs.append(nbformat.v4.new_output("stream", name="stderr", text=note))
            return None
        return super().output(outs, msg, display_id, cell_index)


def _size(content) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, dict):
        return sum(_size(v) for v in content.values())
    if isinstance(content, list):
        return sum(_size(v) for v in content)
    return 8


def _shut_down(manager, client=None) -> None:
    """Kill the kernel's launcher (its PID namespace dies with it: PDEATHSIG), whatever state it is in,
    and close the sockets nbclient opened to it: it closes them only for kernels it started itself."""
    from jupyter_core.utils import run_sync

    try:
        if run_sync(manager.is_alive)():
            run_sync(manager.shutdown_kernel)(now=True)
    except Exception:  # a kernel that never started or already died: nothing left to stop
        pass
    kernel_client = getattr(client, "kc", None)
    try:
        if kernel_client is not None:
            kernel_client.stop_channels()
    except Exception:  # channels of a kernel that died half-way: nothing left to close
        pass
    try:
        run_sync(manager.cleanup_resources)()
    except Exception:  # nothing was started, so nothing to clean
        pass


def _kill(pids: list[int]) -> None:
    import os
    import signal

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _children(server=None) -> list[int]:
    """This process's descendants but the fork server: its children are the kernels, each in its process group."""
    import psutil

    return [child.pid for child in psutil.Process().children(recursive=True) if not server or child.pid != server.pid]


def _kill_group(pid_file: Path | None) -> None:
    """Kill the process group of the kernel a fork server started (it is the group's leader)."""
    import os
    import signal

    try:
        os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    except (AttributeError, OSError, ValueError):  # no fork server, no kernel started, or gone already
        pass


def _records_text(path: Path) -> str:
    try:
        return read_regular_file(path, MAX_RECORD_BYTES).decode("utf-8", "replace")
    except InvalidNotebook:  # missing, a link, not a regular file, or too large: nothing recorded
        return ""


def capped(notebook):
    """Outputs over 1 MiB replaced by a note; beyond 16 MiB kept in all, the rest removed (one note)."""
    total, over = 0, False
    for cell in notebook.cells:
        if "outputs" not in cell:
            continue
        kept = []
        for output in cell.outputs:
            size = len(json.dumps(output))
            if over:
                continue
            if size > MAX_OUTPUT_BYTES:
                kept.append(_note(f"[an output of {size} bytes was removed: the limit is {MAX_OUTPUT_BYTES}]"))
            elif total + size > MAX_NOTEBOOK_OUTPUT_BYTES:
                over = True
                kept.append(_note(f"[outputs beyond {MAX_NOTEBOOK_OUTPUT_BYTES} bytes in all were removed]"))
            else:
                total += size
                kept.append(output)
        cell.outputs = kept
    return notebook


def _note(text: str):
    return nbformat.v4.new_output("stream", name="stderr", text=text + "\n")


def _disk_full(run: Run) -> bool:
    full = "No space left on device"
    outputs = [o for c in run.executed.cells for o in c.get("outputs", [])]
    return full in run.stderr or any(full in str(o.get("evalue", "")) + str(o.get("text", "")) for o in outputs)


def _errors_named(notebook, name: str) -> bool:
    return any(o.get("ename") == name for c in notebook.cells for o in c.get("outputs", []))


def _last_json_line(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _tail(path: Path, lines: int = 30, limit: int = 64 << 10) -> str:
    """The last lines of a file the kernel wrote, reading at most its last ``limit`` bytes."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, 2) - limit))
            text = handle.read(limit).decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
