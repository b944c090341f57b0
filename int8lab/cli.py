"""The ``int8lab`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _choose_dataset(args) -> None:
    """``--dataset`` sets the lab-wide switch, which the kernels this command starts inherit."""
    import os

    from .data import DATASET_ENV

    if args.dataset:
        os.environ[DATASET_ENV] = args.dataset


def _demo(args) -> int:
    from .demo import run

    _choose_dataset(args)
    return run(Path(args.out), Path(args.json) if args.json else None, Path(args.solutions) if args.solutions else None)


def _grade(args) -> int:
    from .grading.model import GradingError, Limits
    from .grading.pipeline import grade

    _choose_dataset(args)
    memory, disk = args.memory << 20, args.disk << 20
    limits = Limits(args.timeout, args.notebook_timeout, memory, disk_bytes=disk, run_demos=not args.skip_demos)
    try:
        graded = grade(
            _path(args.submissions),
            _path(args.out),
            workers=args.workers,
            limits=limits,
            assignment_ids=args.assignment or None,
            solutions=_path(args.solutions),
            keep_work=args.keep_work,
            dask=args.dask,
            course_dir=_path(args.course_dir),
        )
    except (GradingError, OSError) as exc:  # OSError: a folder that cannot be read or written
        print(f"int8lab grade: {exc}", file=sys.stderr)
        return 2
    # The summary above named what failed after grading, and grading.log has its details.
    return 1 if graded.problems else 0


def _feedback(args) -> int:
    from .grading.pipeline import regenerate_feedback

    course = _path(args.course)
    try:
        problems = regenerate_feedback(course, args.assignment or None)
    except OSError as exc:
        problems = [exc]
    log = _log_details(course / "grading.log", problems)
    for problem in problems:
        more = f" (details in {log})" if log and getattr(problem, "details", "") else ""
        print(f"int8lab feedback: {problem}{more}", file=sys.stderr)
    return 1 if problems else 0


def _log_details(log: Path, problems: list) -> Path | None:
    """The problems' details (nbgrader's own output) appended to the course folder's grading.log; the log, or
    None when there was nothing to add or no log to add it to."""
    details = "".join(f"int8lab feedback: {p}\n{p.details}\n" for p in problems if getattr(p, "details", ""))
    if not details or not log.is_file():
        return None
    try:
        with open(log, "a") as handle:
            handle.write("\n" + details)
    except OSError:
        return None
    return log


def _path(argument: str | None) -> Path | None:
    """A path argument, absolute: relative ones are read from the folder the command runs in."""
    return Path(argument).resolve() if argument else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="int8lab", description="int8 post-training quantization lab")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the solution notebooks end to end and print the accuracy table")
    demo.add_argument(
        "--out", default="results", help="folder for the executed notebooks and figures (default: results)"
    )
    demo.add_argument("--json", metavar="PATH", help="also write the accuracy table as JSON to PATH")
    demo.add_argument("--solutions", metavar="DIR", help="the solution notebooks' folder (default: the repository's)")
    demo.set_defaults(run=_demo)
    grade = commands.add_parser(
        "grade",
        help="autograde a class: SUBMISSIONS is nbgrader's submitted/ layout (or a .zip of it)",
        description="Autograde <student_id>/<assignment_id>/<notebook>.ipynb submissions with nbgrader, each in "
        "its own sandboxed kernel, and write OUT/int8lab-grades.csv, OUT/int8lab-tests.csv and OUT/feedback/. "
        "Exit status 0 when every submission was graded, whatever the scores; 1 when the gradebook or the "
        "feedback pages could not be written (the summary says which; OUT/grading.log has the details); 2 when "
        "nobody could be graded.",
    )
    grade.add_argument(
        "submissions",
        nargs="?",
        help="folder in nbgrader's submitted/ layout, or a .zip of it (default: the folder nbgrader collect fills "
        "in the course folder)",
    )
    grade.add_argument(
        "--course-dir",
        metavar="DIR",
        help="the nbgrader course folder, whose nbgrader_config.py names the course, the exchange and the late "
        "penalty (default: autograder/ beside the solutions' folder, if it has one)",
    )
    grade.add_argument("--out", required=True, help="course folder for the gradebook, feedback and CSV files")
    grade.add_argument("--workers", type=int, default=2, help="submissions graded at once (default: 2)")
    grade.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the notebooks on a Dask cluster: tcp://HOST:PORT of a running `dask scheduler`, or local "
        "(a LocalCluster of --workers processes); the workers judge and render the feedback pages, the gradebook "
        "and the reports stay here",
    )
    grade.add_argument("--timeout", type=int, default=60, help="seconds one cell may run (default: 60)")
    grade.add_argument(
        "--notebook-timeout", type=int, default=600, help="seconds a whole notebook may run (default: 600)"
    )
    grade.add_argument("--memory", type=int, default=6144, help="memory limit per kernel in MiB (default: 6144)")
    grade.add_argument("--disk", type=int, default=512, help="disk each notebook may write, in MiB (default: 512)")
    grade.add_argument("--assignment", action="append", help="grade only this assignment (repeatable)")
    grade.add_argument(
        "--skip-demos",
        action="store_true",
        help="do not run the release's plot and study cells (no test needs them; about half the time of a "
        "notebook): the feedback then shows their source with a note instead of their output",
    )
    grade.add_argument(
        "--solutions", metavar="DIR", help="the source notebooks' folder, with hidden tests (default: ./solutions)"
    )
    grade.add_argument("--keep-work", action="store_true", help="keep each submission's scratch folder in OUT/.work")
    grade.set_defaults(run=_grade)
    feedback = commands.add_parser(
        "feedback",
        help="regenerate the feedback pages of a graded course folder (after manual grading): each page one file, "
        "its math typeset as MathML, no script",
    )
    feedback.add_argument("course", help="the OUT folder of int8lab grade")
    feedback.add_argument("--assignment", action="append", help="only this assignment (repeatable)")
    feedback.set_defaults(run=_feedback)
    for command in (demo, grade):
        command.add_argument(
            "--dataset",
            choices=("digits", "cifar10"),
            help="the dataset (default: $INT8LAB_DATASET, or digits); CIFAR-10 must be in the cache's cifar10/ folder",
        )
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
