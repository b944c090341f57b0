"""What typesetting the feedback pages' math as MathML costs; prints figures only.

    .venv/bin/python benchmarks/bench_mathml.py [--repeat 5]

For each release notebook with every answer written in (no outputs: plots would add the same bytes to both
pages), the feedback page is written as ``nbgrader generate_feedback`` writes it (sanitize_notebook, then the
feedback template): its size with its TeX left as text and with the MathML, the number of expressions, and
the time of ``mathml.typeset`` on the page, first with latex2mathml's results not yet cached (the first
student's page of a run) and then cached (every later page of that assignment in the same process).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from sample_submissions import ASSIGNMENTS, submission  # noqa: E402

from int8lab.grading import mathml  # noqa: E402
from int8lab.grading.sanitize import sanitize_notebook  # noqa: E402


def _exporter(typeset):
    from nbconvert.exporters import HTMLExporter
    from traitlets.config import Config

    from int8lab.grading.course import configure

    config = Config()
    configure(config, ROOT)
    section = config.GenerateFeedback.HTMLExporter
    section.filters = {**section.filters, "typeset_math": typeset}
    return HTMLExporter(config=Config({"HTMLExporter": section}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed calls of typeset per page (median shown)")
    args = parser.parse_args()
    resources = {"nbgrader": {"notebook": "page", "score": 0.0, "max_score": 0.0, "late_penalty": 0}}
    with_tex, with_mathml = _exporter(lambda page: page), _exporter("int8lab.grading.mathml.typeset")
    print(f"{'assignment':<22}{'TeX page':>10}{'MathML page':>13}{'growth':>8}{'<math>':>8}{'first':>9}{'cached':>9}")
    for assignment in ASSIGNMENTS:
        nb = sanitize_notebook(submission(assignment))
        for cell in nb.cells:  # what nbgrader's GetGrades puts there before the template reads it
            if cell.metadata.get("nbgrader", {}).get("grade"):
                cell.metadata.nbgrader.setdefault("score", 0.0)
        tex_page, _ = with_tex.from_notebook_node(nb, resources=dict(resources))
        mathml_page, _ = with_mathml.from_notebook_node(nb, resources=dict(resources))
        mathml.to_mathml.cache_clear()
        start = time.perf_counter()
        mathml.typeset(tex_page)
        first = time.perf_counter() - start
        cached = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            mathml.typeset(tex_page)
            cached.append(time.perf_counter() - start)
        growth = len(mathml_page.encode()) / len(tex_page.encode()) - 1
        print(
            f"{assignment:<22}{len(tex_page.encode()):>10,}{len(mathml_page.encode()):>13,}{growth:>8.1%}"
            f"{mathml_page.count('<math '):>8}{first * 1000:>7.0f}ms{statistics.median(cached) * 1000:>7.0f}ms"
        )
    print("(sizes in bytes; pages before MathML also needed a mathjax/ folder beside them: 2,343,820 bytes apparent)")


if __name__ == "__main__":
    main()
