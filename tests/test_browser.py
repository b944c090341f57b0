"""In a real browser: the student's JupyterLab flow, the instructor's formgrader flow, hostile pages, accessibility.

Headless Chromium (Debian's, or $INT8LAB_CHROMIUM) through Playwright. One browser per module; one JupyterLab
for the student's tests and one graded course with its Jupyter server for the instructor's.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import axe_playwright_python
import nbformat
import pytest
from browser_support import PATIENCE_MS, ROOT, ScriptWatch, chromium, jupyter, screenshot
from hostile import ANSWER_TEXT, SCRIPT_HTML
from playwright.sync_api import expect

from int8lab.checks import MISCONCEPTIONS

pytestmark = pytest.mark.browser

#: scale = max|w| / 128: the visible test names the misconception "scale_128".
WRONG_SCALE_128 = """def quantized_weights(weights):
    scale = weights.abs().max().item() / 128
    return torch.clamp(torch.round(weights / scale), -128, 127), scale
"""
RIGHT = """def quantized_weights(weights):
    largest = weights.abs().max().item()
    scale = largest / 127 if largest > 0 else 1.0
    return torch.clamp(torch.round(weights / scale), -128, 127), scale
"""
PASSED = "quantized_weights passes the visible test."


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(PATIENCE_MS)  # clicks and page loads too: Playwright's own default is 30 s
    yield context.new_page()
    context.close()


def _lab_settings(folder: Path) -> None:
    """No news pop-up over the notebook, every cell in the DOM (no virtual scrolling) so tests can find it, and no
    autosave: each test opens the released notebook as it is on disk, whatever the test before it typed."""
    settings = {
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    }
    for plugin, values in settings.items():
        path = folder / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture(scope="module")
def lab(tmp_path_factory, float_net):
    """JupyterLab on a copy of the released notebooks (float_net: the model is trained and cached before)."""
    base = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", base / "notebooks")
    _lab_settings(base / "settings")
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(base / "settings")}
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(base / "workspaces")
    with jupyter("lab", base / "notebooks", env=env) as server:
        yield server


def _open_notebook(page, lab, path: str):
    page.goto(lab.url(f"lab/tree/{path}"))
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
    notebook.locator(".jp-Cell").first.wait_for(timeout=PATIENCE_MS)
    # The kernel is ready when the toolbar's (visually hidden) status says so.
    page.get_by_text("Kernel status: Idle").first.wait_for(state="attached", timeout=PATIENCE_MS)
    return notebook


def _cell(notebook, text: str):
    """The code cell whose source holds ``text``."""
    return notebook.locator(".jp-CodeCell").filter(has=notebook.page.locator(".jp-InputArea", has_text=text)).first


def _replace_source(cell, code: str) -> None:
    """Type into the cell's editor as a student would: select everything, then insert the new text."""
    editor = cell.locator(".cm-content")
    editor.click()
    page = cell.page
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    # insert_text: one input event, so the editor's auto-indent does not re-indent pasted code.
    page.keyboard.insert_text(code)
    page.keyboard.press("Escape")


def _run_all(page) -> None:
    """Run > Run All Cells, through the menu (not "Restart Kernel and Run All Cells…", which asks first)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item:visible .lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def test_student_sees_the_misconception_then_the_passing_test_and_the_plot(page, lab):
    """A scale of max|w|/128 typed in the editor shows the named misconception; the right code passes, plot drawn."""
    notebook = _open_notebook(page, lab, "01_weights/weights.ipynb")
    stub = _cell(notebook, "YOUR CODE HERE")
    _replace_source(stub, WRONG_SCALE_128)
    _run_all(page)
    test_cell = _cell(notebook, "quantized_weights returns the right integers and scale")
    message = MISCONCEPTIONS["scale_128"][:50]
    test_cell.locator(".jp-OutputArea", has_text=message).wait_for(timeout=PATIENCE_MS)
    test_cell.scroll_into_view_if_needed()
    screenshot(test_cell, "student-misconception")

    _replace_source(_cell(notebook, "def quantized_weights"), RIGHT)
    _run_all(page)
    test_cell.locator(".jp-OutputArea", has_text=PASSED).wait_for(timeout=PATIENCE_MS)
    assert message not in test_cell.locator(".jp-OutputArea").inner_text()
    screenshot(test_cell, "student-test-passes")

    histogram = _cell(notebook, "plot_weight_histograms(float_net)").locator(".jp-OutputArea img").first
    histogram.wait_for(timeout=PATIENCE_MS)
    histogram.scroll_into_view_if_needed()
    box = histogram.bounding_box()
    assert box and box["width"] > 100 and box["height"] > 100, box
    assert histogram.evaluate("image => image.complete && image.naturalWidth > 0")
    screenshot(_cell(notebook, "plot_weight_histograms(float_net)"), "student-histogram")


def _typing_changes(cell, text: str) -> bool:
    """Click into the cell's editor, type ``text`` at its end, and say whether the source changed."""
    editor = cell.locator(".cm-content")
    before = editor.inner_text()
    editor.click()
    cell.page.keyboard.press("Control+End")
    cell.page.keyboard.type(text)
    cell.page.keyboard.press("Escape")
    return editor.inner_text() != before


