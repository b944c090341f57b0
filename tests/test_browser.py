"""In a real browser: the student's JupyterLab flow, the instructor's formgrader flow, hostile pages, accessibility.

Headless Chromium (Debian's, or $INT8LAB_CHROMIUM) through Playwright. One browser per module; one JupyterLab
for the student's tests and one graded course with its Jupyter server for the instructor's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from browser_support import ROOT, chromium, jupyter, screenshot

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
    yield context.new_page()
    context.close()


def _lab_settings(folder: Path) -> None:
    """No news pop-up over the notebook, and every cell in the DOM (no virtual scrolling) so tests can find it."""
    settings = {
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
    notebook.locator(".jp-Cell").first.wait_for(timeout=60_000)
    # The kernel is ready when the toolbar's (visually hidden) status says so.
    page.get_by_text("Kernel status: Idle").first.wait_for(state="attached", timeout=60_000)
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
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item:visible", has_text="Run All Cells").first.click()


def test_student_sees_the_misconception_then_the_passing_test_and_the_plot(page, lab):
    """A scale of max|w|/128 typed in the editor shows the named misconception; the right code passes, plot drawn."""
    notebook = _open_notebook(page, lab, "01_weights/weights.ipynb")
    stub = _cell(notebook, "YOUR CODE HERE")
    _replace_source(stub, WRONG_SCALE_128)
    _run_all(page)
    test_cell = _cell(notebook, "quantized_weights returns the right integers and scale")
    message = MISCONCEPTIONS["scale_128"][:50]
    test_cell.locator(".jp-OutputArea", has_text=message).wait_for(timeout=120_000)
    test_cell.scroll_into_view_if_needed()
    screenshot(test_cell, "student-misconception")

    _replace_source(_cell(notebook, "def quantized_weights"), RIGHT)
    _run_all(page)
    test_cell.locator(".jp-OutputArea", has_text=PASSED).wait_for(timeout=120_000)
    assert message not in test_cell.locator(".jp-OutputArea").inner_text()
    screenshot(test_cell, "student-test-passes")

    histogram = _cell(notebook, "plot_weight_histograms(float_net)").locator(".jp-OutputArea img").first
    histogram.wait_for(timeout=60_000)
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
