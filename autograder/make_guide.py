"""Write the instructors' guide from its sources, so that it cannot drift from them.

    .venv/bin/python autograder/make_guide.py            # writes docs/instructors-guide.md
    .venv/bin/python autograder/make_guide.py --check    # exit 1 when the committed guide is stale

Sources: the solution notebooks (objectives, time, points, grade ids, test docstrings, the
misconceptions each test names, derivation questions and rubrics) and the misconception
catalogue in ``int8lab/checks.py`` (the sentence a student sees). Expected numbers are the
ranges the test suite checks on a fresh run, listed with the test that checks them.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "instructors-guide.md"
#: Every assignment: one folder of solutions/ holding one notebook.
ASSIGNMENTS = {path.parent.name: path.name for path in sorted((ROOT / "solutions").glob("*/*.ipynb"))}
#: Mistakes recognised without a test naming them: by the comparison helpers in any integer or
#: scale comparison, and by the int8 guards on every layer's input (forgot_round, forgot_clamp).
DIAGNOSED_ANYWHERE = ("floor_not_round", "clamp_unsigned", "clamp_127", "no_clamp", "zero_scale", "inverse_scale")
GUARDED = ("forgot_round", "forgot_clamp")
#: Who names a mistake that no test names itself.
RECOGNISED_BY = dict.fromkeys(GUARDED, "(the int8 guards)")

#: The ranges `make test` checks on a fresh run, per notebook: (what, range, where it is checked).
EXPECTED = {
    "01_weights": [
        ("float Net test accuracy on digits", "at least 98%", "tests/test_project.py (demo)"),
        ("int8 weights", "within 0.3 points of float (one test image of 360)", "tests/test_project.py (demo)"),
    ],
    "02_activations": [
        ("chained int8 network", "within 0.3 points of float", "tests/test_project.py (demo)"),
        ("naive output scales", "at least 20 points below float", "tests/test_project.py (demo)"),
        (
            "a student's calibrated network",
            "within 2 points of float, or the test fails",
            "net_quantized_keeps_float_accuracy",
        ),
    ],
    "03_biases": [
        ("float NetWithBias", "at least 98%", "tests/test_project.py (demo)"),
        ("int8 NetWithBias, int32 bias", "within 0.3 points of its float network", "tests/test_project.py (demo)"),
        (
            "section 3.4: each of the four wrong bias handlings",
            "an added-bias error and a logit error at least 5% above the int32 bias's",
            "tests/test_project.py (demo)",
        ),
    ],
    "04_integer_only": [
        ("integer-only NetWithBias", "within 0.5 points of the chained int8 network", "tests/test_project.py (demo)"),
        (
            "PyTorch's int8 engine (x86)",
            "at least 98%, the same class as IntegerOnlyNet on at least 98% of images",
            "tests/test_project.py (demo)",
        ),
        (
            "a student's calibrated IntegerOnlyNet",
            "the same class as notebook 3's network on at least 99% of images, or the test fails",
            "integer_only_net_agrees_with_float_requantized",
        ),
    ],
    "05_ranges_and_bits": [
        ("every recipe at 8 bits", "within 1 point of float", "tests/test_project.py (demo)"),
        (
            "every recipe at 2 bits (weights and activations)",
            "more than 1 point below float",
            "tests/test_project.py (demo)",
        ),
        (
            "2-bit weights alone",
            "per-channel scales at least 20 points above one scale per tensor",
            "tests/test_project.py (demo)",
        ),
        (
            "activations alone at 4, 3 and 2 bits",
            "unsigned at least as accurate as signed; at 2 bits signed below 20%, unsigned above 80%",
            "tests/test_project.py (demo)",
        ),
        (
            "3-bit unsigned activations alone",
            "the mse threshold the most accurate of the four methods",
            "tests/test_project.py (demo)",
        ),
    ],
    "06_zero_points": [
        (
            "integer NetWithBias with zero points, per tensor and per channel (8 bits)",
            "within 0.3 points of float",
            "tests/test_project.py (demo)",
        ),
        (
            "the four schemes of 6.9 at 8 bits",
            "within 0.3 points of float, the float class on at least 99% of the images, every interval against "
            "the symmetric per-tensor network holding 0",
            "tests/test_project.py (demo)",
        ),
        (
            "the four schemes of 6.9 at 4 bits",
            "within 1.5 points of each other (five test images); whether an interval excludes 0 depends on the run",
            "tests/test_project.py (demo)",
        ),
        (
            "PyTorch's engine (per channel, reduce_range) against the student's network built from its parameters",
            "no output at risk of an int16 pair on the digits, no layer more than one code apart, at least 99% "
            "identical logit codes, the same class on all images but at most one, every difference explained "
            "(int32 bias or near a rounding boundary)",
            "tests/test_project.py (demo)",
        ),
        (
            "a student's AffineIntegerNet with the engine's weight codes and the test's output scales and zero points",
            "the float computation's logit codes for at least 99% of the logits, or the test fails",
            "affine_integer_net_forward_within_a_step_of_float",
        ),
    ],
    "07_quantization_aware_training": [
        (
            "3-bit QAT of NetBN (mean of 3 seeds, 3 epochs each) on the digits; the spread over seeds at each width",
            "within 1 point of the float NetBN, and above the best post-training recipe (interval of seed 0 above 0); "
            "seeds within 1.5 points of each other",
            "tests/test_project.py (demo)",
        ),
        (
            "2-bit QAT of NetBN (mean of 3 seeds) against notebook 5's best post-training recipe on the same network",
            "at least 30 points above it, interval of seed 0 above 0",
            "tests/test_project.py (demo)",
        ),
        (
            "4-bit QAT against the best post-training recipe",
            "the recipe within 1 point of float, QAT no better (the interval of seed 0 reaches 0 or below)",
            "tests/test_project.py (demo)",
        ),
        (
            "the QAT networks of seed 0 run on integer codes",
            "the fake-quantized network's class on all test images but at most one, at 4, 3 and 2 bits",
            "tests/test_project.py (demo)",
        ),
    ],
}

DESIGN = """\
## Derive first, then code: how the notebooks avoid giving answers away