def test_locked_cells_cannot_be_edited_but_the_answer_cell_can(page, lab):
    """nbgrader's locked cells (editable: false) ignore typing; the stub beside them takes it (the control)."""
    notebook = _open_notebook(page, lab, "01_weights/weights.ipynb")
    setup = _cell(notebook, "Setup: run this cell first")
    visible_test = _cell(notebook, "quantized_weights returns the right integers and scale")
    assert not _typing_changes(setup, "\nprint('edited')")
    assert not _typing_changes(visible_test, "\nprint('edited')")
    assert _typing_changes(_cell(notebook, "YOUR CODE HERE"), "\n# my notes")


# The instructor's side: the demo class of classes.py, graded once per session with the plot cells run. Its
# perfect student plays ann here; mallory carries script in her derivation and outputs.
DERIVATION = "derivation_bias_scale"
ANN = "perfect"


@pytest.fixture(scope="module")
def course(demo_class):
    """The graded course folder (OUT of int8lab grade)."""
    assert demo_class.run.returncode == 0, demo_class.run.stderr[-3000:]
    return demo_class.out


@pytest.fixture(scope="module")
def formgrader(course):
    """A Jupyter server with nbgrader's formgrader, in the graded course folder."""
    with jupyter("server", course, ready="formgrader/api/submitted_notebooks/03_biases/biases") as server:
        yield server


def _open_submission(page, formgrader, student: str) -> None:
    """Formgrader's home page first, as the instructor would: its token login sets the cookie for the whole server
    (a login on the submission page itself sets it for /formgrader/submissions only, and the grade API refuses)."""
    page.goto(formgrader.url("formgrader"))
    submissions = formgrader.get_json("formgrader/api/submitted_notebooks/03_biases/biases")
    submission_id = next(s["id"] for s in submissions if s["student"] == student)
    page.goto(f"{formgrader.base}/formgrader/submissions/{submission_id}")


def _export(course: Path) -> dict[str, dict]:
    """nbgrader export in the course folder, as the README tells the instructor: {student: row of 03_biases}."""
    target = course / "export.csv"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "nbgrader", "export", "--to", str(target)],
        cwd=course,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with open(target, newline="") as handle:
        return {row["student_id"]: row for row in csv.DictReader(handle) if row["assignment"] == "03_biases"}


def test_instructor_grades_a_derivation_by_hand_in_formgrader(page, course, formgrader):
    """A score and a comment typed into formgrader's page are saved, shown again, and counted by nbgrader export."""
    before = float(_export(course)[ANN]["score"])
    _open_submission(page, formgrader, ANN)
    score = page.locator(f"input.score#{DERIVATION}")
    comment = page.locator(f"textarea#{DERIVATION}-comment")
    score.wait_for(timeout=PATIENCE_MS)
    score.scroll_into_view_if_needed()
    # Each field saves itself on change (formgrader's Backbone models): wait for the server's answer.
    with page.expect_response(lambda r: "/formgrader/api/grade/" in r.url and r.request.method == "PUT") as saved:
        score.fill("2")
        score.press("Tab")
    assert saved.value.ok, saved.value.status
    with page.expect_response(lambda r: "/formgrader/api/comment/" in r.url and r.request.method == "PUT") as saved:
        comment.fill("Right scale; say why the bias shares the accumulator's scale.")
        comment.press("Tab")
    assert saved.value.ok, saved.value.status
    screenshot(page.locator(".nbgrader_cell", has=score).first, "formgrader-manual-grade")

    page.reload()
    # Formgrader's script fills each field from its own request after the page loads: wait for the values (on a
    # busy machine the comment came a moment after the score), not just for the fields.
    expect(score).to_have_value("2", timeout=PATIENCE_MS)
    expect(comment).to_have_value(re.compile(r"^Right scale"), timeout=PATIENCE_MS)
    after = _export(course)[ANN]
    assert float(after["score"]) == before + 2, after


