"""Namespaces: no network, a private filesystem view, its own process list.

``enter`` makes a user namespace (this uid mapped to itself), a network namespace with only a
down loopback, and, where the machine allows, a mount and a PID namespace. ``private_root``
then builds, in a new tmpfs, a root holding only what the kernel needs:

    the read-only folders (system, Python, int8lab, the model cache), bound read-only;
    its working folder: a fresh tmpfs of ``quota`` bytes (the job's whole disk);
    its socket folder: a tmpfs of its own, 1 MiB and 64 inodes (room for sockets, not for data;
    the grader reaches it through ``/proc/PID/root``), where no link is followed;
    /proc of its own PID namespace; /dev/null, zero, random, urandom;
    /dev/shm: a tmpfs of its own, ``shm_bytes`` at most (POSIX shared memory: multiprocessing's
    semaphores, the tensors DataLoader workers hand over), never the host's, never another kernel's.

Nothing else of the machine is visible: not /tmp, not other kernels' sockets, not their
processes. Finally a nested user namespace takes away the power to change these mounts.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS, CLONE_NEWIPC = 0x00020000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOSYMFOLLOW, MS_BIND, MS_REC, MS_PRIVATE = 256, 4096, 16384, 1 << 18
MNT_DETACH = 2
SYS_PIVOT_ROOT = 155
DEVICES = ("null", "zero", "random", "urandom")
SOCKETS_TMPFS = "size=1m,nr_inodes=64,mode=0700"
SHARED_MEMORY = "/dev/shm"


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _map_ids(uid: int, gid: int) -> None:
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def enter(isolate: bool) -> list[str]:
    """Enter new namespaces; returns what is enforced. Mount and PID namespaces only with ``isolate``.

    Raises ``OSError`` when not even user and network namespaces can be made.
    """
    uid, gid = os.getuid(), os.getgid()
    base = CLONE_NEWUSER | CLONE_NEWNET
    if isolate and _libc.unshare(base | CLONE_NEWNS | CLONE_NEWPID) == 0:
        enforced = ["user and network namespaces", "mount namespace", "PID namespace"]
    else:
        _check(_libc.unshare(base), "unshare(user, network)")
        enforced = ["user and network namespaces"]
    _map_ids(uid, gid)
    # System V shared memory, semaphores and message queues outlive their process: in the machine's IPC
    # namespace a segment one kernel left under a known key was there for the next kernel of the same user.
    if _libc.unshare(CLONE_NEWIPC) == 0:
        enforced.append("IPC namespace")
    return enforced


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = lambda text: text.encode() if text is not None else None  # noqa: E731
    _check(_libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)), f"mount {target}")


def _bind(source: str, target: str, read_only: bool) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        # A remount inside a user namespace must keep the flags the original mount locks.
        locked = os.statvfs(target).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | locked)


def private_root(root: str, read_only: list[str], workdir: str, quota: int, sockets: str, shm_bytes: int) -> str:
    """Build the kernel's filesystem in ``root`` (an empty folder) and move into it (pivot_root).

    ``quota`` and ``shm_bytes``: the sizes in bytes of the working folder's tmpfs and of /dev/shm's.
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    special = {"/proc", "/dev", "/sys"}
    for path in read_only:  # links such as /lib -> usr/lib (merged /usr) are recreated as links
        if os.path.islink(path) and path not in special and not os.path.lexists(root + path):
            os.makedirs(os.path.dirname(root + path), exist_ok=True)
            os.symlink(os.readlink(path), root + path)
    for path in sorted({os.path.realpath(p) for p in read_only if os.path.exists(p)} - special):
        _bind(path, root + path, read_only=True)
    for device in DEVICES:
        _bind(f"/dev/{device}", f"{root}/dev/{device}", read_only=False)
    # Its own, as the working folder is: the host's /dev/shm is every process's (the grader's, other kernels').
    os.makedirs(root + SHARED_MEMORY)
    _mount("tmpfs", root + SHARED_MEMORY, "tmpfs", MS_NOSUID | MS_NODEV, f"size={shm_bytes},mode=1777")
    os.makedirs(f"{root}/proc")
    _mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + workdir)
    _mount("tmpfs", root + workdir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={quota},mode=0700")
    # Not the grader's folder on /tmp: a kernel wrote 1.3 GiB there, outside its quota. The grader
    # connects through this process's root, so a link the kernel leaves here must not be followed.
    os.makedirs(root + sockets)
    _mount("tmpfs", root + sockets, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOSYMFOLLOW, SOCKETS_TMPFS)
    os.makedirs(f"{root}/.old")
    _check(_libc.syscall(SYS_PIVOT_ROOT, root.encode(), f"{root}/.old".encode()), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/.old", MNT_DETACH), "umount the old root")
    os.rmdir("/.old")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(workdir)
    return (
        f"private root: {len(read_only)} folders read-only, working folder on a tmpfs of {quota} bytes, "
        f"socket folder on a tmpfs of its own ({SOCKETS_TMPFS.rsplit(',', 1)[0]}, links not followed), "
        f"{SHARED_MEMORY} on a tmpfs of its own of {shm_bytes} bytes"
    )


def drop_mount_powers() -> None:
    """A nested user namespace: the kernel keeps no capability over the mounts built for it."""
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER), "unshare(user)")
    _map_ids(uid, gid)
