"""Probes run in this process on trusted code: the reference solution must earn every point.

``int8lab grade`` calls ``check_reference`` before grading anyone, so a broken source notebook
or environment stops the run with a clear error instead of failing every student. The tests
use ``probe_in_process`` to judge wrong implementations without starting kernels.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import json
import os
import re
import sys
import time

import nbformat

from . import coverage, records, testcells
from .judge import Judge, Verdict
from .records import RecordError, Records, capture, decode, read_records

#: The reference solution's records, by the source notebook's sha256: its shapes and its self-check read the
#: same run, and the tests judge many patched runs of one source.
_REFERENCE: dict[str, Records] = {}


def probe_in_process(source_nb, patch: str = "", after: str | tuple[str, ...] | None = None) -> Records:
    """Records of the source notebook's probes, run here with its own solution cells.

    ``patch`` runs right after the cell whose grade_id is ``after`` (or each of several): the way a student's
    different code would replace part of the solution. Only trusted code belongs here.
    """
    _, tests = testcells.plan_tests(source_nb)
    by_id = {test.grade_id: test for test in tests}
    namespace: dict = {"__name__": "__main__"}
    module = dict(vars(records))  # a patch may rewrite the records module, as a student's code may in a kernel
    with _restored(module), capture() as lines, contextlib.redirect_stdout(io.StringIO()):
        for cell in source_nb.cells:
            meta = testcells.nbgrader_meta(cell)
            if cell.cell_type != "code" or not meta:
                continue
            grade_id = meta.get("grade_id", "")
            code = by_id[grade_id] if grade_id in by_id else None
            source = testcells.probe_source(code) if code else testcells.strip_magics(cell.source)
            try:
                exec(compile(source, f"<{grade_id}>", "exec"), namespace)
            except Exception:
                if code is None:
                    raise
            if patch and grade_id in ((after,) if isinstance(after, str) else after or ()):
                exec(compile(patch, "<patch>", "exec"), namespace)
    return read_records("\n".join(lines))


@contextlib.contextmanager
def _restored(module: dict):
    try:
        yield
    finally:
        vars(records).clear()
        vars(records).update(module)


def reference_records(source_nb) -> Records:
    """The records of the reference solution's own probes (run once per source notebook and process)."""
    digest = hashlib.sha256(nbformat.writes(source_nb).encode()).hexdigest()
    if digest not in _REFERENCE:
        _REFERENCE[digest] = probe_in_process(source_nb)
    return _REFERENCE[digest]


def reference_shapes(source_nb) -> dict:
    """``{(grade_id, statement): {name: shape}}`` of the reference solution's probe records (coverage.py)."""
    shapes = {}
    for cell, statement, record in reference_records(source_nb).entries:
        values = record.get("values")
        if not isinstance(values, dict):
            continue  # the reference raised here: nothing to cover (check_reference reports it)
        try:
            shapes[(cell, statement)] = {name: coverage.shape_of(decode(v)) for name, v in values.items()}
        except RecordError:
            continue
    return shapes


def judge_in_process(source_nb, patch: str = "", after: str | tuple[str, ...] | None = None) -> dict[str, Verdict]:
    records = probe_in_process(source_nb, patch, after) if patch else reference_records(source_nb)
    return Judge.from_source(source_nb).judge(records)


def check_reference(name: str, source_nb) -> dict:
    """The reference's shapes (``reference_shapes``); ``AssertionError`` naming the tests the reference of
    ``name`` fails."""
    shapes = reference_shapes(source_nb)
    failures = [
        v for v in Judge.from_source(source_nb, shapes).judge(reference_records(source_nb)).values() if not v.passed
    ]
    if failures:
        details = "; ".join(f"{v.grade_id}: {v.message}" for v in failures)
        raise AssertionError(f"the judge fails the reference solution of {name}: {details}")
    return shapes


#: Set (to anything), the self-check runs even where a passed one is remembered (and is remembered anew).
RECHECK_ENV = "INT8LAB_RECHECK"


def checked_references(sources: dict) -> dict:
    """``checked_reference`` of each of ``{name: source notebook}``: ``{name: its shapes, or its AssertionError}``,
    in the same order. A source that another process of this machine is checking at this moment comes last, when
    its outcome is kept: processes that start together (a Dask machine's workers, each with its judge process)
    share the checks out between them instead of all waiting behind the one that checks the first source."""
    outcomes, busy = {}, []
    for name, source in sources.items():
        try:
            outcomes[name] = checked_reference(name, source, wait=False)
        except AssertionError as exc:
            outcomes[name] = exc
        if outcomes[name] is None:
            busy.append(name)
    for name in busy:
        try:
            outcomes[name] = checked_reference(name, sources[name])
        except AssertionError as exc:
            outcomes[name] = exc
    return {name: outcomes[name] for name in sources}


