"""A command run with one folder read-only, as a shared cache that another Unix user owns is for a student.

The suite may run as root, for whom file modes forbid nothing: the folder is bind-mounted read-only in a user and
mount namespace of the command's own (``unshare``), so that any write fails with EROFS, root's included.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

_MOUNT_THEN_RUN = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


def read_only_command(folder: Path | str, argv: list[str]) -> list[str]:
    """``argv`` run with ``folder`` (which must exist) mounted read-only for it and every process it starts."""
    return ["unshare", "--user", "--map-root-user", "--mount", "--", "sh", "-c", _MOUNT_THEN_RUN, str(folder), *argv]


@functools.cache
def _works() -> str | None:
    """None when a write under a read-only folder fails as it must; else why it could not be tried."""
    if shutil.which("unshare") is None:
        return "no unshare command (util-linux)"
    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run(
            read_only_command(folder, ["touch", f"{folder}/probe"]), capture_output=True, text=True, timeout=60
        )
    if "Read-only file system" in probe.stderr:
        return None
    return f"unshare could not mount a folder read-only here: {probe.stderr.strip()[-300:]}"


def require_read_only_mounts() -> None:
    """Skip, saying why, where this machine allows no user namespace (the grading sandbox needs them too)."""
    reason = _works()
    if reason is not None:
        pytest.skip(reason)
