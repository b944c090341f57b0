"""Start a command (the grading kernel) inside the limits this machine can enforce.

    python -m int8lab.grading.sandbox --rw DIR --ro DIR ... --memory BYTES --processes N
        --report FILE -- COMMAND ...

Layers, each applied when the kernel supports it and reported either way:
  - resource limits: address space (memory), CPU time, file size, no core dumps;
  - a process-count limit: the pids cgroup the grader made for this submission (--cgroup),
    else RLIMIT_NPROC, which counts every process of the user and which root ignores;
  - a new user namespace and a new network namespace with no interface but a down loopback:
    no network at all (the kernel talks to the grader over Unix sockets);
  - Landlock: the filesystem outside the listed folders is invisible, writes are allowed only
    in the --rw folders.
What was enforced and what was not is written as one JSON object to the --report file,
which is opened before any restriction applies.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import sys

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

# Filesystem rights by the Landlock ABI that introduced them.
_FS_RIGHTS = {
    1: (1 << 13) - 1,  # execute, read/write files, read dirs, remove, make char/dir/reg/sock/fifo/block/sym
    2: 1 << 13,  # refer (link or rename across folders)
    3: 1 << 14,  # truncate
    5: 1 << 15,  # ioctl on devices
}
_READ_ONLY = 1 | 4 | 8  # execute, read file, read dir


LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET, LANDLOCK_SCOPE_SIGNAL = 1, 2


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _RulesetAttrScoped(ctypes.Structure):
    """ABI 6 and later: also scope signals and abstract Unix sockets to the sandbox."""

    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The Landlock ABI version of the running kernel, 0 when it has none."""
    version = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION)
    return max(int(version), 0)


def restrict_filesystem(read_only: list[str], read_write: list[str]) -> str:
    """Allow only the given folders (reading, or reading and writing) to this process and its children."""
    abi = landlock_abi()
    if abi < 1:
        raise OSError("Landlock is not available in this kernel")
    handled = sum(bits for version, bits in _FS_RIGHTS.items() if version <= abi)
    # From ABI 6 the kernel cannot signal processes outside the sandbox (the grader, other kernels).
    scoped = abi >= 6
    ruleset = (
        _RulesetAttrScoped(handled, 0, LANDLOCK_SCOPE_SIGNAL | LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET)
        if scoped
        else _RulesetAttr(handled)
    )
    fd = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(ruleset), ctypes.c_size_t(ctypes.sizeof(ruleset)), 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for paths, rights in ((read_only, _READ_ONLY), (read_write, handled)):
            for path in paths:
                if not os.path.exists(path):
                    continue
                parent = os.open(path, os.O_PATH | os.O_CLOEXEC)
                try:
                    # A rule on a file (not a folder) may only carry file rights.
                    allowed = rights if os.path.isdir(path) else rights & (1 | 2 | 4 | (1 << 14) | (1 << 15))
                    rule = _PathBeneathAttr(allowed & handled, parent)
                    if _libc.syscall(SYS_LANDLOCK_ADD_RULE, fd, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                        raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
                finally:
                    os.close(parent)
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if _libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, fd, 0):
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(fd)
    return f"landlock ABI {abi}" + (" (signals and abstract sockets scoped)" if scoped else "")


def join_cgroup(folder: str) -> str:
    """Move this process (and so its future children) into a cgroup the grader prepared."""
    with open(os.path.join(folder, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))
    with open(os.path.join(folder, "pids.max")) as limit:
        return f"processes <= {limit.read().strip()} (pids cgroup)"


def enter_namespaces() -> str:
    """A new user namespace (mapping this uid to itself) and a new, empty network namespace."""
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET):
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER | CLONE_NEWNET) failed")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")
    return "user and network namespaces"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m int8lab.grading.sandbox")
    parser.add_argument("--ro", action="append", default=[], help="a folder or file to allow reading")
    parser.add_argument("--rw", action="append", default=[], help="a folder to allow reading and writing")
    parser.add_argument("--memory", type=int, default=0, help="address-space limit in bytes (0: none)")
    parser.add_argument("--processes", type=int, default=0, help="process and thread limit (0: none)")
    parser.add_argument("--cgroup", help="a pids cgroup folder to join (its pids.max is the process limit)")
    parser.add_argument("--cpu-seconds", type=int, default=0, help="CPU time limit (0: none)")
    parser.add_argument("--file-size", type=int, default=1 << 30, help="largest file it may write, in bytes")
    parser.add_argument("--report", help="file to write what was and was not enforced to")
    parser.add_argument("--stderr", help="file to send the command's standard error to (for diagnosing crashes)")
    parser.add_argument("--integrity-log", help="file the kernel reports tampering to, through an inherited descriptor")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")

    if args.stderr:
        errors = os.open(args.stderr, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(errors, 2)
        os.close(errors)
    report = open(args.report, "a") if args.report else None  # noqa: SIM115 (closed before exec)
    enforced, missing = [], []

    def attempt(name, action):
        try:
            enforced.append(action() or name)
        except OSError as exc:
            missing.append(f"{name}: {exc}")

    if args.cgroup:
        attempt("pids cgroup", lambda: join_cgroup(args.cgroup))
    attempt("namespaces", enter_namespaces)
    limits = [
        (resource.RLIMIT_CORE, 0, "no core dumps"),
        (resource.RLIMIT_FSIZE, args.file_size, f"file size <= {args.file_size} bytes"),
    ]
    if args.memory:
        limits.append((resource.RLIMIT_AS, args.memory, f"memory <= {args.memory} bytes"))
    if args.cpu_seconds:
        limits.append((resource.RLIMIT_CPU, args.cpu_seconds, f"cpu <= {args.cpu_seconds} s"))
    if args.processes and not any("pids cgroup" in item for item in enforced):
        if os.getuid() == 0:
            missing.append("process limit: no pids cgroup, and RLIMIT_NPROC does not apply to root")
        else:
            limits.append((resource.RLIMIT_NPROC, args.processes, f"processes <= {args.processes} (per user)"))
    for which, value, name in limits:
        attempt(name, lambda which=which, value=value: resource.setrlimit(which, (value, value)))
    if args.integrity_log:
        # Opened before the filesystem is closed off; the kernel finds it by number, not by path.
        log_fd = os.open(args.integrity_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.set_inheritable(log_fd, True)
        os.environ["INT8LAB_INTEGRITY_FD"] = str(log_fd)
    attempt("filesystem", lambda: restrict_filesystem(args.ro, args.rw))
    if report:
        report.write(json.dumps({"enforced": enforced, "missing": missing}) + "\n")
        report.close()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
