"""Grade the same generated submissions with int8lab and with plain nbgrader; print the times and ratios.

    .venv/bin/python benchmarks/bench_grading.py [--per-notebook 20] [--workers 2] [--no-plain]

1. `int8lab grade --workers N --skip-demos`, then `int8lab grade --workers N` (with the plots), each with
   grading.log's medians of a notebook's steps (kernel start, setup cell, cells, judge, page);
2. plain `nbgrader autograde`, one submission after another, in a course built from the same sources
   (what an instructor would run without int8lab); it always runs every cell, plots included.
Targets on a 2-core machine (issue 24): ratio >= 4 with --skip-demos and >= 2.5 with the plots. Both use
the model cache. On a machine shared with other work the figures are noisy: say so when quoting them.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from sample_submissions import ASSIGNMENTS, submission, write_submission  # noqa: E402

from int8lab import trained_model  # noqa: E402


def make_class(root: Path, per_notebook: int) -> list[tuple[str, str]]:
    """``per_notebook`` submissions of each notebook, one in four of them unsolved; each student's answer cells
    hold a line of their own, as a real class's differ (the feedback pages remember what recurs: the same answers
    in every notebook would make a page cost less than it does)."""
    jobs = []
    for index in range(per_notebook):
        student = f"student{index:02d}"
        for assignment in ASSIGNMENTS:
            notebook = submission(assignment, solved=index % 4 != 3, edit=lambda nb, who=student: _own_words(nb, who))
            write_submission(root, student, assignment, notebook)
            jobs.append((student, assignment))
    return jobs


def _own_words(notebook, student: str) -> None:
    for cell in notebook.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source += f"\n# {student}'s own line" if cell.cell_type == "code" else f"\n\n{student}'s own words."


def plain_nbgrader(course: Path, submitted: Path) -> float:
    course.mkdir(parents=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    (course / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.CourseDirectory.root = {str(course)!r}\nc.Execute.timeout = 120\n"
    )
    shutil.copytree(ROOT / "solutions", course / "source")
    for assignment in ASSIGNMENTS:
        subprocess.run(
            [sys.executable, "-m", "nbgrader", "generate_assignment", assignment, "--force"],
            cwd=course,
            env=env,
            check=True,
            capture_output=True,
        )
    shutil.copytree(submitted, course / "submitted")
    started = time.perf_counter()
    for assignment in ASSIGNMENTS:
        result = subprocess.run(
            [sys.executable, "-m", "nbgrader", "autograde", assignment, "--force"],
            cwd=course,
            env=env,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            print(result.stdout[-2000:], result.stderr[-2000:])
    return time.perf_counter() - started


def int8lab_grade(submitted: Path, out: Path, workers: int, options: list[str]) -> tuple[float, str]:
    """Seconds of ``int8lab grade`` and the lines of its grading.log on where the seconds went."""
    command = [sys.executable, "-m", "int8lab", "grade", str(submitted), "--out", str(out)]
    command += ["--workers", str(workers), "--solutions", str(ROOT / "solutions"), *options]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    log = (out / "grading.log").read_text()
    return seconds, "".join(line + "\n" for line in log.splitlines() if re.match(r"(phase|median|mean) ", line))


def _load() -> str:
    """The machine's load when a figure was taken: other work on the cores makes the figures noisy."""
    return "(load average over the last 1, 5, 15 minutes: {:.1f} {:.1f} {:.1f})".format(*os.getloadavg())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-notebook", type=int, default=20, help="submissions of each notebook")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-plain", action="store_true", help="time int8lab grade only")
    args = parser.parse_args()
    trained_model("digits", progress=False)
    trained_model("digits", bias=True, progress=False)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        submitted = scratch / "submitted"
        count = len(make_class(submitted, args.per_notebook))
        ours = {}
        for label, options in (("--skip-demos", ["--skip-demos"]), ("with the plots", [])):
            ours[label], where = int8lab_grade(submitted, scratch / f"out{len(ours)}", args.workers, options)
            print(f"int8lab grade --workers {args.workers} {label}: {ours[label]:6.1f} s", _load())
            print(where, flush=True)
        plain = None if args.no_plain else plain_nbgrader(scratch / "plain", submitted)
        if plain is not None:
            print(f"plain nbgrader autograde: {plain:6.1f} s", _load())
    print(f"submissions: {count} ({args.per_notebook} of each of {len(ASSIGNMENTS)} notebooks)")
    for label, seconds in ours.items():
        print(f"int8lab grade --workers {args.workers} {label}: {seconds:6.1f} s  ({seconds / count:.2f} s a notebook)")
    if plain is not None:
        print(f"plain nbgrader autograde, sequential: {plain:6.1f} s  ({plain / count:.2f} s a notebook)")
        for label, target in (("--skip-demos", 4), ("with the plots", 2.5)):
            print(f"ratio (plain / int8lab {label}): {plain / ours[label]:.2f}   target >= {target}")


if __name__ == "__main__":
    main()
