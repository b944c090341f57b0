"""A fork server per grading worker: the lab's modules loaded once, one sandboxed kernel forked per submission.

    python -m int8lab.grading.forkserver SOCKET PARENT_PID

A fresh kernel spends most of a short notebook importing torch, numpy, matplotlib, IPython and int8lab
(``grading.log``'s "setup cell" and "kernel start"). This process imports them once, with the kernels'
environment (one OpenMP thread, the same cache and dataset), and then only forks: it never runs a line of
a submission, never starts a thread, never opens a ZMQ context (checked before it serves), and every
child starts from this same, untouched state. Each child (``_child``):

  - leaves the server's process group, signal handlers and descriptors behind;
  - takes the environment its request carries (the kernel's: HOME, TMPDIR, the records descriptor...);
  - gets the random state a fresh kernel has: Python's, numpy's and torch's generators seeded from the OS's
    entropy (torch 2.13 too seeds its default generator so at start: ``torch.initial_seed()`` differs from
    one fresh process to the next), never the server's state, which every child would share;
  - runs ``sandbox.main`` with the request's arguments: the same layers as a fresh kernel's launcher, in the
    same order (cgroups, namespaces, private root on a fresh tmpfs, limits, Landlock, keyring, seccomp),
    and only then starts ipykernel, in-process instead of by exec.

A submission's changes (a patched torch function, module globals, files, environment) live in its child's
copy-on-write memory and its own tmpfs; they die with it and never reach the server or the next child.

Protocol, one connection per kernel (``forkclient.py`` is the other end): the client sends one JSON line
``{"argv": [...], "env": {...}}``; the server answers ``PID <pid>`` at once and ``EXIT <status>`` when the
child ends. When the connection closes first (the client was killed), the child's process group is killed.
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass

#: What a notebook's setup cell and ipykernel import, loaded once here.
WARM_MODULES = (
    "numpy",
    "torch",
    "torch.nn",
    "torch.nn.functional",
    # An optimizer's first step imports torch._dynamo (and sympy...): 0.8 s of CPU in every kernel of notebook 7,
    # whose tests take an Adam step.
    "torch._dynamo",
    "matplotlib",
    "matplotlib.pyplot",
    "matplotlib_inline.backend_inline",
    "IPython",
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "int8lab",  # its names import when first used: the modules the setup cells use are listed
    "int8lab.data",
    "int8lab.guards",
    "int8lab.models",
    "int8lab.profiling",
    "int8lab.training",
    "int8lab.analysis",
    "int8lab.checks",
    "int8lab.engine",
    "int8lab.integer",
    "int8lab.plots",
    "int8lab.sweeps",
    "int8lab.grading.records",
)
MAX_REQUEST_BYTES = 1 << 20
#: How long the server's imports may take (torch's first import on a loaded machine can take a minute).
READY_SECONDS = 300
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Address:
    """What a worker process needs of the fork server (it is sent to the workers): its socket and PID."""

    socket: str
    pid: int


class ForkServer:
    """A worker's handle on its fork server: started at once, waited for at its first use (``ready``).

    ``environment``: the kernels' environment (``run._kernel_environment``) for the imports to read.
    """

    def __init__(self, environment: dict):
        import subprocess
        import tempfile

        self.folder = tempfile.mkdtemp(prefix="int8lab-f", dir="/tmp")  # Unix socket paths must stay short
        self.socket = os.path.join(self.folder, "s")
        home = {k: self.folder for k in ("HOME", "TMPDIR", "IPYTHONDIR", "MPLCONFIGDIR", "XDG_CACHE_HOME")}
        command = [sys.executable, "-m", "int8lab.grading.forkserver", self.socket, str(os.getpid())]
        self.process = subprocess.Popen(
            command,
            env={**environment, **home},
            cwd=self.folder,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.process.pid
        self.problem: str | None = None
        self._started = False

    def ready(self) -> bool:
        """True once the server serves; False (and ``problem`` says why) if it never will."""
        if not self._started and self.problem is None:
            import select

            waited = select.select([self.process.stdout], [], [], READY_SECONDS)[0]
            line = self.process.stdout.readline().strip() if waited else f"not ready after {READY_SECONDS} s"
            if line == "ready":
                self._started = True
            else:
                self.problem = line or f"the fork server exited ({self.process.wait()})"
                print(f"int8lab grade: no warm kernels ({self.problem}); each starts from nothing", file=sys.stderr)
        return self._started and self.process.poll() is None

    def address(self) -> Address:
        return Address(self.socket, self.pid)

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        import shutil

        self.process.kill()
        self.process.wait()
        self.process.stdout.close()  # else a ResourceWarning in the grader's stderr, which promises none
        shutil.rmtree(self.folder, ignore_errors=True)


class NotForkable(RuntimeError):
    """The server's process is in a state that its children must not inherit."""


