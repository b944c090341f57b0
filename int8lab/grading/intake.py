"""Intake: find ``<student>/<assignment>/<notebook>.ipynb`` submissions in a folder or a .zip.

Nothing here follows a link or opens anything but a regular file: a symlink, FIFO or device
among the submissions is refused with a status that says so, and never read.

Beside a notebook handed in through nbgrader's exchange lie the two files ``nbgrader submit`` wrote
(``nbgrader collect`` copies them): ``timestamp.txt`` and ``submission_secret.txt``. They are read as the
student's (the student owned them in the exchange): bounded, parsed, and written into OUT again from the
parsed value only (``read_receipt``, ``write_receipt``).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import stat
import zipfile
import zlib
from pathlib import Path

import nbformat

from .model import GradingError, Job, Receipt, Status

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


#: The two files of nbgrader's exchange beside a submitted notebook, and the most of each that is read.
TIMESTAMP_FILE, SECRET_FILE = "timestamp.txt", "submission_secret.txt"
MAX_TIMESTAMP_BYTES, MAX_SECRET_BYTES = 128, 1024
#: nbgrader's timestamp (``Exchange.timestamp_format``, "%Y-%m-%d %H:%M:%S.%f %Z"): a date, a time, and a zone
#: that is a name (UTC, CET, Europe/Paris) or a number. Only this shape reaches nbgrader's own parser, which
#: would open a zone given as a path (dateutil's gettz).
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,6})?"
    r"( ([A-Za-z][A-Za-z0-9_+\-]{0,40}(/[A-Za-z0-9_+\-]{1,40}){0,3}|[+-]?\d{1,5}))?"
)
#: nbgrader writes ``secrets.token_hex(64)``; any printable ASCII without spaces is kept byte for byte, since
#: the student's copy in their exchange cache must hash to the same feedback page name.
_SECRET = re.compile(rf"[!-~]{{1,{MAX_SECRET_BYTES}}}")
#: How the timestamp is written into OUT: nbgrader's default format, in UTC.
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f UTC"


def parse_timestamp(text: str) -> datetime.datetime:
    """The time of an nbgrader timestamp as nbgrader reads it (``nbgrader.utils.parse_utc``: UTC, no zone, as its
    gradebook keeps times); ValueError if ``text`` is not one."""
    from nbgrader.utils import parse_utc

    text = text.strip()
    if not _TIMESTAMP.fullmatch(text):
        raise ValueError("not a timestamp in nbgrader's format (YYYY-MM-DD HH:MM:SS.ffffff ZONE)")
    return parse_utc(text)


def read_receipt(folder: Path) -> Receipt:
    """What nbgrader's exchange wrote beside a submission in ``folder``: each file read if it is a regular file
    of bounded size (never through a link), then parsed; a file that is not what nbgrader writes is left out,
    with the reason in ``problems``. A file that is absent (a submission not from the exchange) is no problem."""
    timestamp, secret, problems = None, None, []
    text = _read_text(folder / TIMESTAMP_FILE, MAX_TIMESTAMP_BYTES, problems)
    if text is not None:
        try:
            timestamp = parse_timestamp(text)
        except (ValueError, OverflowError) as exc:  # dateutil's errors are ValueErrors, a year out of range too
            problems.append(f"{TIMESTAMP_FILE} ignored: {exc}"[:300])
    text = _read_text(folder / SECRET_FILE, MAX_SECRET_BYTES, problems)
    if text is not None:
        if _SECRET.fullmatch(text):
            secret = text
        else:
            problems.append(f"{SECRET_FILE} ignored: not printable ASCII without spaces, as nbgrader writes it")
    return Receipt(timestamp, secret, tuple(problems))


def _read_text(path: Path, limit: int, problems: list[str]) -> str | None:
    if not os.path.lexists(path):
        return None
    try:
        return read_regular_file(path, limit).decode("ascii")
    except InvalidNotebook as exc:
        problems.append(f"{path.name} ignored: {exc}")
    except UnicodeDecodeError:
        problems.append(f"{path.name} ignored: not ASCII text")
    return None


def write_receipt(folder: Path, receipt: Receipt) -> None:
    """The receipt's files in ``folder`` (a folder of OUT), from the parsed values only."""
    if receipt.timestamp is not None:
        (folder / TIMESTAMP_FILE).write_text(receipt.timestamp.strftime(TIMESTAMP_FORMAT))
    if receipt.secret is not None:
        (folder / SECRET_FILE).write_text(receipt.secret)


def read_notebook(path: Path):
    """Parse a submitted notebook, or raise ``InvalidNotebook`` saying why it is not one."""
    return parse_notebook(read_regular_file(path, MAX_NOTEBOOK_BYTES))


#: The deepest nesting of arrays and objects a submitted notebook may have (a notebook's own is under 20, a
#: widget's state a few more). A limit of the file's, not of the reader's stack: parsing and validating a file
#: nested some hundreds deep fails or not by how deep the caller's stack already is (a Dask task's thread is
#: deeper than a pool worker), and the same file must be the same verdict everywhere.
MAX_JSON_DEPTH = 100
#: A JSON string (skipped whole: its brackets are text) or one bracket.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def parse_notebook(data: bytes):
    """``data`` (a submitted file's bytes, ``read_regular_file``'s) as a v4 notebook, or ``InvalidNotebook``."""
    try:
        text = data.decode(json.detect_encoding(data))
        depth = deepest = 0
        for token in _JSON_TOKEN.finditer(text):
            bracket = token.group(0)
            if bracket in "[{":
                depth += 1
                deepest = max(deepest, depth)
            elif bracket in "]}":
                depth -= 1
        if deepest > MAX_JSON_DEPTH:
            raise InvalidNotebook(f"JSON nested {deepest} deep, more than the {MAX_JSON_DEPTH} a notebook may be")
        raw = json.loads(text)
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
    expected, receipt = folder / notebook, read_receipt(folder)
    if os.path.lexists(expected):
        return Job(student.name, assignment, expected, receipt=receipt)
    # Hidden notebooks are what archivers (._name) and editors leave, not a renamed submission.
    others = sorted(p for p in folder.iterdir() if p.suffix == ".ipynb" and not p.name.startswith("."))
    if len(others) == 1:
        return Job(student.name, assignment, others[0], reason=f"graded {others[0].name} (renamed)", receipt=receipt)
    return Job(student.name, assignment, None, Status.MISSING, f"no {notebook} in {assignment}/")
