"""The grading pipeline's data: statuses, limits, jobs and results (typed, never parsed out of logs)."""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass, field
from pathlib import Path


class GradingError(RuntimeError):
    """The grader itself cannot run (bad input folder, broken course or install); nothing was graded. Also what
    failed after grading (the gradebook, the feedback pages). ``details``: what grading.log keeps beyond the
    message (a command's output)."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


class Status(enum.Enum):
    """What happened to one submission; every status but OK explains itself in the result's reason."""

    OK = "ok"
    TIMEOUT = "timeout"
    KERNEL_DIED = "kernel_died"
    DISK_QUOTA = "disk_quota"
    INVALID_NOTEBOOK = "invalid_notebook"
    INVALID_STUDENT_ID = "invalid_student_id"
    MISSING = "missing"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Limits:
    cell_timeout: int = 60
    notebook_timeout: int = 600
    memory_bytes: int = 6 << 30
    disk_bytes: int = 512 << 20
    #: The kernel's /dev/shm, a tmpfs of its own (multiprocessing's semaphores, DataLoader workers' batches): room for
    #: all of the lab's data at once (CIFAR-10's two sets in float32, 703 MiB), as a student's laptop gives; its pages
    #: count in the kernel's memory cgroup like any other.
    shm_bytes: int = 1 << 30
    processes: int = 128
    #: Run the release's demonstration cells (plots, studies) so that the feedback shows their output;
    #: when False they are skipped for speed and the feedback shows their source with a note.
    run_demos: bool = True
    #: Sandbox layers (the start of their names in the sandbox's report) without which a kernel must not start:
    #: those the grader's check kernel got on this machine (``pipeline.required_layers``), so that a kernel
    #: that could not make one (say, a student exhausting the user's namespaces meanwhile) is refused, not run
    #: with less.
    required_layers: tuple = ()


@dataclass(frozen=True)
class Receipt:
    """What nbgrader's exchange wrote beside a submission, as parsed by intake (``intake.read_receipt``)."""

    #: when the student submitted (``timestamp.txt``), in UTC without a zone, as nbgrader's gradebook keeps it
    timestamp: datetime.datetime | None = None
    #: ``submission_secret.txt``, which names the student's feedback page in the exchange
    secret: str | None = None
    #: why a file that was there was left out
    problems: tuple[str, ...] = ()


@dataclass
class Job:
    """One student's submission of one assignment, as intake found it."""

    student: str
    assignment: str
    notebook: Path | None
    status: Status = Status.OK
    reason: str = ""
    receipt: Receipt = field(default_factory=Receipt)


@dataclass
class Result:
    """What grading one job produced; ``verdicts`` are the judge's, the only source of scores."""

    job: Job
    status: Status
    reason: str = ""
    verdicts: dict = field(default_factory=dict)  # grade_id -> judge.Verdict
    #: The notebook for OUT/autograded (release tests, the judge's messages), in the process that judged it only.
    graded: object = None
    sandbox: dict | None = None
    seconds: float = 0.0
    #: Wall-clock seconds of its steps (``run.STEPS``, then the judge's): grading.log gives their medians.
    steps: dict = field(default_factory=dict)
    #: The Dask worker that ran it (``--dask``); empty for the local pool and for jobs that never ran.
    worker: str = ""
    #: Its feedback page's HTML, rendered where it was judged (``pages.py``), if it was: OUT/feedback gets it.
    page: str | None = None
    #: That notebook's file as nbformat writes it, made where it was judged: what travels back and what the merge
    #: writes, so that the client never parses or writes it again. None when nothing ran.
    graded_file: bytes | None = None
    #: Grade ids of the answers left as released (``merge.unchanged_answers``), found where it was judged.
    unchanged: frozenset = frozenset()
