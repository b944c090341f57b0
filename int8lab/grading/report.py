"""Report: int8lab-grades.csv, int8lab-tests.csv, the feedback pages and the summary an instructor reads.

The CSV files are sorted and hold no timestamp or path: the same class gives the same bytes.
A cell that a spreadsheet would take for a formula is neutralised (OWASP's rule). Their names are
int8lab's own: ``nbgrader export`` writes ``grades.csv`` into the same folder.
"""

from __future__ import annotations

import csv
import io
import sys
from collections import Counter
from pathlib import Path

from .model import Result, Status

GRADES_CSV, TESTS_CSV = "int8lab-grades.csv", "int8lab-tests.csv"
GRADES_HEADER = ["student_id", "assignment", "score", "max_score", "status"]
TESTS_HEADER = ["student_id", "assignment", "grade_id", "score", "max_score", "message"]
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: Layers of the sandbox report printed on a line of their own: what the filter refuses, the keyring, the
#: kind of memory limit (the whole process tree, or per process only).
_OWN_LINE = ("seccomp filter", "keyring:", "memory:")


def spreadsheet_safe(value: str) -> str:
    """``value``, prefixed with a quote if a spreadsheet would read it as a formula."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _points(value: float) -> str:
    return f"{value:g}"


def test_rows(result: Result, assignment) -> list[list[str]]:
    job, rows = result.job, []
    for grade_id, points, autograded in assignment.cells:
        if not autograded:
            rows.append([job.student, job.assignment, grade_id, "", _points(points), "graded by hand"])
            continue
        verdict = result.verdicts.get(grade_id)
        score = verdict.score if verdict else 0.0
        message = verdict.message if verdict else f"{result.status}: {result.reason}"
        rows.append([job.student, job.assignment, grade_id, _points(score), _points(points), message])
    return rows


def write_reports(out: Path, results: list[Result], assignments: dict) -> None:
    grades, tests = io.StringIO(), io.StringIO()
    grade_writer = csv.writer(grades, lineterminator="\n")
    test_writer = csv.writer(tests, lineterminator="\n")
    grade_writer.writerow(GRADES_HEADER)
    test_writer.writerow(TESTS_HEADER)
    for result in sorted(results, key=lambda r: (r.job.student, r.job.assignment)):
        assignment = assignments[result.job.assignment]
        total = sum(v.score for v in result.verdicts.values())
        row = [result.job.student, result.job.assignment, _points(total), _points(assignment.autograded_points)]
        grade_writer.writerow([spreadsheet_safe(v) for v in [*row, str(result.status)]])
        for test_row in test_rows(result, assignment):
            test_writer.writerow([spreadsheet_safe(v) for v in test_row])
    (out / GRADES_CSV).write_text(grades.getvalue())
    (out / TESTS_CSV).write_text(tests.getvalue())


def summary(
    results: list[Result], sandbox: dict | None, seconds: float, out: Path, problems: list[str], tally=None
) -> str:
    """The lines printed at the end of a run (and kept in OUT/grading.log); ``tally``: ``{worker: jobs run}``
    of a Dask run, or None."""
    counts = Counter(result.status for result in results)
    lines = [
        f"graded {len(results)} submission(s) in {seconds:.1f} s: "
        + ", ".join(f"{counts[s]} {s}" for s in Status if counts[s])
    ]
    if sandbox:
        enforced = sandbox.get("enforced", [])
        lines.append("sandbox enforced: " + "; ".join(e for e in enforced if not e.startswith(_OWN_LINE)))
        lines += [f"sandbox {item}" for item in enforced if item.startswith(_OWN_LINE)]
        if sandbox.get("missing"):
            lines.append("sandbox could NOT enforce: " + "; ".join(sandbox["missing"]))
    if tally:
        lines.append("jobs run per Dask worker: " + ", ".join(f"{w}: {n}" for w, n in sorted(tally.items())))
    lines += problems
    lines.append(f"results: {out / GRADES_CSV}, {out / TESTS_CSV}, feedback in {out / 'feedback'}")
    return "\n".join(lines)


def print_summary(text: str) -> None:
    print(text, file=sys.stderr)
