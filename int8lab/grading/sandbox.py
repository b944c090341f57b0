"""Start a command (the grading kernel) inside the limits this machine can enforce.

    python -m int8lab.grading.sandbox --ro DIR ... --rw DIR ... [--isolate ROOT --workdir DIR
        --sockets DIR --quota BYTES --shm BYTES] [--records FILE] --memory BYTES --processes N
        --report FILE -- COMMAND ...

Layers, each applied when the machine supports it and named in the report either way:
  - a pids cgroup (--cgroup), else RLIMIT_NPROC (which root ignores);
  - a memory cgroup (--memory-cgroup): one limit for the whole process tree; without one, only
    RLIMIT_AS per process (with the process limit), and the report says so;
  - user and network namespaces: no network; an IPC namespace: no System V object of another kernel;
  - with --isolate: mount and PID namespaces and a private root (``namespaces.py``): the
    kernel sees only the read-only folders, its socket folder, a working folder on a tmpfs of
    --quota bytes, its whole disk, and a /dev/shm of its own of --shm bytes (multiprocessing and
    DataLoader workers need one); its /proc shows only its own processes. Without a private root the
    host's /dev/shm stays closed (Landlock) and the report says what fails for it;
  - resource limits: address space, file size, no core dumps;
  - Landlock (``landlock.py``): the same folders again, enforced by another mechanism;
  - a new, empty session keyring, and a seccomp filter (``seccomp.py``): no socket family the
    lab does not use (AF_VSOCK, AF_PACKET, ...), no io_uring, no key syscalls, no new namespace
    (installed last: the launcher's own namespaces are made before it);
  - with a PID namespace, PID 1 is this launcher's own small init: it reaps the orphans the
    command leaves (zombies would hold the process limit) and exits with the command's status.
A layer named by --require that could not be made stops the launch: the report says "refused", the command
never runs. --records FILE is opened before any of this; the command writes its probe records through the
inherited descriptor (``INT8LAB_PROBE_RECORDS_FD``) and never sees the file's folder. No other
descriptor of the caller reaches the command: standard input is /dev/null, and with --stdout and
--stderr its output goes to those files (capped by --file-size), never to the grader's terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys

if __package__:
    from . import landlock, namespaces, seccomp
else:  # run as a script (fast: the int8lab package, which imports torch, is not loaded)
    import landlock
    import namespaces
    import seccomp

PR_SET_PDEATHSIG = 1
#: The exit status of a sandbox that could not enforce a ``--require``d layer (the command never ran).
REFUSED = 3
KEYCTL_JOIN_SESSION_KEYRING = 1
#: What the report says when the kernel has no /dev/shm of its own (no private root could be built).
NO_SHARED_MEMORY = (
    "/dev/shm: none of the kernel's own without a private root, and the host's is not opened to it, so "
    "multiprocessing (Pool, Queue, Lock) and DataLoader(num_workers>0) fail with PermissionError"
)


def join_cgroup(folder: str) -> str:
    """Move this process (and so its future children) into a cgroup the grader prepared."""
    with open(os.path.join(folder, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))
    with open(os.path.join(folder, "pids.max")) as limit:
        return f"processes <= {limit.read().strip()} (pids cgroup)"


def join_memory_cgroup(folder: str) -> str:
    """Move this process into a memory cgroup the grader prepared: one limit for the whole process tree."""
    with open(os.path.join(folder, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))
    for name, kind in (("memory.max", "cgroup v2 memory.max"), ("memory.limit_in_bytes", "cgroup v1 memory limit")):
        if os.path.exists(os.path.join(folder, name)):
            with open(os.path.join(folder, name)) as limit:
                return f"memory: <= {limit.read().strip()} bytes for the whole process tree ({kind})"
    raise OSError(f"{folder} has no memory limit")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m int8lab.grading.sandbox")
    parser.add_argument("--ro", action="append", default=[], help="a folder or file to allow reading")
    parser.add_argument("--rw", action="append", default=[], help="a folder to allow reading and writing")
    parser.add_argument("--isolate", metavar="ROOT", help="an empty folder to build a private root in")
    parser.add_argument("--workdir", help="with --isolate: the working folder, a fresh tmpfs of --quota bytes")
    parser.add_argument("--sockets", help="with --isolate: the socket folder, the one shared with the grader")
    parser.add_argument("--quota", type=int, default=512 << 20, help="bytes the working folder may hold")
    parser.add_argument("--shm", type=int, default=1 << 30, help="with --isolate: bytes its own /dev/shm may hold")
    parser.add_argument("--records", help="file the command appends its probe records to, by descriptor")
    parser.add_argument("--memory", type=int, default=0, help="address-space limit in bytes (0: none)")
    parser.add_argument("--processes", type=int, default=0, help="process and thread limit (0: none)")
    parser.add_argument("--cgroup", help="a pids cgroup folder to join (its pids.max is the process limit)")
    parser.add_argument("--memory-cgroup", help="a memory cgroup folder to join (the process tree's memory limit)")
    parser.add_argument("--file-size", type=int, default=1 << 30, help="largest file it may write, in bytes")
    parser.add_argument("--report", help="file to write what was and was not enforced to")
    parser.add_argument("--stdout", help="file to send the command's standard output to")
    parser.add_argument("--stderr", help="file to send the command's standard error to (for diagnosing crashes)")
    parser.add_argument(
        "--require",
        action="append",
        default=[],
        help="a layer without which the command must not run (say, 'PID namespace')",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    return parser


class Layers:
    """What was enforced and what was not, in the order it was attempted."""

    def __init__(self):
        self.enforced: list[str] = []
        self.missing: list[str] = []

    def attempt(self, name: str, action) -> bool:
        try:
            outcome = action() or name
        except OSError as exc:
            self.missing.append(f"{name}: {exc}")
            return False
        self.enforced += outcome if isinstance(outcome, list) else [outcome]
        return True


def main(argv=None, start=None) -> None:
    """Enter every layer, then become the command: ``os.execvp`` it, or call ``start(command)`` (the warm
    kernel of ``forkserver.py``, which has the command's modules loaded already) and exit with its status."""
    _die_with_the_grader()
    args = _parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        _parser().error("no command given after --")
    _own_descriptors(args.stdout, args.stderr)
    report = open(args.report, "a") if args.report else None  # noqa: SIM115 (closed before exec)
    if args.records:
        records = os.open(args.records, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.set_inheritable(records, True)
        os.environ["INT8LAB_PROBE_RECORDS_FD"] = str(records)
    layers = Layers()
    if args.cgroup:
        layers.attempt("pids cgroup", lambda: join_cgroup(args.cgroup))
    if args.memory_cgroup:
        layers.attempt("memory cgroup", lambda: join_memory_cgroup(args.memory_cgroup))
    if layers.attempt("namespaces", lambda: namespaces.enter(isolate=bool(args.isolate))):
        if "IPC namespace" not in layers.enforced:
            layers.missing.append("IPC namespace: refused (System V objects shared with the machine's other processes)")
    private = False
    if args.isolate:
        if "PID namespace" in layers.enforced:
            _become_pid_one()
            private = layers.attempt("private root", lambda: _private_root(args))
        else:
            layers.missing.append("mount and PID namespaces: this machine refused them (kernel sees /proc, /tmp)")
    if not private:  # the host's /dev/shm is the grader's and every kernel's: it is not opened for writing
        layers.missing.append(NO_SHARED_MEMORY)
    _limits(args, layers)
    read_write = args.rw + ([args.workdir, args.sockets] if args.isolate else [])
    read_write += [namespaces.SHARED_MEMORY] if private else []
    layers.attempt("filesystem", lambda: landlock.restrict_filesystem(args.ro, [p for p in read_write if p]))
    layers.attempt("keyring", _new_session_keyring)  # before the filter, which refuses keyctl
    layers.attempt("seccomp filter", seccomp.install)
    refused = [layer for layer in args.require if not any(item.startswith(layer) for item in layers.enforced)]
    if report:
        outcome = {"enforced": layers.enforced, "missing": layers.missing}
        report.write(json.dumps({**outcome, "refused": refused} if refused else outcome) + "\n")
        report.close()
    if refused:  # this machine gave the grader's check kernel these layers: a kernel without them does not start
        os._exit(REFUSED)
    if "PID namespace" in layers.enforced:
        _init(command, start)
    _become(command, start)


def _become(command: list[str], start) -> None:
    if start is None:
        os.execvp(command[0], command)
    status = 1  # what ``start`` raised
    try:
        status = start(command) or 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(status)  # never back into the fork server's loop


def _own_descriptors(stdout: str | None, stderr: str | None) -> None:
    """Standard input from /dev/null, output to the given files, every other inherited descriptor closed.

    ipykernel keeps a copy of descriptors 1 and 2 to echo to: left as the grader's, the kernel wrote
    megabytes and terminal escapes to the instructor's terminal.
    """
    for fd, path in ((0, os.devnull), (1, stdout), (2, stderr)):
        if path:
            flags = os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_APPEND | os.O_CREAT
            opened = os.open(path, flags, 0o600)
            os.dup2(opened, fd)
            os.close(opened)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))