def warm_up() -> None:
    """Import ``WARM_MODULES``; raise ``NotForkable`` if that left a thread or a ZMQ context behind."""
    import importlib

    for name in WARM_MODULES:
        importlib.import_module(name)
    threads = thread_count()
    if threads != 1:  # unshare(CLONE_NEWUSER) and OpenMP in the children need a single-threaded parent
        raise NotForkable(f"the fork server has {threads} threads after its imports, not 1")
    import zmq

    if zmq.Context._instance is not None:
        raise NotForkable("a ZMQ context exists before the fork: its sockets and threads would be shared")
    # The sandbox closes every descriptor but 0-2 in the child: one that an import opened would be closed under
    # a live Python object, whose finalizer could later close whatever the kernel opened under that number.
    opened = sorted(int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2 and _is_open(int(fd)))
    if opened:
        raise NotForkable(f"the imports left descriptors {opened} open, which the sandbox would close under them")
    _check_private_roots()


def _is_open(fd: int) -> bool:
    """False for the descriptor that listed /proc/self/fd, closed since."""
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _check_private_roots() -> None:
    """Serve only where each kernel gets a private root: without one a kernel would see this server's socket
    on /tmp, and a child forked on its request would be outside the kernel's sandbox."""
    from . import namespaces

    child = os.fork()
    if child == 0:
        status = 1
        try:
            status = 0 if "mount namespace" in namespaces.enter(isolate=True) else 1
        finally:
            os._exit(status)
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise NotForkable("this machine refuses mount and PID namespaces: kernels start from nothing instead")


def thread_count() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def serve(path: str) -> None:
    """Accept kernel requests on the Unix socket ``path`` until the parent dies (PDEATHSIG)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "listener")
    selector.register(wake_read, selectors.EVENT_READ, "children")
    children: dict[int, socket.socket] = {}  # child PID -> its client's connection
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            if key.data == "listener":
                try:
                    connection, _ = listener.accept()
                except OSError as exc:  # out of descriptors (EMFILE) or a client gone already: wait, go on
                    print(f"could not accept a request: {exc}", file=sys.stderr, flush=True)
                    time.sleep(0.1)
                    continue
                if not _a_graders_client(connection):
                    connection.close()
                    continue
                closing = [listener, connection, *children.values(), selector]
                child = _fork(connection, closing, (wake_read, wake_write))
                if child:
                    children[child] = connection
                    selector.register(connection, selectors.EVENT_READ, child)
            elif key.data == "children":
                os.read(wake_read, 4096)
                _reap(children, selector)
            else:  # a client's connection: it closed (or sent what it must not): its kernel goes
                if children.get(key.data) is not key.fileobj:
                    continue  # reaped in this same batch (its connection closed then): nothing left to do
                _kill_group(key.data)
                selector.unregister(key.fileobj)  # else the closed socket, always readable, spins this loop


def _a_graders_client(connection: socket.socket) -> bool:
    """Whether the peer is a child, or a child of a child, of this server's parent: a fork client that the
    grading process or one of its workers started. A kernel (this server's descendant, in a private root
    where this socket does not even exist) never is."""
    import struct

    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    peer, uid, _ = struct.unpack("3i", credentials)
    try:
        parent = _parent(peer)
        ours = uid == os.getuid() and os.getppid() in (parent, _parent(parent))
        # A kernel whose PID namespace could not be made (the sandbox then goes on with fewer layers) is this
        # server's child, and its parent's parent is the grading process: its lineage, not its depth, refuses it.
        return ours and not descends_from(peer, os.getpid())
    except (OSError, ValueError, IndexError):
        return False


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether ``ancestor`` is ``pid``'s parent, or its parent's parent, and so on up to init."""
    for _ in range(4096):  # a chain of processes is finite; this bounds a race with PIDs reused meanwhile
        if pid <= 1:
            return False
        pid = _parent(pid)
        if pid == ancestor:
            return True
    return False


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def _fork(connection: socket.socket, closing: list, pipe: tuple[int, int]) -> int | None:
    try:
        request = _read_request(connection)
    except (OSError, ValueError) as exc:
        print(f"refused a request: {exc}", file=sys.stderr, flush=True)
        connection.close()
        return None
    child = os.fork()
    if child == 0:
        _child(request, closing, pipe)
    try:  # as the child does itself: whichever runs first, the group exists before anyone kills it
        os.setpgid(child, child)
    except OSError:
        pass
    try:
        connection.sendall(f"PID {child}\n".encode())
    except OSError:  # the client died meanwhile: nobody would wait for this kernel (reaped with the others)
        _kill_group(child)
        connection.close()
        return None
    return child


