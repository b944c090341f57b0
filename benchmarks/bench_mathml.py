"""What typesetting the feedback pages' math as MathML costs; prints figures only.

    .venv/bin/python benchmarks/bench_mathml.py [--repeat 5]

For each release notebook with every answer written in (no outputs: plots would add the same bytes to both
pages), the feedback page is written as the grading workers write it (sanitize_notebook, then the feedback
exporter, ``pages._exporter``): its size with its TeX left as text and with the MathML, the number of
expressions, and the time of ``mathml.typeset`` on the page's body, four ways (medians of ``--repeat``):

- whole: the body read at once by html.parser, as every page was before fragments (``typeset`` of it unmarked);
- first: nothing remembered (the first page of a process), latex2mathml's results not cached either;
- new answers: the fragments of another student's page remembered, this page's answer cells not (a worker's
  usual page: the release's cells recur, each student's answers are new);
- same page: every fragment remembered (the same submission again: the least a page costs).
"""

import argparse
import copy
import functools
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from sample_submissions import ASSIGNMENTS, submission  # noqa: E402

from int8lab.grading import mathml, pages  # noqa: E402
from int8lab.grading.sanitize import sanitize_notebook  # noqa: E402


def marked_body(nb) -> str:
    """The body of ``nb``'s feedback page as the typeset_math filter receives it (its fragments marked)."""
    grades = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade") or meta.get("task"):
            grades[meta["grade_id"]] = (0.0, meta.get("points", 0))
    nbgrader = {"student": "s", "assignment": "a", "notebook": "page", "grades": grades, "comments": {}}
    resources = {"metadata": {"name": "page"}, "unique_key": "page", "output_files_dir": "page_files"}
    resources["nbgrader"] = nbgrader | {"score": 0.0, "max_score": float(sum(p for _, p in grades.values()))}
    exporter = pages._exporter()
    bodies = []
    filters = exporter.environment.filters
    saved = filters["typeset_math"]
    filters["typeset_math"] = lambda body: bodies.append(body) or body
    try:
        exporter.from_notebook_node(sanitize_notebook(copy.deepcopy(nb)), resources)
    finally:
        filters["typeset_math"] = saved
    return bodies[0]


def another_students(nb):
    """``nb`` with a line more in every answer cell."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source += "\n# another student" if cell.cell_type == "code" else "\n\nAnother student."
    return nb


def median_ms(page: str, repeat: int, before=lambda: None) -> float:
    """Median time of ``mathml.typeset(page)``, ``before()`` called before each."""
    times = []
    for _ in range(repeat):
        before()
        start = time.perf_counter()
        mathml.typeset(page)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def forget_all():
    mathml.to_mathml.cache_clear()
    mathml.forget()


def remember_only(page: str):
    mathml.forget()
    mathml.typeset(page)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed calls of typeset per figure (median shown)")
    args = parser.parse_args()
    print(
        f"{'assignment':<32}{'TeX page':>10}{'MathML':>10}{'growth':>8}{'<math>':>8}"
        f"{'whole':>8}{'first':>8}{'new answers':>13}{'same page':>11}"
    )
    for assignment in ASSIGNMENTS:
        nb = submission(assignment)
        body, other = marked_body(nb), marked_body(another_students(nb))
        tex_page, mathml_page = mathml.unmarked(body), mathml.typeset(body)
        whole = median_ms(tex_page, args.repeat)
        first = median_ms(body, args.repeat, before=forget_all)
        new_answers = median_ms(body, args.repeat, before=functools.partial(remember_only, other))
        mathml.typeset(body)
        same = median_ms(body, args.repeat)
        growth = len(mathml_page.encode()) / len(tex_page.encode()) - 1
        print(
            f"{assignment:<32}{len(tex_page.encode()):>10,}{len(mathml_page.encode()):>10,}{growth:>8.1%}"
            f"{mathml_page.count('<math '):>8}{whole:>6.1f}ms{first:>6.1f}ms{new_answers:>11.1f}ms{same:>9.1f}ms"
        )
    print("(sizes in bytes of the page's body; pages before MathML also needed a mathjax/ folder beside them:")
    print(" 2,343,820 bytes apparent; times of mathml.typeset alone, the machine's load included)")


if __name__ == "__main__":
    main()