def _shows_the_answer_without_running_it(page, watch: ScriptWatch) -> None:
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(500)  # an onerror fires once the broken image has failed, after the load
    assert ANSWER_TEXT in page.inner_text("body")  # the hostile cells did reach the page
    assert watch.fired(page) == []
    assert page.locator('a[href^="javascript:"], [onerror], [onload]').count() == 0


def test_hostile_submission_runs_no_script_in_formgrader(page, course, formgrader):
    watch = ScriptWatch().attach(page)
    _open_submission(page, formgrader, "mallory")
    _shows_the_answer_without_running_it(page, watch)


def test_hostile_feedback_page_runs_no_script(page, course):
    watch = ScriptWatch().attach(page)
    page.goto((course / "feedback" / "mallory" / "03_biases" / "biases.html").as_uri())
    _shows_the_answer_without_running_it(page, watch)


def test_script_detector_fires_on_an_unsanitised_page(page, tmp_path):
    """The detector itself: nbconvert's plain HTMLExporter keeps the payload, and every sign of it is seen."""
    from nbconvert import HTMLExporter

    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(f"{ANSWER_TEXT}\n\n{SCRIPT_HTML}"))
    code = nbformat.v4.new_code_cell("display(HTML(payload))")
    code.outputs.append(nbformat.v4.new_output("display_data", data={"text/html": SCRIPT_HTML, "text/plain": ""}))
    nb.cells.append(code)
    body, _ = HTMLExporter().from_notebook_node(nb)
    path = tmp_path / "unsanitised.html"
    path.write_text(body)
    watch = ScriptWatch().attach(page)
    page.goto(path.as_uri())
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(500)
    signs = watch.fired(page)
    assert any(s.startswith("dialog") for s in signs) and any(s.startswith("console") for s in signs), signs
    assert any(s.startswith("title") for s in signs) and any(s.startswith("global") for s in signs), signs


#: axe-core, as the axe-playwright-python package ships it (no download): injected into the page under test.
AXE = Path(axe_playwright_python.__file__).parent / "axe.min.js"
#: The axe rules that int8lab's feedback template decides (int8lab_feedback/index.html.j2 and the CSS it adds):
#: the page's language and title, its landmarks, the contrast of its text and links, its images' alt text.
INT8LAB_RULES = {
    "html-has-lang",
    "html-lang-valid",
    "document-title",
    "region",
    "landmark-one-main",
    "landmark-no-duplicate-main",
    "landmark-unique",
    "color-contrast",
    "link-in-text-block",
    "image-alt",
}


def _axe_violations(page) -> list[dict]:
    page.add_script_tag(path=str(AXE))
    return page.evaluate("async () => (await axe.run(document)).violations")


@pytest.mark.parametrize("student", [ANN, "mallory"])
def test_feedback_page_has_no_accessibility_violation_int8lab_controls(page, course, student):
    """axe-core on the feedback page (plots included): none of INT8LAB_RULES fails; the other rules are printed."""
    page.goto((course / "feedback" / student / "03_biases" / "biases.html").as_uri())
    page.wait_for_load_state("networkidle")
    assert page.locator("img").count() >= 1  # the plot cells ran: image-alt had something to check
    violations = _axe_violations(page)
    for violation in violations:
        nodes = [node["html"][:100] for node in violation["nodes"][:3]]
        print(f"axe {violation['id']} ({violation['impact']}, {len(violation['nodes'])} nodes): {nodes}")
    ours = sorted(v["id"] for v in violations if v["id"] in INT8LAB_RULES)
    assert ours == [], ours
