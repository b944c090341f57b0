"""Grade the same 20 generated submissions two ways and print both times and their ratio.

    .venv/bin/python benchmarks/bench_grading.py [--students 20] [--workers 2]

1. `int8lab grade --workers N` (sandboxed kernels, N at a time);
2. plain `nbgrader autograde`, one submission after another, in a course built from the same
   sources (what an instructor would run without int8lab).
Targets on a 2-core machine: ratio >= 1.8, and <= 8 s per notebook. Both use the model cache.
"""

import argparse
import os
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


def make_class(root: Path, students: int) -> list[tuple[str, str]]:
    jobs = []
    names = list(ASSIGNMENTS)
    for index in range(students):
        assignment = names[index % len(names)]
        student = f"student{index:02d}"
        write_submission(root, student, assignment, submission(assignment, solved=index % 4 != 3))
        jobs.append((student, assignment))
    return jobs


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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--students", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    trained_model("digits", progress=False)
    trained_model("digits", bias=True, progress=False)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        submitted = scratch / "submitted"
        jobs = make_class(submitted, args.students)
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "int8lab",
                "grade",
                str(submitted),
                "--out",
                str(scratch / "out"),
                "--workers",
                str(args.workers),
                "--solutions",
                str(ROOT / "solutions"),
            ],
            check=True,
            capture_output=True,
        )
        ours = time.perf_counter() - started
        print(f"int8lab grade done in {ours:.1f} s", flush=True)
        plain = plain_nbgrader(scratch / "plain", submitted)
    count = len(jobs)
    print(f"submissions: {count}")
    print(f"int8lab grade --workers {args.workers}: {ours:6.1f} s  ({ours / count:.2f} s per notebook)")
    print(f"plain nbgrader autograde, sequential: {plain:6.1f} s  ({plain / count:.2f} s per notebook)")
    print(f"ratio (plain / int8lab): {plain / ours:.2f}   target >= 1.8")


if __name__ == "__main__":
    main()
