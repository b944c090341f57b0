"""int8lab grade on a generated class: scores, statuses, hostile students, isolation, feedback, determinism."""

import base64
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from hostile import HOSTILE, active_content, hidden_lines, visible_text
from sample_submissions import ASSIGNMENTS, autograded_points

from classes import DEMO_ASSIGNMENTS, HONEST
from classes import GRADE as CLASS_GRADE
from int8lab.checks import MISCONCEPTIONS

ROOT = Path(__file__).resolve().parents[1]
#: One grading command of the same options as the shared classes', for the runs of a single test.
GRADE = CLASS_GRADE


@pytest.fixture(scope="module")
def graded(hostile_class):
    """The hostile class of classes.py (about fifty submissions, --skip-demos), graded once per session."""
    return hostile_class


def _rows(path: Path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _grades(graded):
    return {(r["student_id"], r["assignment"]): r for r in _rows(graded["out"] / "int8lab-grades.csv")}


def _tests(graded, student, assignment):
    return {
        r["grade_id"]: r
        for r in _rows(graded["out"] / "int8lab-tests.csv")
        if r["student_id"] == student and r["assignment"] == assignment
    }


def test_grader_exits_zero_and_summarises(graded):
    run = graded["run"]
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"graded {len(_grades(graded))} submission(s)" in run.stderr
    assert "sandbox enforced:" in run.stderr
    # nbgrader's add_submission used to autoflush half-built rows (SAWarning), and nbclient left the
    # sockets to kernels it did not start open (ResourceWarning): the grader's stderr holds no warning.
    assert "Warning" not in run.stderr, run.stderr[-3000:]
    assert "generate_feedback" not in run.stderr and "No notebooks were matched" not in run.stderr, run.stderr[-3000:]


@pytest.mark.parametrize("assignment", sorted(ASSIGNMENTS))
def test_perfect_submission_gets_every_autograded_point(graded, assignment):
    row = _grades(graded)[("perfect", assignment)]
    assert row["status"] == "ok"
    assert float(row["score"]) == float(row["max_score"]) == autograded_points(assignment)
    assert all(r["message"] in ("", "graded by hand") for r in _tests(graded, "perfect", assignment).values())


@pytest.mark.parametrize("assignment", ["01_weights", "02_activations", "03_biases", "06_zero_points"])
def test_untouched_stubs_score_zero(graded, assignment):
    row = _grades(graded)[("stubs", assignment)]
    assert (row["status"], float(row["score"])) == ("ok", 0.0)


@pytest.mark.parametrize(
    ("student", "assignment", "key", "caught", "kept"),
    [
        ("mis_multiplied", "01_weights", "multiplied_scale", ["quantized_weights_small_example"], []),
        (
            "mis_naive",
            "02_activations",
            "naive_output_scale",
            ["quantize_activations_first_layer", "quantize_activations_chained_scale"],
            ["quantize_initial_input_small_example", "net_quantized_forward_small_network"],
        ),
        (
            "mis_bias_int8",
            "03_biases",
            "bias_int8_clamp",
            ["quantized_bias_small_example", "quantized_bias_chained_scale"],
            [],
        ),
    ],
)
def test_misconception_loses_the_checks_that_catch_it_and_is_named(graded, student, assignment, key, caught, kept):
    rows = _tests(graded, student, assignment)
    for grade_id in caught:
        assert float(rows[grade_id]["score"]) == 0, grade_id
        assert MISCONCEPTIONS[key] in rows[grade_id]["message"], rows[grade_id]["message"]
    for grade_id in kept:
        assert rows[grade_id]["score"] == rows[grade_id]["max_score"], grade_id
    assert _grades(graded)[(student, assignment)]["status"] == "ok"
    # The feedback page shows the judge's message, misconception named, in the test cell.
    page = next((graded["out"] / "feedback" / student / assignment).glob("*.html")).read_text()
    assert MISCONCEPTIONS[key][:60] in visible_text(page).replace("\n", " ")


@pytest.mark.parametrize(
    ("student", "statuses"),
    [
        ("loop", {"timeout"}),
        ("hog", {"kernel_died", "error"}),
        ("exits", {"kernel_died"}),
        ("killed", {"kernel_died"}),
        ("corrupt", {"invalid_notebook"}),
        ("notjupyter", {"invalid_notebook"}),
        ("absent", {"missing"}),
        ("linked_nb", {"invalid_notebook"}),
        ("fifo", {"invalid_notebook"}),
        ("linked_folder", {"missing"}),
        ("filler", {"disk_quota"}),
    ],
)
def test_broken_submissions_get_their_status(graded, student, statuses):
    assert _grades(graded)[(student, "01_weights")]["status"] in statuses


def test_an_interrupted_cell_keeps_the_points_of_the_tests_after_it(graded):
    """The loop ends the solution cell, after the functions: the cell is interrupted and the notebook goes on."""
    grades = _grades(graded)
    assert grades[("loop", "01_weights")]["status"] == "timeout"
    assert grades[("loop", "01_weights")]["score"] == grades[("perfect", "01_weights")]["score"]


@pytest.mark.parametrize("student", ["deleted", "edited", "markdown"])
def test_tampered_test_cells_are_restored_and_run(graded, student):
    wrong = _tests(graded, "mis_multiplied", "01_weights")
    rows = _tests(graded, student, "01_weights")
    assert rows.keys() == wrong.keys()
    assert {g: r["score"] for g, r in rows.items()} == {g: r["score"] for g, r in wrong.items()}
    assert MISCONCEPTIONS["multiplied_scale"] in rows["quantized_weights_small_example"]["message"]


@pytest.mark.parametrize("student", sorted(HOSTILE))
def test_hostile_trick_scores_what_the_same_notebook_scores_without_it(graded, student):
    """Each trick of a hostile student changes nothing: the score is the baseline's, test by test."""
    baseline, assignment, _ = HOSTILE[student]
    expected = {g: r["score"] for g, r in _tests(graded, baseline, assignment).items()}
    assert {g: r["score"] for g, r in _tests(graded, student, assignment).items()} == expected


def _is_base64(line: str) -> bool:
    return len(line) > 1000 and re.fullmatch(r"[A-Za-z0-9+/=]+", line) is not None


def test_kernel_memory_printed_in_any_encoding_holds_no_hidden_line(graded):
    text = _outputs(graded, "h_prints_kernel_memory")
    decoded = [base64.b64decode(line).decode(errors="replace") for line in text.splitlines() if _is_base64(line)]
    assert decoded, "the probe printed nothing to decode"
    everything = "\n".join([text.replace("\u200b", ""), *decoded])
    assert "quantized_weights" in everything  # the dump did see the kernel's memory
    secrets = hidden_lines(nbformat.read(ROOT / "solutions" / "01_weights" / "weights.ipynb", as_version=4))
    leaked = [line for line in secrets if line in everything]
    assert not leaked, leaked[:3]


def test_floor_keeps_its_honest_partial_score(graded):
    score = float(_grades(graded)[("floor", "01_weights")]["score"])
    assert 0 < score < autograded_points("01_weights")


def _outputs(graded, student):
    nb = json.loads((graded["out"] / "autograded" / student / "01_weights" / "weights.ipynb").read_text())
    return "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


def test_kernel_cannot_read_the_gradebook_solutions_or_other_students(graded):
    text = _outputs(graded, "snoop")
    assert "SNOOP-READ" not in text and text.count("SNOOP-BLOCKED") == 4 and "SNOOP-NO-NETWORK" in text
    assert _grades(graded)[("snoop", "01_weights")]["score"] == str(int(autograded_points("01_weights")))


def test_writes_into_another_students_folder_change_nothing(graded):
    text = _outputs(graded, "vandal")
    assert "VANDAL-WROTE" not in text and text.count("VANDAL-BLOCKED") == 6
    assert _grades(graded)[("perfect", "01_weights")]["score"] == str(int(autograded_points("01_weights")))
    for path, content in graded["originals"].items():
        assert path.read_bytes() == content, f"{path} was modified"


def test_no_hidden_line_reaches_feedback_or_autograded_notebooks(graded):
    feedback, autograded = graded["out"] / "feedback", graded["out"] / "autograded"
    assert (feedback / "perfect" / "02_activations" / "activations.html").exists()
    assert (feedback / "mis_naive" / "02_activations" / "activations.html").exists()
    checked = 0
    for source in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        secrets = hidden_lines(nbformat.read(source, as_version=4))
        assert len(secrets) > 10
        pages = [*feedback.glob(f"*/{source.parent.name}/*.html"), *autograded.glob(f"*/{source.parent.name}/*.ipynb")]
        for page in pages:
            text = page.read_text()
            shown = {line.strip() for line in (visible_text(text) if page.suffix == ".html" else text).splitlines()}
            shown |= {line.strip().strip('",').replace('\\"', '"').removesuffix("\\n") for line in text.splitlines()}
            leaked = sorted(line for line in secrets if line in shown)
            assert not leaked, f"{page}: {leaked[:3]}"
            checked += 1
    assert checked >= 30


def test_nbgrader_export_and_formgrader_gradebook_work(graded):
    out = graded["out"]
    result = subprocess.run(
        [sys.executable, "-m", "nbgrader", "export", "--to", str(out / "export.csv")],
        cwd=out,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PATH": f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = _rows(out / "export.csv")
    perfect = [r for r in rows if r["student_id"] == "perfect" and r["assignment"] == "02_activations"]
    assert perfect and float(perfect[0]["raw_score"]) == autograded_points("02_activations")
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission("02_activations", "perfect")
        assert submission.needs_manual_grade  # the derivations wait for a human


def test_zip_of_the_submitted_folder_is_accepted(demo_class):
    """The demo class reaches the grader as a .zip of its submitted folder: every folder of it is graded."""
    assert demo_class.command[-3].endswith("submitted.zip")
    rows = {(r["student_id"], r["assignment"]): r["status"] for r in _rows(demo_class.out / "int8lab-grades.csv")}
    written = {(p.parent.parent.name, p.parent.name) for p in demo_class.submitted.glob("*/*/*.ipynb")}
    assert rows.keys() == written
    assert rows[("perfect", "01_weights")] == "ok" and rows[("corrupt", "01_weights")] == "invalid_notebook"


def test_unusable_input_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [*GRADE, str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "does not exist" in result.stderr


@pytest.mark.parametrize("student", ["'-dash[id]", "'=1+2", "kernel_links"])  # as the CSV neutralises them
def test_odd_ids_and_kernel_side_links_are_graded_normally(graded, student):
    row = _grades(graded)[(student, "01_weights")]
    assert (row["status"], row["score"]) == ("ok", str(int(autograded_points("01_weights"))))


def test_no_message_holds_a_path_and_formulas_are_neutralised(graded):
    text = (graded["out"] / "int8lab-tests.csv").read_text() + (graded["out"] / "int8lab-grades.csv").read_text()
    assert str(graded["base"]) not in text and "/tmp/" not in text
    assert "\n=1+2," not in text and "\n'=1+2," in text


def test_out_holds_only_the_course_the_notebooks_and_the_reports(graded):
    out = graded["out"]
    expected = {"gradebook.db", "nbgrader_config.py", "int8lab-grades.csv", "int8lab-tests.csv", "grading.log"}
    expected |= {"source", "release", "submitted", "autograded", "feedback", "export.csv"}  # export: another test
    expected |= {".gitignore"}  # all of OUT: in a repository, neither git nor ruff reads a course folder
    assert {p.name for p in out.iterdir()} - {"export.csv"} == expected - {"export.csv"}
    for student in (out / "autograded").iterdir():
        for folder in student.iterdir():
            assert [p.name for p in folder.iterdir()] == [f"{ASSIGNMENTS[folder.name]}"], folder
            assert all(p.stat().st_size < 4 << 20 and not p.is_symlink() for p in folder.iterdir())
    assert not (out / "submitted" / "linked_nb").exists()
    assert all(not p.is_symlink() for p in out.rglob("*"))


def test_no_script_reaches_the_instructors_pages(graded):
    """Markdown answers and HTML/JavaScript outputs are sanitised; the student's code is only shown as text."""
    folder = graded["out"] / "autograded" / "html" / "02_activations"
    nb = nbformat.read(folder / "activations.ipynb", as_version=4)
    rendered = [c.source for c in nb.cells if c.cell_type == "markdown"]
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    rendered += [f"{key} {value}" for o in outputs for key, value in o.get("data", {}).items()]
    for text in rendered:
        for marker in ('onerror="', "<script>alert", 'href="javascript:', "application/javascript"):
            assert marker not in text.lower(), marker
    page = (graded["out"] / "feedback" / "html" / "02_activations" / "activations.html").read_text()
    assert "My derivation" in page
    assert active_content(page) == [], active_content(page)[:3]


def test_honest_grades_do_not_depend_on_hostile_classmates(graded, demo_class):
    """Honest students graded without the hostile ones, with the demos run, get the rows they got among hostile
    ones (tests/test_dask.py compares a Dask run's rows with the hostile class's too)."""
    for name in ("int8lab-grades.csv", "int8lab-tests.csv"):
        alone = [r for r in _rows(demo_class.out / name) if r["student_id"] in HONEST]
        together = [
            r for r in _rows(graded["out"] / name) if r["student_id"] in HONEST and r["assignment"] in DEMO_ASSIGNMENTS
        ]
        assert len(alone) >= 11 and alone == together, name


def test_skipped_plot_cells_show_their_source_and_a_note_in_the_feedback(graded):
    """With --skip-demos, each plot cell the student left alone appears as its source under a visible note."""
    notebook = nbformat.read(graded["out"] / "autograded" / "perfect" / "01_weights" / "weights.ipynb", as_version=4)
    # Markdown is kept rendered to HTML (sanitize.py), the code highlighted: compare the text without tags.
    texts = [re.sub(r"<[^>]+>", "", c.source) for c in notebook.cells if c.cell_type == "markdown"]
    notes = [text for text in texts if text.startswith("Not run during grading.")]
    assert any("plot_weight_histograms(float_net)" in text for text in notes)
    assert not any(c.cell_type == "code" and "plot_weight_histograms(float_net)" in c.source for c in notebook.cells)


@pytest.fixture(scope="module")
def small_class(demo_class):
    """The demo class of classes.py: 01 to 03 graded with the defaults (plot cells run), every warning shown;
    04 and 05, in solutions/ too, were submitted by nobody."""
    return demo_class


def test_small_class_grades_without_a_warning(small_class):
    run = small_class["run"]
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"graded {len(_rows(small_class['out'] / 'int8lab-grades.csv'))} submission(s)" in run.stderr
    assert "Warning" not in run.stderr, run.stderr[-3000:]
    assert "generate_feedback" not in run.stderr and "No notebooks were matched" not in run.stderr, run.stderr[-3000:]


def test_feedback_shows_every_cell_of_the_release_with_its_plots(small_class):
    """Each markdown cell of the release is followed by its code cell, plots included, in the perfect feedback."""
    out = small_class["out"]
    graded = nbformat.read(out / "autograded" / "perfect" / "01_weights" / "weights.ipynb", as_version=4)
    release = nbformat.read(ROOT / "notebooks" / "01_weights" / "weights.ipynb", as_version=4)
    # Markdown is rendered to HTML for the feedback (sanitize.py), so cells are matched by id.
    shown = [c.get("id") for c in graded.cells]
    by_id = {c.get("id"): c for c in graded.cells}
    for first, second in zip(release.cells, release.cells[1:], strict=False):
        if first.cell_type == "markdown" and second.cell_type == "code":
            assert shown[shown.index(first.id) + 1] == second.id, first.source[:80]
            assert by_id[second.id].cell_type == "code"
    page = (out / "feedback" / "perfect" / "01_weights" / "weights.html").read_text()
    histograms = [c for c in graded.cells if "plot_weight_histograms(float_net)" in c.source]
    assert any("image/png" in o.get("data", {}) for o in histograms[0].outputs)
    assert page.count('src="data:image/png;base64,') >= 2  # the weight histograms and the clipping curves


def test_feedback_page_loads_no_script_and_carries_its_math(small_class):
    """The page is whole in one file: no script, nothing from outside the machine, its math MathML already."""
    folder = small_class["out"] / "feedback" / "perfect" / "01_weights"
    page = (folder / "weights.html").read_text()
    assert "<script" not in page.lower() and not [p.name for p in folder.iterdir() if p.is_dir()]
    assert not re.search(r"<(link|img|iframe)[^>]+(href|src)=[\"']https?://", page)
    assert page.count("<math ") >= 20 and "<mfrac>" in page
    assert "$$" not in page and "\\frac" not in page  # no TeX left for a script to find


def test_feedback_command_regenerates_pages_with_their_math(small_class):
    """After manual grading, `int8lab feedback OUT` rewrites the pages, math typeset, and removes the MathJax
    copies that an earlier int8lab left in OUT."""
    folder = small_class["out"] / "feedback" / "stubs" / "01_weights"
    shutil.rmtree(folder)
    old_copies = [
        small_class["out"] / ".mathjax",
        small_class["out"] / "feedback" / "perfect" / "01_weights" / "mathjax",
    ]
    for old in old_copies:
        old.mkdir()
        (old / "MathJax.js").write_text("/* MathJax */")
    result = subprocess.run(
        [sys.executable, "-m", "int8lab", "feedback", str(small_class["out"])], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "<math " in (folder / "weights.html").read_text()
    assert not any(old.exists() for old in old_copies)
    missing = subprocess.run([sys.executable, "-m", "int8lab", "feedback", str(folder)], capture_output=True, text=True)
    assert missing.returncode == 1 and "no gradebook.db" in missing.stderr


def test_formgrader_submission_page_loads_mathjax_from_the_server(small_class):
    """Formgrader's manual-grading page renders, and its MathJax (which formgrade.js needs) comes from the server."""
    import urllib.parse
    import urllib.request

    from browser_support import jupyter

    listing = "formgrader/api/submitted_notebooks/01_weights/weights"
    with jupyter("server", small_class["out"], ready=listing) as server:
        perfect = next(s for s in server.get_json(listing) if s["student"] == "perfect")
        with urllib.request.urlopen(server.url(f"formgrader/submissions/{perfect['id']}")) as answer:
            page_url, page = answer.geturl(), answer.read().decode()
        sources = re.findall(r"<script[^>]*\bsrc=[\"']([^\"']+)", page)
        assert sources and not [s for s in sources if s.startswith(("http:", "https:", "//"))], sources
        mathjax = [s for s in sources if "MathJax.js" in s]
        assert len(mathjax) == 1, sources
        with urllib.request.urlopen(urllib.parse.urljoin(page_url, mathjax[0])) as answer:
            assert b"MathJax" in answer.read(2000)