def checked_reference(name: str, source_nb, wait: bool = True) -> dict | None:
    """``check_reference``, remembered on this machine: the shapes of a passed self-check are kept beside the model
    cache (``_remembered_folder``), under the sha256 of the source notebook and of everything the check's outcome
    depends on (``environment_digest``, read before and after the check: a check that changed it keeps nothing),
    and read there by the next check of the same: a grading's start, each judge process of each Dask worker. A
    failed check is never kept; where nothing can be kept safely, nothing is. Several processes of one machine
    checking the same at once wait for the first one's outcome (a file lock, ``LOCK_WAIT_SECONDS`` at most), or
    without ``wait`` get None at once; with ``RECHECK_ENV`` set, each runs its own check at once."""
    folder = _remembered_folder()
    if folder is None:
        return check_reference(name, source_nb)
    source = nbformat.writes(source_nb)
    key = _key(source)
    path = folder / f"{key}.json"
    if os.environ.get(RECHECK_ENV):
        shapes = check_reference(name, source_nb)
        _keep_shapes(path, shapes, key, source)
        return shapes
    with open(folder / f"{key}.lock", "a") as lock:
        if not _lock(lock, LOCK_WAIT_SECONDS if wait else 0) and not wait:
            return None  # another process checks it now
        shapes = _read_shapes(path)
        if shapes is None:
            shapes = check_reference(name, source_nb)  # AssertionError: nothing kept
            _keep_shapes(path, shapes, key, source)
    return shapes


def _key(source: str) -> str:
    return hashlib.sha256((environment_digest() + source).encode()).hexdigest()


#: How long a check waits for another process's check of the same (then it runs its own).
LOCK_WAIT_SECONDS = 300


def _lock(handle, seconds: float) -> bool:
    """An exclusive lock on ``handle`` within ``seconds``; False (and no lock) after that."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _keep_shapes(path, shapes: dict, key: str, source: str) -> None:
    _keep_text(path, json.dumps([[cell, step, names] for (cell, step), names in shapes.items()]), key, source)


def _keep_text(path, text: str, key: str, source: str) -> None:
    """``text`` written to ``path`` whole or not at all (a reader never sees half a file), and only if the work
    that made it left the environment as ``key`` (``_key(source)``, read before it) says: a self-check may write
    the model cache (a checkpoint, the digits data). The first keep of a process prunes the folder (``_prune``)."""
    if _key(source) != key:
        return
    _prune(path.parent)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        partial.write_text(text)
        partial.replace(path)
    except OSError:  # a full disk: the work is done all the same, the next process does it again
        partial.unlink(missing_ok=True)


#: A kept file no process has read or written for this long is deleted: each change of the code, the packages or
#: the model cache starts new keys, and the old files would pile up (a few hundred kB per change of a course).
UNUSED_DAYS = 30
#: A ``.part`` file this old was left by a writer that died before renaming it into place.
ORPHAN_SECONDS = 3600
_pruned_folders: set = set()


def _prune(folder) -> None:
    """Delete the kept files (``*.json``, their ``*.lock``) unused for ``UNUSED_DAYS`` and the orphaned ``*.part``
    files of ``folder``, once per process. A reader marks what it reads as used (``_used``). Deleting a file
    another process still needs costs it one check again, never a wrong answer: a key names its content."""
    if folder in _pruned_folders:
        return
    _pruned_folders.add(folder)
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not entry.name.endswith((".json", ".lock", ".part")):
            continue
        limit = ORPHAN_SECONDS if entry.name.endswith(".part") else UNUSED_DAYS * 86400
        try:
            if not entry.is_file(follow_symlinks=False) or now - entry.stat(follow_symlinks=False).st_mtime <= limit:
                continue
            if entry.name.endswith(".lock"):
                _unlink_lock_if_free(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:  # gone meanwhile, or not ours to delete
            continue


def _unlink_lock_if_free(path: str) -> None:
    """Delete a lock file that no process holds (taking it, so that none takes it meanwhile); a held one stays:
    deleting it would let a third process lock a new file and do the same work at the same time."""
    with open(path, "a") as lock:
        if _lock(lock, 0):
            os.unlink(path)


def _used(path) -> None:
    """Mark a kept file as read now, so that ``_prune`` keeps it (its lock too)."""
    for used in (path, path.with_name(path.name.split(".", 1)[0] + ".lock")):
        with contextlib.suppress(OSError):
            os.utime(used)


def _remembered_folder():
    """``<cache>-selfcheck`` beside the model cache, or None. Beside it, not in it: a kernel may read the model
    cache (its checkpoints), and could hold a lock on what it can open; this folder is in no kernel's sandbox.
    None where Landlock cannot keep the kernels from it (without Landlock a kernel could write a remembered
    check: every later grading would take its shapes), or where it cannot be written. The release page fragments
    kept here (``fragments.py``) go into every student's page as they are: this folder must stay out of every
    kernel's reach (``run._readable_paths``; tests/test_grading_stages.py checks it)."""
    from ..data import cache_dir
    from .landlock import landlock_abi

    if landlock_abi() == 0:
        return None
    cache = cache_dir()
    folder = cache.parent / f"{cache.name}-selfcheck"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def _read_shapes(path) -> dict | None:
    """The shapes a passed check kept in ``path``, or None (none kept, or not readable as such)."""
    try:
        entries = json.loads(path.read_text())
        shapes = {}
        for cell, statement, names in entries:
            if not (isinstance(cell, str) and isinstance(statement, int) and isinstance(names, dict)):
                return None
            shapes[(cell, statement)] = names
        _used(path)
        return shapes
    except (OSError, ValueError, TypeError):
        return None


