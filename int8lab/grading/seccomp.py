"""Seccomp: refuse the few system calls that reach past the namespaces and Landlock.

  - ``socket`` and ``socketpair`` of the families the lab does not use (EAFNOSUPPORT): the network
    namespace has no interface, but it does not cover AF_VSOCK (the hypervisor answered a red
    team's connect), and AF_PACKET or most netlink protocols reach further into the kernel.
    The kernel talks to the grader over Unix sockets (``run.py``: transport ipc). Allowed besides:
    AF_INET and AF_INET6, because ipykernel binds a pipe on 127.0.0.1 that carries the output of
    forked processes (it reaches only the namespace's own loopback), and AF_NETLINK of protocol
    NETLINK_ROUTE, which sees only that namespace, because libzmq lists interfaces (getifaddrs)
    for that bind and aborts the kernel when it cannot;
  - io_uring (ENOSYS, as on a kernel without it, so libraries fall back to plain calls): its
    operations open sockets and files without passing through this filter;
  - the key syscalls ``add_key``, ``request_key``, ``keyctl`` (EPERM): keys of the grader's
    session (tokens, credentials) stay out of reach whatever keyring the kernel names;
  - new namespaces and joining others (EPERM): ``unshare`` with any CLONE_NEW* flag, ``clone`` with
    any but CLONE_NEWTIME (its bit is the exit signal's there), and ``setns``. Every user namespace a
    kernel made counted against the grading user's ``max_user_namespaces``: a loop of them used the
    limit up, and the kernels of other submissions could not start. ``unshare`` of other flags
    (CLONE_FILES, CLONE_FS, ...), ``fork`` and threads stay allowed;
  - ``clone3`` (ENOSYS, as on a kernel before 5.3): its flags are in a struct the filter cannot read;
    glibc (threads, ``posix_spawn``) then falls back to ``clone``, whose flags it can.

A classic BPF program written by hand (no libseccomp on the launcher's path); it first checks the
architecture, since syscall numbers differ between them: a call of another ABI (32-bit int 0x80,
x32) kills the process, because its numbers would be read with the wrong table.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

_libc = ctypes.CDLL(None, use_errno=True)

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
RET_ALLOW, RET_KILL_PROCESS, RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
LD_ABS_W, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
NR_OFFSET, ARCH_OFFSET, ARG0_OFFSET, ARG2_OFFSET = 0, 4, 16, 32  # in struct seccomp_data (little endian)
X32_SYSCALL_BIT = 0x40000000
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, NETLINK_ROUTE = 1, 2, 10, 16, 0
ANY_PROTOCOL = (AF_UNIX, AF_INET, AF_INET6)
CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x00000080, 0x00020000, 0x02000000, 0x04000000
CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x08000000, 0x10000000, 0x20000000, 0x40000000
#: The flags of ``clone`` that make a namespace (CLONE_NEWTIME's bit is within its exit signal, CSIGNAL).
CLONE_NEW_ANY = (
    CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
)
#: The flags of ``unshare`` that make a namespace.
UNSHARE_NEW_ANY = CLONE_NEW_ANY | CLONE_NEWTIME
#: What ``socket`` may open, for the report.
ALLOWED = "AF_UNIX, AF_INET, AF_INET6 (loopback of its own network namespace), AF_NETLINK of protocol NETLINK_ROUTE"


class _Arch:
    def __init__(self, audit: int, sockets: tuple, keys: tuple, io_uring: tuple, spawn: tuple, x32: bool = False):
        self.audit, self.sockets, self.keys, self.io_uring, self.x32 = audit, sockets, keys, io_uring, x32
        self.unshare, self.clone, self.clone3, self.setns = spawn


# socket, socketpair; add_key, request_key, keyctl; io_uring_setup, _enter, _register; unshare, clone, clone3,
# setns. The flags are args[0] of clone on both (aarch64 swaps only its last two arguments).
ARCHES = {
    "x86_64": _Arch(0xC000003E, (41, 53), (248, 249, 250), (425, 426, 427), (272, 56, 435, 308), x32=True),
    "aarch64": _Arch(0xC00000B7, (198, 199), (217, 218, 219), (425, 426, 427), (97, 220, 435, 268)),
}


class _Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]


def _refuse(number: int, error: int) -> list[tuple]:
    return [(JEQ_K, 0, 1, number), (RET_K, 0, 0, RET_ERRNO | error)]


def _refuse_flags(number: int, flags: int, error: int) -> list[tuple]:
    # Both branches return, as in ``_allowed_sockets_only``. The low half of args[0] holds every flag tested:
    # clone reads only that half, and unshare refuses (EINVAL) a flag in the high half.
    return [
        (JEQ_K, 0, 4, number),
        (LD_ABS_W, 0, 0, ARG0_OFFSET),
        (JSET_K, 0, 1, flags),
        (RET_K, 0, 0, RET_ERRNO | error),
        (RET_K, 0, 0, RET_ALLOW),
    ]


def _allowed_sockets_only(number: int) -> list[tuple]:
    # Every branch returns, so loading the arguments over the syscall number is harmless.
    families = [(JEQ_K, len(ANY_PROTOCOL) + 3 - i, 0, family) for i, family in enumerate(ANY_PROTOCOL)]
    return [
        (JEQ_K, 0, len(families) + 6, number),
        (LD_ABS_W, 0, 0, ARG0_OFFSET),  # the family, an int: the low half of args[0]
        *families,
        (JEQ_K, 0, 2, AF_NETLINK),
        (LD_ABS_W, 0, 0, ARG2_OFFSET),  # the protocol
        (JEQ_K, 1, 0, NETLINK_ROUTE),
        (RET_K, 0, 0, RET_ERRNO | errno.EAFNOSUPPORT),
        (RET_K, 0, 0, RET_ALLOW),
    ]


def program(arch: _Arch) -> list[tuple]:
    """The filter as (code, jt, jf, k) instructions."""
    steps = [(LD_ABS_W, 0, 0, ARCH_OFFSET), (JEQ_K, 1, 0, arch.audit), (RET_K, 0, 0, RET_KILL_PROCESS)]
    steps.append((LD_ABS_W, 0, 0, NR_OFFSET))
    if arch.x32:
        steps += [(JGE_K, 0, 1, X32_SYSCALL_BIT), (RET_K, 0, 0, RET_KILL_PROCESS)]
    for number in arch.io_uring:
        steps += _refuse(number, errno.ENOSYS)
    for number in arch.keys:
        steps += _refuse(number, errno.EPERM)
    steps += _refuse(arch.clone3, errno.ENOSYS) + _refuse(arch.setns, errno.EPERM)
    steps += _refuse_flags(arch.unshare, UNSHARE_NEW_ANY, errno.EPERM)
    steps += _refuse_flags(arch.clone, CLONE_NEW_ANY, errno.EPERM)
    for number in arch.sockets:
        steps += _allowed_sockets_only(number)
    return [*steps, (RET_K, 0, 0, RET_ALLOW)]


def machine() -> str:
    """This process's architecture as the filter knows it ('' for a 32-bit Python on a 64-bit machine)."""
    return platform.machine() if struct.calcsize("P") == 8 else ""


def install() -> str:
    """Install the filter on this process and every process it starts; returns what it enforces.

    Raises ``OSError`` when this machine's architecture is unknown to the filter or the kernel refuses it.
    """
    arch = ARCHES.get(machine())
    if arch is None:
        raise OSError(f"no syscall table for this machine ({platform.machine()}, {8 * struct.calcsize('P')}-bit)")
    steps = program(arch)
    filters = (_Filter * len(steps))(*[_Filter(*step) for step in steps])
    prog = _Program(len(steps), filters)
    # Required to install a filter without CAP_SYS_ADMIN; Landlock sets it too, but may be missing.
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0):
        raise OSError(ctypes.get_errno(), f"seccomp filter refused: {os.strerror(ctypes.get_errno())}")
    return (
        f"seccomp filter ({machine()}): sockets of family {ALLOWED} only, io_uring refused, "
        "key syscalls (add_key, request_key, keyctl) refused, no new namespace (unshare and clone of "
        "CLONE_NEW* flags, setns refused; clone3 ENOSYS)"
    )
