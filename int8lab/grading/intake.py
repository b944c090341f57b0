"""Intake: find ``<student>/<assignment>/<notebook>.ipynb`` submissions in a folder or a .zip.

Nothing here follows a link or opens anything but a regular file: a symlink, FIFO or device
among the submissions is refused with a status that says so, and never read.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
import zlib
from pathlib import Path

import nbformat

from .model import GradingError, Job, Status

MAX_ZIP_BYTES = 2 << 30  # refuse archives that expand beyond 2 GiB
MAX_NOTEBOOK_BYTES = 64 << 20


class InvalidNotebook(ValueError):
    """The file is not a readable Jupyter notebook."""


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes; never follows a link or blocks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidNotebook(f"{path.name} cannot be opened ({exc.strerror}; links are not followed)") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidNotebook(f"{path.name} is not a regular file")
        if info.st_size > limit:
            raise InvalidNotebook(f"{path.name} is {info.st_size} bytes, more than the {limit} allowed")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise InvalidNotebook(f"{path.name} holds more than the {limit} bytes allowed")
    return data


def read_notebook(path: Path):
    """Parse a submitted notebook, or raise ``InvalidNotebook`` saying why it is not one."""
    try:
        raw = json.loads(read_regular_file(path, MAX_NOTEBOOK_BYTES))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidNotebook(f"not valid JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
        raise InvalidNotebook("JSON without a list of cells: not a Jupyter notebook")
    try:
        return nbformat.reads(json.dumps(raw), as_version=4)
    except Exception as exc:  # nbformat raises several types for malformed notebooks
        raise InvalidNotebook(f"not a valid notebook ({exc.__class__.__name__})") from None


def open_submissions(path: Path, scratch: Path) -> Path:
    """The folder holding ``<student>/<assignment>/`` folders; a .zip is extracted (safely) first."""
    if not path.exists():
        raise GradingError(f"{path} does not exist")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise GradingError(f"{path} is neither a folder nor a .zip archive")
        target = scratch / "input"
        try:
            _extract(path, target)
        except GradingError:  # a RuntimeError too, but already says what is wrong
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            # A bad CRC, a truncated member, an unknown compression or a password: nothing can be graded.
            raise GradingError(
                f"{path} is a damaged or unreadable .zip archive ({exc}); zip the submissions again, "
                "or unpack them yourself and grade the folder"
            ) from None
        path = target
    return path


def _extract(path: Path, target: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        total = sum(info.file_size for info in members)
        if total > MAX_ZIP_BYTES:
            raise GradingError(f"{path} expands to {total} bytes, more than the {MAX_ZIP_BYTES} allowed")
        for info in members:
            destination = (target / info.filename).resolve()
            if not destination.is_relative_to(target.resolve()):
                raise GradingError(f"{path} holds an unsafe path: {info.filename}")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise GradingError(f"{path} holds a symbolic link: {info.filename}")
        archive.extractall(target)


def valid_student_id(name: str) -> bool:
    """Ids nbgrader can store and that name a folder: printable, no separator, not hidden."""
    return bool(name) and name.isprintable() and not name.startswith(".") and "/" not in name and len(name) <= 128


def _is_folder(path: Path) -> bool:
    return stat.S_ISDIR(path.lstat().st_mode)


#: What macOS's archiver adds beside the folders it zips (resource forks): never anyone's submission.
ARCHIVER_FOLDER = "__MACOSX"


def find_jobs(root: Path, assignments: dict) -> list[Job]:
    """One job per (student, assignment) folder; the layout root is found even inside wrapper folders.

    Every folder that holds an assignment's folder is a student, whatever its name: a hidden or unusable id
    gets its row (``invalid_student_id``) rather than being skipped without a word.
    """
    for _ in range(4):  # a zip may wrap the layout in a folder or two (e.g. submitted/)
        students = [p for p in root.iterdir() if _is_folder(p) and p.name != ARCHIVER_FOLDER]
        if any(os.path.lexists(s / n) or os.path.lexists(s / f".{n}") for s in students for n in assignments):
            break
        if len(students) != 1:
            break
        root = students[0]
    jobs = []
    for student in sorted(root.iterdir()):
        if student.name == ARCHIVER_FOLDER:
            continue
        for name, assignment in assignments.items():
            folder = student / name
            if os.path.lexists(folder) or os.path.lexists(student / f".{name}"):
                jobs.append(_job(student, folder, name, assignment.notebook))
    return jobs


def _job(student: Path, folder: Path, assignment: str, notebook: str) -> Job:
    if not valid_student_id(student.name):
        return Job(student.name, assignment, None, Status.INVALID_STUDENT_ID, "not a usable student id")
    if not os.path.lexists(folder):  # nbgrader (formgrader, OUT/submitted) knows the folder by its exact name
        reason = f"the folder .{assignment}/ is hidden and was not graded: name it {assignment}/"
        return Job(student.name, assignment, None, Status.MISSING, reason)
    if not _is_folder(student) or not _is_folder(folder):
        return Job(student.name, assignment, None, Status.MISSING, "the submission is a link, not a folder: refused")
    expected = folder / notebook
    if os.path.lexists(expected):
        return Job(student.name, assignment, expected)
    # Hidden notebooks are what archivers (._name) and editors leave, not a renamed submission.
    others = sorted(p for p in folder.iterdir() if p.suffix == ".ipynb" and not p.name.startswith("."))
    if len(others) == 1:
        return Job(student.name, assignment, others[0], reason=f"graded {others[0].name} (renamed)")
    return Job(student.name, assignment, None, Status.MISSING, f"no {notebook} in {assignment}/")