- Each derivation (2.2, 2.3, 3.2, 4.2, 5.4, 6.1, 6.4, 7.1, 7.4) stands before the code that uses it and is graded by hand.
  Markdown, docstrings, test docstrings and failure messages state the convention
  ($q = \\mathrm{clamp}(\\mathrm{round}(x/s))$, $s = \\max|x|/127$ for a tensor) but never the
  output-scale chain or the bias scale: a docstring says "the scale derived in 3.2", and a
  message names the misconception and points to the derivation, not to the formula.
- Sections 4.7 to 4.9, 5.5 to 5.8, 6.8 and 6.9 ask the student to predict, then measure, then explain. A
  prediction is a number or the letter of an option in a small solution cell (`answer_4_8_pair`,
  `choice_5_7_activations`), checked only by hidden tests (`check_close`, `check_choice`), and only
  where the answer is fixed by the arithmetic or by an effect the test suite checks with a wide
  margin: never a latency, an engine or a random split. The explanation is graded by hand. The
  takeaways and summaries do not state these answers.
- Visible tests show fixed inputs and expected numbers, as any notebook test must; a student
  who reverse-engineers them still has to write the derivation, which carries its own points.
- Notebook *n+1* starts with a correct copy of notebook *n*'s functions (locked cells), so it
  necessarily shows notebook *n*'s answers: release it after notebook *n*'s deadline. Notebook
  3's provided `NetQuantized` contains the accumulator chain of notebook 2 (`accumulator_scale`);
  derivation 3.2 asks why the bias belongs on it, which the rubric grades.
