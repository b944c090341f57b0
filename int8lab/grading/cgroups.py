"""Per-submission pids cgroups (v1 or v2), when this machine lets the grader make them."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


class PidsCgroups:
    """A parent group for one grading run, and a child group per kernel."""

    def __init__(self, base: Path):
        self.base = base

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
                return cls(base)
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

    def remove(self, group: Path) -> None:
        for process in (group / "cgroup.procs").read_text().split():
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
        try:
            self.base.rmdir()
        except OSError:
            pass

    def pids(self, group: Path) -> list[int]:
        try:
            return [int(pid) for pid in (group / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []
