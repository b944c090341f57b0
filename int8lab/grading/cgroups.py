"""Per-submission cgroups (v1 or v2), when this machine lets the grader make them.

pids: the process limit (RLIMIT_NPROC does not apply to root). memory: one limit for the kernel's
whole process tree; RLIMIT_AS is per process, and four children of one kernel held 4.4 GiB
under a limit of 3 GiB. Either may be missing; the launcher then names what applied instead.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


class PidsCgroups:
    """A parent group for one grading run, and a child group per kernel; the same for memory if possible."""

    def __init__(self, base: Path, memory: Path | None = None):
        self.base = base
        self.memory = memory

    @classmethod
    def available(cls) -> PidsCgroups | None:
        """A parent group for this run, or None when no writable pids controller exists (then RLIMIT_NPROC)."""
        for candidate, unified in ((Path("/sys/fs/cgroup/pids"), False), (Path("/sys/fs/cgroup"), True)):
            controllers = candidate / "cgroup.controllers"
            if not candidate.is_dir() or (
                unified and (not controllers.exists() or "pids" not in controllers.read_text())
            ):
                continue
            base = candidate / f"int8lab-{os.getpid()}"
            try:
                base.mkdir(exist_ok=True)
                if unified:
                    (base / "cgroup.subtree_control").write_text("+pids")
                probe = base / "probe"
                probe.mkdir(exist_ok=True)
                (probe / "pids.max").write_text("8")
                probe.rmdir()
                return cls(base, _memory_base(base if unified else None))
            except OSError:
                try:
                    base.rmdir()
                except OSError:
                    pass
        return None

    def create(self, name: str, limit: int) -> Path | None:
        group = self.base / name
        try:
            group.mkdir(exist_ok=True)
            (group / "pids.max").write_text(str(limit))
            return group
        except OSError:
            return None

    def create_memory(self, name: str, limit: int) -> Path | None:
        """A memory group of ``limit`` bytes (swap included) for one kernel, or None."""
        if self.memory is None:
            return None
        group = self.memory / name
        try:
            group.mkdir(exist_ok=True)
            if (group / "memory.max").exists():
                (group / "memory.max").write_text(str(limit))
                if (group / "memory.swap.max").exists():
                    (group / "memory.swap.max").write_text("0")
            else:
                (group / "memory.limit_in_bytes").write_text(str(limit))
                if (group / "memory.memsw.limit_in_bytes").exists():
                    (group / "memory.memsw.limit_in_bytes").write_text(str(limit))
            return group
        except OSError:
            self.remove(group)
            return None

    def remove(self, group: Path) -> None:
        for process in self.pids(group):
            try:
                os.kill(int(process), signal.SIGKILL)  # a kernel that outlived its grading
            except (ProcessLookupError, ValueError):
                pass
        for _ in range(50):
            try:
                group.rmdir()
                return
            except OSError:
                time.sleep(0.1)

    def close(self) -> None:
        for base in (self.base, self.memory):
            try:
                if base:
                    base.rmdir()
            except OSError:
                pass

    def pids(self, group: Path) -> list[int]:
        try:
            return [int(pid) for pid in (group / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []


def _memory_base(unified: Path | None) -> Path | None:
    """A parent memory group for this run: under the grader's own memory group in v1 (so that the
    grader's limits still hold), beside the pids groups in v2 (``unified``); None when refused."""
    if unified is not None:
        try:
            (unified / "cgroup.subtree_control").write_text("+memory")
            return unified
        except OSError:
            return None
    hierarchy = Path("/sys/fs/cgroup/memory")
    try:
        own = next(
            line.split(":", 2)[2]
            for line in Path("/proc/self/cgroup").read_text().splitlines()
            if line.split(":", 2)[1] == "memory"
        )
        base = hierarchy / own.strip().lstrip("/") / f"int8lab-{os.getpid()}"
        base.mkdir(exist_ok=True)
        return base
    except (OSError, StopIteration, IndexError):
        return None