def environment_digest() -> str:
    """sha256 of what a self-check's outcome depends on besides the source: int8lab's code, every installed
    distribution and its version, Python, this machine (its name and CPU flags: kernels' arithmetic differs
    with them), torch's thread count, the dataset, and the model cache's files (checkpoints and data; CIFAR-10's
    by size and time)."""
    import torch

    from ..data import cache_dir, dataset_name

    root = cache_dir()
    parts = [machine_digest(), dataset_name(), _cache_digest(str(root), _cache_listing(root))]
    parts.append(str(torch.get_num_threads()))  # read now: a notebook's setup may change it in this process
    # The variables that choose torch's kernels, its threads and the libraries it loads.
    parts += sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(ARITHMETIC_ENV) or k in LOADING_ENV)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


#: A file another process is writing, to rename into place (``name.<pid>.npz``, ``name.<pid>.part``).
_BEING_WRITTEN = re.compile(r"\.\d+\.\w+$")


def _cache_listing(root, attempts: int = 3) -> tuple:
    """The model cache's files: (relative path, size, mtime, inode, ctime), without the ones being written (a
    notebook's sweep writes its results beside the checkpoints) and those that went meanwhile."""
    listing = []
    try:
        paths = sorted(root.rglob("*")) if root.is_dir() else []
    except OSError:  # a folder removed during the walk: walk again
        if attempts <= 1:
            raise
        return _cache_listing(root, attempts - 1)
    for path in paths:
        if path.suffix in (".lock", ".part") or _BEING_WRITTEN.search(path.name):
            continue
        try:
            if not path.is_file():
                continue
            stat = path.stat()
        except OSError:  # gone since the walk (renamed or removed by the process that wrote it)
            continue
        listing.append((str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns))
    return tuple(listing)


ARITHMETIC_ENV = ("ATEN_", "ONEDNN_", "DNNL_", "MKL_", "OMP_", "KMP_", "OPENBLAS_", "TORCH_", "GOMP_")
LOADING_ENV = ("LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH")


@functools.cache
def machine_digest() -> str:
    """The part of ``environment_digest`` that a process computes once (half a second: every installed package)."""
    import importlib.metadata
    import platform
    import socket

    import torch

    from .cluster_worker import code_digest

    parts = [code_digest(), sys.version, platform.platform(), socket.gethostname(), torch.__config__.show()]
    parts += sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            parts.append(next((line for line in cpuinfo if line.startswith("flags")), ""))
    except OSError:
        parts.append(platform.processor())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@functools.cache
def _cache_digest(root: str, listing: tuple) -> str:
    """The model cache's files by content (CIFAR-10's, large, by size and time); ``listing``: their names, sizes
    and times, so that a file written since is read again."""
    parts = []
    for relative, size, mtime, _inode, _changed in listing:
        if relative.startswith("cifar10"):
            parts.append(f"{relative} {size} {mtime}")
        else:
            try:
                with open(os.path.join(root, relative), "rb") as handle:
                    parts.append(f"{relative} {hashlib.sha256(handle.read()).hexdigest()}")
            except OSError:  # removed since it was listed
                parts.append(f"{relative} gone")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