def _new_session_keyring() -> str:
    """Leave the grader's session keyring (its keys: tokens, credentials) for a new, empty one."""
    import ctypes

    arch = seccomp.ARCHES.get(seccomp.machine())
    if arch is None:
        raise OSError("no keyctl syscall number for this machine")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(arch.keys[2], KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
        raise OSError(ctypes.get_errno(), "keyctl(JOIN_SESSION_KEYRING) failed")
    return "keyring: a new, empty session keyring (the grader's keys are out of reach)"


def _init(command: list[str], start=None) -> None:
    """Be PID 1 of the namespace: start the command, reap every orphan, exit with the command's status.

    Orphans (a fork bomb's children whose parent died) are handed to PID 1; a kernel as PID 1 never
    waits for them, and as zombies they hold the process limit until the job ends.
    """
    import ctypes

    child = os.fork()
    if child == 0:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if "JPY_PARENT_PID" in os.environ:
            # ipykernel exits when its parent is not the grader it was told of, unless told PID 1 (which
            # never changes); that it dies with the grader is ensured by PDEATHSIG instead.
            os.environ["JPY_PARENT_PID"] = "1"
        try:
            _become(command, start)
        finally:
            os._exit(127)
    # SIGINT reaches the command directly (same process group); PID 1 ignores what it has no handler for.
    signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(child, signal.SIGTERM))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if pid == child:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _die_with_the_grader() -> None:
    """SIGKILL this process (and so the kernel it becomes or waits for) when the grading process dies.

    A grading worker killed from outside (a Dask worker lost mid-run, a pool worker past its time) would
    otherwise leave its kernel running; the signal survives exec, and the grader's thread that starts
    the kernel waits for its run, so it cannot fire early.
    """
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the grader died before the line above: nobody would signal this process
        os._exit(1)