"""


def _cell(text: str) -> str:
    """Text for a markdown table cell: a bare | would end the cell."""
    return text.replace("|", "\\|")


def _source(cell) -> str:
    return "".join(cell["source"])


def _notebook(assignment: str) -> list[dict]:
    return json.loads((ROOT / "solutions" / assignment / ASSIGNMENTS[assignment]).read_text())["cells"]


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0].strip() if start in text else ""


def _named_mistakes(source: str, catalogue) -> list[str]:
    return [key for key in catalogue if f'"{key}"' in source]


def _assignment_section(assignment: str, catalogue, named_in: dict[str, list[str]]) -> list[str]:
    cells = _notebook(assignment)
    opening = _source(cells[0])
    title = opening.splitlines()[0].lstrip("# ").strip()
    lines = [f"## {title}", ""]
    objectives = _between(opening, "**You will learn to**", "**Estimated time:**")
    time = re.search(r"\*\*Estimated time:\*\*(.+?)(?:\n\n|$)", opening, flags=re.DOTALL)  # its whole paragraph
    lines += [
        "**Objectives.**",
        "",
        objectives,
        "",
        f"**Estimated time:** {' '.join(time.group(1).split()) if time else 'not stated'}",
        "",
    ]
    lines += [
        "**Graded cells.**",
        "",
        "| grade id | points | what it checks | mistakes it names |",
        "|---|---|---|---|",
    ]
    derivations = []
    for index, cell in enumerate(cells):
        grading = cell.get("metadata", {}).get("nbgrader", {})
        if not grading.get("grade"):
            continue
        grade_id, points = grading["grade_id"], grading.get("points", 0)
        source = _source(cell)
        if cell["cell_type"] == "markdown":
            question = _source(cells[index - 1])
            derivations.append((grade_id, points, question, _between(source, "### BEGIN SOLUTION", "### END SOLUTION")))
            lines.append(f"| `{grade_id}` | {points} | derivation, graded by hand | |")
            continue
        docstring = source.split('"""')[1] if source.startswith('"""') else ""
        named = _named_mistakes(source, catalogue)
        for key in named:
            named_in.setdefault(key, []).append(grade_id)
        lines.append(f"| `{grade_id}` | {points} | {_cell(docstring)} | {', '.join(f'`{k}`' for k in named)} |")
    lines += [
        "",
        "**Expected numbers** (checked by `make test` on a fresh run; `make demo` prints this machine's).",
        "",
    ]
    lines += ["| what | range | checked by |", "|---|---|---|"]
    lines += [f"| {_cell(what)} | {_cell(value)} | `{where}` |" for what, value, where in EXPECTED[assignment]]
    lines.append("")
    for grade_id, points, question, answer in derivations:
        # The question's own heading: a cell can open with the end of the section before it.
        headings = [line for line in question.splitlines() if line.startswith("#")]
        heading = (headings[-1] if headings else question.splitlines()[0]).lstrip("# ").strip()
        lines += [f"### {heading}: `{grade_id}`", "", "Model answer, rubric and examples, from the source cell:", ""]
        lines += ["> " + line if line else ">" for line in answer.splitlines()]
        lines.append("")
    return lines


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from int8lab.checks import MISCONCEPTIONS

    named_in: dict[str, list[str]] = {}
    lines = [
        "# Instructors' guide",
        "",
        "Generated by `make guide` (`autograder/make_guide.py`) from `solutions/` and `int8lab/checks.py`;",
        "do not edit by hand. `make test` fails when it is out of date.",
        "",
    ]
    for assignment in ASSIGNMENTS:
        lines += _assignment_section(assignment, MISCONCEPTIONS, named_in)
    lines += [
        "## What a student sees for each mistake",
        "",
        "A failing check that recognises a mistake appends the sentence below to its message. The",
        f"comparison helpers also recognise {', '.join(f'`{k}`' for k in DIAGNOSED_ANYWHERE)} by themselves",
        f"in any integer or scale comparison, and the int8 guards {', '.join(f'`{k}`' for k in GUARDED)} at the",
        "input of every layer of `NetQuantized`.",
        "",
        "| mistake | named by | the sentence the student sees |",
        "|---|---|---|",
    ]
    for key, sentence in MISCONCEPTIONS.items():
        default = RECOGNISED_BY.get(key, "(the comparison helpers)")
        where = ", ".join(f"`{grade_id}`" for grade_id in named_in.get(key, [])) or default
        lines.append(f"| `{key}` | {where} | This matches a known misconception: {_cell(sentence)}. |")
    lines += ["", DESIGN]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed guide instead of writing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = GUIDE.read_text() if GUIDE.exists() else ""
        if current != text:
            diff = difflib.unified_diff(current.splitlines(), text.splitlines(), "committed", "generated", lineterm="")
            print("\n".join(diff), file=sys.stderr)
            print(f"{GUIDE.relative_to(ROOT)} is out of date: run `make guide`", file=sys.stderr)
            return 1
        return 0
    GUIDE.parent.mkdir(exist_ok=True)
    GUIDE.write_text(text)
    print(f"wrote {GUIDE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