def _read_request(connection: socket.socket) -> dict:
    connection.settimeout(30)
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk or len(data) + len(chunk) > MAX_REQUEST_BYTES:
            raise ValueError("an incomplete or oversized request")
        data += chunk
    connection.settimeout(None)
    try:
        request = json.loads(data)
    except RecursionError as exc:
        raise ValueError("a request nested too deep") from exc
    if not isinstance(request, dict):
        raise ValueError("a request that is not a JSON object")
    if not isinstance(request.get("argv"), list) or not isinstance(request.get("env"), dict):
        raise ValueError("a request without argv and env")
    return request


def _reap(children: dict, selector) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = children.pop(pid, None)
        if connection is not None:
            try:
                selector.unregister(connection)
            except KeyError:  # its client closed it first
                pass
            try:
                connection.sendall(f"EXIT {os.waitstatus_to_exitcode(status) & 0xFF}\n".encode())
            except OSError:  # the client is gone already
                pass
            connection.close()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _child(request: dict, closing: list, pipe: tuple[int, int]) -> None:
    """In the forked child: shed the server, take a fresh kernel's state, enter the sandbox, run the kernel."""
    try:
        os.setpgid(0, 0)  # the grader interrupts and kills this kernel by its own group
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for thing in closing:
            thing.close()
        for fd in pipe:
            os.close(fd)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in request["env"].items()})
        import tempfile

        tempfile.tempdir = None  # TMPDIR is the kernel's now
        _forget_matplotlib_folders()
        fresh_random_state()
        from . import sandbox

        sandbox.main([str(a) for a in request["argv"]], start=start_kernel)
    finally:
        os._exit(1)  # sandbox.main never returns; this is for what raised before it


def _forget_matplotlib_folders() -> None:
    """matplotlib remembers its config and cache folders at their first use: the server's, which the kernel cannot
    see. Forgotten here, they are found again from the kernel's MPLCONFIGDIR and XDG_CACHE_HOME, as in a fresh
    kernel."""
    import functools

    import matplotlib

    for name in ("get_configdir", "get_cachedir"):
        setattr(matplotlib, name, functools.cache(getattr(matplotlib, name).__wrapped__))


def fresh_random_state() -> None:
    """The random state of a freshly started kernel: every generator seeded from the OS's entropy, as the
    imports of random, numpy and torch seed them."""
    import random

    import numpy
    import torch

    random.seed()
    numpy.random.seed()
    torch.seed()


def start_kernel(command: list[str]) -> int:
    """Run ``python -m ipykernel_launcher ARGS`` in this process (its modules are loaded already)."""
    if command[1:3] != ["-m", "ipykernel_launcher"]:
        os.execvp(command[0], command)
    import ipykernel_launcher

    sys.argv = [ipykernel_launcher.__file__, *command[3:]]
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()
    return 0


def main(argv: list[str]) -> None:
    path, parent = argv[0], int(argv[1])
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the worker died before the line above
        sys.exit(1)
    if sys.path and sys.path[0] in ("", os.getcwd()):  # as ipykernel_launcher does
        del sys.path[0]
    try:
        warm_up()
    except NotForkable as exc:
        print(f"not forkable: {exc}", flush=True)
        sys.exit(2)
    serve(path)


if __name__ == "__main__":
    main(sys.argv[1:])
