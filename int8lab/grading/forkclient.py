"""The warm kernel's stand-in for the kernel manager: asks the worker's fork server for a sandboxed kernel.

    python forkclient.py SERVER_SOCKET PID_FILE SANDBOX_ARGUMENT ... -- COMMAND ...

jupyter_client starts this small process (no torch, no int8lab: it starts in milliseconds) as if it were the
kernel. It sends its arguments and environment to the fork server (``forkserver.py``), which forks a child
that enters the sandbox (``sandbox.main``) and becomes the kernel. It writes the child's PID to PID_FILE
(the grader reaches the kernel's sockets through ``/proc/PID/root``), passes SIGINT on to the child's process
group and SIGTERM to the child, and exits with the child's status. When it dies, however (SIGKILL from the
grader, or the grader's own death: PDEATHSIG), the server sees its connection close and kills the child,
and so the whole sandbox. The server serves only a process whose parent or grandparent is its own parent (the
grading process): a client that the grader or one of its workers started, never a kernel.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

#: Written beside PID_FILE when the fork server, not the kernel, failed: the grader then runs the submission again
#: in a kernel started from nothing, and never reports the server's fault as the student's kernel dying.
SERVER_LOST_FILE = "fork-server-lost"
#: How long the server may take to fork a kernel (it forks one at a time, each in milliseconds).
PID_REPLY_SECONDS = 120


def main(argv: list[str]) -> int:
    server, pid_file, *sandbox_argv = argv
    _die_with_the_grader()
    try:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(PID_REPLY_SECONDS)
        connection.connect(server)
        request = {"argv": sandbox_argv, "env": dict(os.environ)}
        connection.sendall(json.dumps(request).encode() + b"\n")
        replies = connection.makefile("r")
        child = int(replies.readline().split()[1])  # "PID <pid>"
        connection.settimeout(None)
    except (OSError, ValueError, IndexError) as exc:
        return _server_lost(pid_file, f"no kernel from the fork server ({type(exc).__name__}: {exc})")
    signal.signal(signal.SIGINT, lambda signum, frame: _signal(os.killpg, child, signum))
    signal.signal(signal.SIGTERM, lambda signum, frame: _signal(os.kill, child, signum))
    partial = pid_file + ".partial"
    with open(partial, "w") as handle:
        handle.write(str(child))
    os.replace(partial, pid_file)
    line = replies.readline()  # "EXIT <status>", or nothing if the server died
    if line.startswith("EXIT "):
        return int(line.split()[1])
    return _server_lost(pid_file, "the fork server stopped while its kernel ran")


def _server_lost(pid_file: str, why: str) -> int:
    with open(os.path.join(os.path.dirname(pid_file), SERVER_LOST_FILE), "w") as handle:
        handle.write(why[:500])
    return 1


def _die_with_the_grader() -> None:
    """SIGKILL this process when the grading worker dies: the server then kills the kernel it forked."""
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(1)


def _signal(send, pid: int, signum: int) -> None:
    try:
        send(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