def _private_root(args) -> list[str]:
    built = namespaces.private_root(args.isolate, args.ro, args.workdir, args.quota, args.sockets, args.shm)
    namespaces.drop_mount_powers()
    return [built, "no power over its mounts (nested user namespace)"]


def _become_pid_one() -> None:
    """Fork: the child, PID 1 of the new PID namespace, goes on; this process waits and passes on its status.

    The grader knows this process; SIGINT reaches the child too (same process group), SIGTERM
    is passed on, and the child dies with this process (PDEATHSIG).
    """
    child = os.fork()
    if child == 0:
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(child, signal.SIGTERM))
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except ChildProcessError:
            os._exit(1)
        except InterruptedError:
            continue
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _limits(args, layers: Layers) -> None:
    limits = [
        (resource.RLIMIT_CORE, 0, "no core dumps"),
        (resource.RLIMIT_FSIZE, args.file_size, f"file size <= {args.file_size} bytes"),
    ]
    if args.memory:
        tree = any(item.startswith("memory:") for item in layers.enforced)
        name = (
            f"address space <= {args.memory} bytes per process (RLIMIT_AS)"
            if tree
            else f"memory: <= {args.memory} bytes per process only (RLIMIT_AS; no memory cgroup), and the process limit"
        )
        limits.append((resource.RLIMIT_AS, args.memory, name))
    if args.processes and not any("pids cgroup" in item for item in layers.enforced):
        if os.getuid() == 0:
            layers.missing.append("process limit: no pids cgroup, and RLIMIT_NPROC does not apply to root")
        else:
            limits.append((resource.RLIMIT_NPROC, args.processes, f"processes <= {args.processes} (per user)"))
    for which, value, name in limits:
        layers.attempt(name, lambda which=which, value=value: resource.setrlimit(which, (value, value)))


if __name__ == "__main__":
    main(sys.argv[1:])
