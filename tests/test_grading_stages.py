"""Each grading stage on small inputs: records, test-cell plans, the judge, intake, rebuild, reports."""

import contextlib
import copy
import fcntl
import json
import os
import re
import shutil
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from hostile import active_content, hidden_lines
from sample_submissions import released, submission

from int8lab.grading import intake, rebuild, records, report, run
from int8lab.grading.judge import NOT_RUN, Judge, JudgeFault
from int8lab.grading.model import Job, Receipt, Status
from int8lab.grading.testcells import Role, nbgrader_meta, plan_tests, probe_source
from notebook_harness import SOURCES, source_notebook

TINY = source_notebook(
    ("setup", "setup", "import torch\nfrom int8lab.checks import check_close"),
    ("solution", "impl", "def double(x):\n    return 2 * x"),
    (
        "test",
        "double_test",
        '"""double doubles."""\nx = torch.arange(3.0)\ny = double(x)\ncheck_close("double(x)", y, 2 * x)\n'
        "### BEGIN HIDDEN TESTS\ncheck_close('double(x + 1)', double_of_next, 2 * (x + 1))\n### END HIDDEN TESTS",
    ),
)
TINY.cells[2].source = TINY.cells[2].source.replace("y = double(x)", "y = double(x)\ndouble_of_next = double(x + 1)")


def _record(cell, statement, **values):
    return {(cell, statement): {"values": {k: records.encode(v) for k, v in values.items()}}}


@pytest.mark.parametrize(
    "value",
    [
        torch.arange(6, dtype=torch.float32).reshape(2, 3),
        np.linspace(0, 1, 5, dtype=np.float64),
        np.float32(0.25),
        torch.tensor(0.5),
        np.array(2.0),
        (1, 2.5, "text", None, True),
        {"a": [torch.tensor([-128.0, 127.0])]},
    ],
)
def test_records_round_trip_as_plain_data(value):
    back = records.decode(json.loads(json.dumps(records.encode(value))))
    assert type(back) is type(value)
    assert repr(back) == repr(value)


@pytest.mark.parametrize(
    "encoded",
    [
        {"array": {"kind": "torch", "dtype": "object", "shape": [1], "bytes": ""}},
        {"array": {"kind": "torch", "dtype": "float32", "shape": [4], "bytes": "AAAA"}},
        {"pickle": "gASV"},
        {"dict": [[1, 2]]},
    ],
)
def test_records_refuse_what_is_not_plain_data(encoded):
    with pytest.raises(records.RecordError):
        records.decode(encoded)


def test_objects_are_recorded_by_type_only_and_refuse_any_use():
    class Liar(float):
        def __eq__(self, other):
            return True

    assert records.encode(torch.nn.Linear(1, 1)) == {"object": "Linear"}
    unusable = records.Unrecorded("y", "Liar")
    with pytest.raises(records.RecordError):
        bool(unusable == 1.0)
    assert records.encode(Liar(2.0)) == 2.0  # a float subclass is recorded as its float value


def test_plan_splits_inputs_probes_and_checks():
    _, (test,) = plan_tests(TINY)
    roles = [s.role for s in test.statements]
    assert roles == [Role.INPUT, Role.INPUT, Role.PROBE, Role.PROBE, Role.CHECK]
    assert test.statements[2].binds == ("y",)
    probe = probe_source(test)
    assert "check_close" not in probe and "2 * (x + 1)" not in probe and "double(x + 1)" in probe


def test_judge_scores_the_record_and_computes_inputs_itself():
    judge = Judge.from_source(TINY)
    right = {
        **_record("double_test", 2, y=torch.arange(3.0) * 2),
        **_record("double_test", 3, double_of_next=torch.tensor([2.0, 4, 6])),
    }
    assert judge.judge(right)["double_test"].score == 2
    wrong = {**right, **_record("double_test", 3, double_of_next=torch.tensor([2.0, 4, 7]))}
    assert "double(x + 1)" in judge.judge(wrong)["double_test"].message
    # A record cannot supply an input: extra names make the statement's record unusable.
    forged = {**right, **_record("double_test", 2, y=torch.zeros(3), x=torch.zeros(3))}
    assert judge.judge(forged)["double_test"].message == NOT_RUN
    assert judge.judge({})["double_test"].message == NOT_RUN


def test_judge_replays_a_students_error_and_never_runs_student_names():
    error = {("double_test", 2): {"error": {"type": "NotImplementedError", "message": "later"}}}
    assert Judge.from_source(TINY).judge(error)["double_test"].message == (
        "NotImplementedError: later (raised by `y = double(x)`)"
    )
    broken = source_notebook(*[(k, g, s) for k, g, s in [("solution", "impl", "def f():\n    return 1")]])
    broken.cells.append(source_notebook(("test", "uses_f", "check = 1\nprint(f.value)")).cells[0])
    with pytest.raises(JudgeFault):
        Judge.from_source(broken).judge({})


@pytest.mark.parametrize("assignment", sorted(SOURCES))
def test_no_hidden_line_reaches_what_the_kernel_can_read(assignment, tmp_path):
    source = nbformat.read(SOURCES[assignment], as_version=4)
    secrets = hidden_lines(source)
    assert len(secrets) > 10
    rebuilt, _ = rebuild.rebuild_submission(submission(assignment), released(assignment))
    probing = rebuild.probe_notebook(rebuilt, plan_tests(source)[1])
    readable = [nbformat.writes(probing), json.dumps(run._kernel_environment(tmp_path))]
    package = run.PACKAGE_DIR
    readable += [p.read_text(errors="ignore") for p in package.rglob("*") if p.is_file() and p.suffix != ".pyc"]
    lines = {line.strip() for text in readable for line in text.splitlines()}
    # Long hidden lines must appear nowhere; short ones (`expected,`) not as a line of their own.
    leaked = sorted(s for s in secrets if s in lines or (len(s) >= 32 and any(s in text for text in readable)))
    assert not leaked, leaked[:3]
    assert not any(str(run.PACKAGE_DIR.parent / "solutions").startswith(p) for p in run._readable_paths())


def test_intake_refuses_links_fifos_and_bad_ids(tmp_path):
    root = tmp_path / "submitted"
    (root / "linked" / "01_weights").mkdir(parents=True)
    (root / "linked" / "01_weights" / "weights.ipynb").symlink_to("/etc/passwd")
    (root / "fifo" / "01_weights").mkdir(parents=True)
    os.mkfifo(root / "fifo" / "01_weights" / "weights.ipynb")
    (root / "folderlink").symlink_to(root / "fifo")
    (root / "-bad[id]" / "01_weights").mkdir(parents=True)
    (root / "new\nline" / "01_weights").mkdir(parents=True)
    assignments = {"01_weights": type("A", (), {"notebook": "weights.ipynb"})()}
    jobs = {job.student: job for job in intake.find_jobs(root, assignments)}
    for student in ("linked", "fifo"):
        with pytest.raises(intake.InvalidNotebook):
            intake.read_notebook(jobs[student].notebook)
    assert jobs["folderlink"].status is Status.MISSING and "link" in jobs["folderlink"].reason
    assert jobs["-bad[id]"].status is Status.MISSING  # a usable id: graded (its folder is empty)
    assert jobs["new\nline"].status is Status.INVALID_STUDENT_ID


@pytest.mark.parametrize(
    "nested", [b"[" * 100_000 + b"]" * 100_000, b'{"cells": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"]
)
def test_a_file_nested_beyond_what_json_reads_is_an_invalid_notebook(nested):
    """Catches a submission nested 100,000 deep raising RecursionError out of intake, which the pool and the Dask
    worker report as a grader fault: it is the student's file that is no notebook."""
    with pytest.raises(intake.InvalidNotebook, match=r"nested 10000\d deep, more than the 100"):
        intake.parse_notebook(nested)


def test_how_deep_a_notebook_may_nest_does_not_depend_on_the_callers_stack():
    """Catches a verdict that depends on the reader's stack (a Dask task's thread is deeper than a pool worker's):
    metadata nested 150 deep is refused and 90 deep is read, whether 0 or 600 frames are below the call."""

    def nested_notebook(depth: int) -> bytes:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
        nb.metadata["deep"] = json.loads("[" * depth + "]" * depth)
        return nbformat.writes(nb).encode()

    def verdict(data: bytes, frames: int) -> str:
        if frames:
            return verdict(data, frames - 1)
        try:
            intake.parse_notebook(data)
        except intake.InvalidNotebook as exc:
            return str(exc)
        return "read"

    for frames in (0, 600):
        assert verdict(nested_notebook(90), frames) == "read"
        assert "more than the 100" in verdict(nested_notebook(150), frames)
    # A bracket inside a string is text, not nesting.
    assert (
        verdict(nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("[" * 500)])).encode(), 0)
        == "read"
    )


def test_intake_gives_every_submitted_folder_a_row(tmp_path):
    """A hidden student or assignment folder is reported, never skipped in silence; what an archiver or Jupyter
    leaves behind (__MACOSX, ._ files, .ipynb_checkpoints) is not a submission."""
    unpacked = tmp_path / "unpacked"
    root = unpacked / "submitted"
    for path in [
        ".alice/01_weights/weights.ipynb",
        ".erin/.01_weights/weights.ipynb",
        "bob/.01_weights/weights.ipynb",
        "carol/01_weights/weights.ipynb",
        "carol/01_weights/.ipynb_checkpoints/weights-checkpoint.ipynb",
        "dave/01_weights/my weights.ipynb",
        "dave/01_weights/._my weights.ipynb",
        ".ipynb_checkpoints/notes-checkpoint.ipynb",
    ]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("{}")
    (unpacked / "__MACOSX" / "submitted" / "carol" / "01_weights").mkdir(parents=True)
    assignments = {"01_weights": type("A", (), {"notebook": "weights.ipynb"})()}
    jobs = {job.student: job for job in intake.find_jobs(unpacked, assignments)}
    assert sorted(jobs) == [".alice", ".erin", "bob", "carol", "dave"]
    assert jobs[".alice"].status is jobs[".erin"].status is Status.INVALID_STUDENT_ID
    assert jobs["bob"].status is Status.MISSING and ".01_weights" in jobs["bob"].reason
    assert jobs["carol"].notebook == root / "carol" / "01_weights" / "weights.ipynb"
    assert jobs["dave"].notebook.name == "my weights.ipynb"


SECRET = "5f" * 64  # what nbgrader submit writes: secrets.token_hex(64)


def _receipt_folder(tmp_path, student: str, timestamp=None, secret=None):
    """A submission folder with ``timestamp.txt`` and ``submission_secret.txt`` given as bytes, a link target
    (a Path) or None (absent)."""
    folder = tmp_path / "submitted" / student / "01_weights"
    folder.mkdir(parents=True)
    (folder / "weights.ipynb").write_text("{}")
    for name, content in ((intake.TIMESTAMP_FILE, timestamp), (intake.SECRET_FILE, secret)):
        if isinstance(content, Path):
            (folder / name).symlink_to(content)
        elif content is not None:
            (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2025-03-14 16:00:00.250000 UTC", "2025-03-14 16:00:00.250000"),  # nbgrader's default
        ("2025-03-14 17:00:00.000001 CET", "2025-03-14 16:00:00.000001"),  # Exchange.timezone = "Europe/Paris"
        ("2025-07-14 18:00:00 Europe/Paris", "2025-07-14 16:00:00.000000"),
        ("2025-03-14 16:00:00", "2025-03-14 16:00:00.000000"),
    ],
)
def test_a_submission_time_is_read_as_nbgrader_reads_it_and_written_back_in_utc(tmp_path, text, utc):
    folder = _receipt_folder(tmp_path, "ada", text.encode(), SECRET.encode())
    receipt = intake.read_receipt(folder)
    assert receipt.problems == () and receipt.secret == SECRET
    from nbgrader.utils import parse_utc

    assert receipt.timestamp == parse_utc(text)
    kept = tmp_path / "kept"
    kept.mkdir()
    intake.write_receipt(kept, receipt)
    assert (kept / intake.TIMESTAMP_FILE).read_text() == f"{utc} UTC"
    assert (kept / intake.SECRET_FILE).read_text() == SECRET  # byte for byte: the student's cache hashes it


@pytest.mark.parametrize(
    ("timestamp", "secret", "why"),
    [
        (Path("/etc/hostname"), Path("/etc/hostname"), "links are not followed"),
        (b"2025-03-14 16:00:00 UTC" + b" " * 200, b"x" * 2000, "more than the"),
        (b"2025-03-14 16:00:00 /etc/localtime", b"", "not a timestamp"),  # dateutil would open a zone path
        (b"2025-03-14 16:00:00 ../../proc/self/environ", b"two words", "not a timestamp"),
        (b"2025-02-30 16:00:00 UTC", b"\xe9t\xe9", "day is out of range"),
        (b"9999-12-31 23:59:59 -1400", "s\u00e9cret".encode(), "out of range"),
        (b"=HYPERLINK(1)", b"\n", "not a timestamp"),
    ],
)
def test_exchange_files_that_nbgrader_would_not_write_are_left_out_with_a_reason(tmp_path, timestamp, secret, why):
    folder = _receipt_folder(tmp_path, "mallory", timestamp, secret)
    receipt = intake.read_receipt(folder)
    assert receipt.timestamp is None and receipt.secret is None, receipt
    assert len(receipt.problems) == 2 and why in receipt.problems[0], receipt.problems
    assert all(problem.split()[0] in (intake.TIMESTAMP_FILE, intake.SECRET_FILE) for problem in receipt.problems)
    if isinstance(timestamp, Path):  # a FIFO in place of a file is refused without blocking, too
        (folder / intake.TIMESTAMP_FILE).unlink()
        os.mkfifo(folder / intake.TIMESTAMP_FILE)
        assert "not a regular file" in intake.read_receipt(folder).problems[0]


def test_a_submission_outside_the_exchange_has_an_empty_receipt_and_no_problem(tmp_path):
    assert intake.read_receipt(_receipt_folder(tmp_path, "zoe")) == Receipt()


def test_regrading_replaces_the_kept_exchange_files(tmp_path):
    """OUT/submitted holds the graded submission's files after every grading: a newer submission's, and none
    left over from an older one when the newer has none."""
    from int8lab.grading.pipeline import _keep_submitted

    out = tmp_path / "out"
    first = _receipt_folder(tmp_path / "first", "ada", b"2025-03-14 16:00:00.000000 UTC", SECRET.encode())
    second = _receipt_folder(tmp_path / "second", "ada", b"2025-03-15 09:30:00.000000 UTC")
    kept = out / "submitted" / "ada" / "01_weights"
    for folder, timestamp, secret in ((first, "2025-03-14 16:00:00", SECRET), (second, "2025-03-15 09:30:00", None)):
        _keep_submitted(out, [Job("ada", "01_weights", folder / "weights.ipynb", receipt=intake.read_receipt(folder))])
        assert (kept / intake.TIMESTAMP_FILE).read_text() == f"{timestamp}.000000 UTC"
        assert (kept / intake.SECRET_FILE).exists() is (secret is not None)
        assert (kept / "weights.ipynb").read_text() == "{}"


def test_a_gradebook_that_cannot_be_written_is_one_line_with_its_details_kept(tmp_path):
    """A damaged (or locked) gradebook is a problem of the run, said in one line (the exit status is then 1),
    with the traceback for grading.log; never a traceback on the instructor's terminal."""
    from int8lab.grading import pipeline

    (tmp_path / "gradebook.db").write_bytes(b"not an SQLite database" * 64)
    late, problems = pipeline._gradebook(tmp_path, [], {}, None)
    assert late == [] and len(problems) == 1, problems
    assert str(problems[0]).startswith("gradebook: ") and "\n" not in str(problems[0]), problems[0]
    assert "Traceback" in problems[0].details


def test_a_course_graded_before_gets_the_assignments_it_lacks(tmp_path):
    """OUT graded once with --assignment 03_biases, then for 01_weights: the gradebook gets 01_weights (its
    notebook and graded cells) before its scores are merged, instead of failing on a missing entry."""
    from nbgrader.api import Gradebook

    from int8lab.grading import course

    assignments = course.load_assignments(SOURCES["01_weights"].parents[1], ["01_weights", "03_biases"])
    course.build_course(tmp_path / "template", assignments)
    out = tmp_path / "out"
    course.prepare_out(out, tmp_path / "template", None)
    for part in ("source", "release"):  # as a course that only 03_biases was graded into
        shutil.rmtree(out / part / "01_weights")
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gradebook:
        gradebook.remove_assignment("01_weights")
    course.prepare_out(out, tmp_path / "template", None)
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gradebook:
        (notebook,) = gradebook.find_assignment("01_weights").notebooks
        graded = {cell.name for cell in notebook.grade_cells}
    assert notebook.name == "weights" and graded == {grade_id for grade_id, _, _ in assignments["01_weights"].cells}
    assert (out / "release" / "01_weights" / "weights.ipynb").is_file()


@pytest.mark.parametrize("text", ["=1+1", "+cmd", "-2", "@SUM(A1)", "\tx", "\rx"])
def test_spreadsheet_formulas_are_neutralised(text):
    assert report.spreadsheet_safe(text) == "'" + text
    assert report.spreadsheet_safe("plain") == "plain"


def test_a_kernel_that_cannot_start_stops_the_run_with_its_own_stderr(tmp_path, monkeypatch):
    """A grader fault (here: the sandbox hides the int8lab package) is never reported as 0 points for everyone."""
    from int8lab.grading import course, pipeline
    from int8lab.grading.model import GradingError, Limits

    assignments = course.load_assignments(SOURCES["01_weights"].parents[1], ["01_weights"])
    readable = run._readable_paths
    monkeypatch.setattr(run, "_readable_paths", lambda: [p for p in readable() if p != str(run.PACKAGE_DIR)])
    with pytest.raises(GradingError, match="kernel stderr") as failure:
        pipeline._check_the_grader(assignments, tmp_path, Limits(cell_timeout=30), None, progress=False)
    assert "nobody was graded" in str(failure.value)
    assert "int8lab" in str(failure.value)  # the kernel's own words: the import that failed


PAYLOADS = [
    "[see](javascript:alert(document.domain))",
    "[data](data:text/html,<script>alert(1)</script>)",
    "<script>alert(1)</script>",
    '<img src="x" onerror="alert(1)">',
    '<a href="javascript:alert(1)">click</a>',
    '<svg onload="alert(1)"><circle r="5"/></svg>',
    '<div onmouseover="alert(1)">hover</div>',
    '<iframe src="https://example.org"></iframe>',
]


def _displayed(mime: str, value: str):
    return nbformat.v4.new_output("display_data", data={mime: value})


@pytest.mark.parametrize("payload", PAYLOADS)
def test_sanitizer_makes_payloads_inert_in_markdown_and_outputs(payload):
    """Rendered as the feedback page renders it, nothing of the payload can run."""
    from nbconvert import HTMLExporter

    from int8lab.grading.sanitize import sanitize_notebook

    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("My answer: " + payload))
    code = nbformat.v4.new_code_cell("x")
    code.outputs = [
        _displayed("text/html", payload),
        _displayed("text/markdown", payload),
        _displayed("application/javascript", "alert(1)"),
        _displayed("image/svg+xml", payload),
    ]
    nb.cells.append(code)
    unsafe, _ = HTMLExporter(template_name="basic").from_notebook_node(copy.deepcopy(nb))
    assert active_content(unsafe), "the payload is not active even unsanitised: the test proves nothing"
    page, _ = HTMLExporter(template_name="basic").from_notebook_node(sanitize_notebook(nb))
    assert active_content(page) == []


def test_sanitizer_keeps_plots_tables_and_text():
    from int8lab.grading.sanitize import sanitize_notebook

    table = (
        '<table class="dataframe" border="1"><thead><tr><th>layer</th></tr></thead>'
        "<tbody><tr><td>conv1</td></tr></tbody></table>"
    )
    code = nbformat.v4.new_code_cell("x")
    code.outputs = [
        nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}),
        _displayed("text/html", table),
        nbformat.v4.new_output("stream", name="stdout", text="accuracy 96.67%\n"),
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("**Bold** and $s = x / 127$"), code])
    clean = sanitize_notebook(nb)
    outputs = clean.cells[1].outputs
    assert outputs[0].data["image/png"] == "iVBORw0KGgo="
    assert outputs[1].data["text/html"] == table
    assert outputs[2].text == "accuracy 96.67%\n"
    assert clean.cells[0].source.strip() == "<p><strong>Bold</strong> and $s = x / 127$</p>"


def test_watchdog_kills_the_worker_of_an_overdue_job(tmp_path):
    import subprocess
    import time

    from int8lab.grading.model import Limits
    from int8lab.grading.workers import JOB_GRACE_SECONDS, _overdue

    worker = subprocess.Popen(["sleep", "60"])
    (tmp_path / "worker").write_text(f"{worker.pid} {time.time()}")
    assert not _overdue(tmp_path, Limits(notebook_timeout=10))
    (tmp_path / "worker").write_text(f"{worker.pid} {time.time() - 11 - JOB_GRACE_SECONDS}")
    assert _overdue(tmp_path, Limits(notebook_timeout=10))
    assert worker.wait(timeout=10) == -9


@pytest.mark.parametrize(
    ("type_name", "message", "hint"),
    [
        ("OverflowError", "Python int too big to convert to C long", "a shift of 63 or more"),
        ("RuntimeError", "Boolean value of Tensor with more than one value is ambiguous", "(scale <= 0).any()"),
    ],
)
def test_a_raw_error_gets_the_call_that_raised_it_and_a_hint(type_name, message, hint):
    error = {("double_test", 2): {"error": {"type": type_name, "message": message}}}
    verdict = Judge.from_source(TINY).judge(error)["double_test"].message
    assert verdict.startswith(f"{type_name}: {message}") and "`y = double(x)`" in verdict and hint in verdict


def test_a_quantized_tensor_is_refused_with_a_message_that_says_what_to_return():
    import torch

    quantized = torch.quantize_per_tensor(torch.tensor([0.5, -1.0]), 1 / 127, 0, torch.qint8)
    encoded = records._encoded(quantized)
    assert "float32" in encoded["object"]
    judge = Judge.from_source(TINY)
    right = _record("double_test", 3, double_of_next=torch.tensor([2.0, 4, 6]))
    verdict = judge.judge({**right, ("double_test", 2): {"values": {"y": encoded}}})["double_test"]
    assert "quantized tensor" in verdict.message and "float32" in verdict.message


def test_a_forged_accuracy_is_recomputed_from_the_recorded_logits():
    """A derived probe (no student call of its own) is recomputed by the judge, not taken from its record."""
    source = nbformat.read(SOURCES["02_activations"], as_version=4)
    judge = Judge.from_source(source)
    test = next(t for t in judge.tests if t.grade_id == "net_quantized_keeps_float_accuracy")
    index = {name: i for i, s in enumerate(test.statements) for name in s.binds}
    from int8lab.grading.selfcheck import probe_in_process

    forged = {(cell, statement): record for cell, statement, record in probe_in_process(source).entries}
    forged[(test.grade_id, index["int8_logits"])] = {"values": {"int8_logits": records.encode(torch.zeros(360, 10))}}
    forged[(test.grade_id, index["int8_accuracy"])] = {"values": {"int8_accuracy": 1e308}}
    assert "reaches 10.00%" in judge.judge(forged)[test.grade_id].message


BYPASSES = [
    "<section>\n[see my derivation](javascript:fetch('/api/contents'))\n</section>",
    "> ```\n> a\n>\n> [x](javascript:alert(1))\n> ```",
]


@pytest.mark.parametrize("payload", BYPASSES, ids=["link_in_html_block", "link_in_quoted_fence"])
def test_the_templates_second_markdown_pass_is_cleaned_too(payload, tmp_path):
    """Feedback and formgrader render markdown again after sanitize.py; the course config makes that pass safe."""
    from nbconvert.exporters import HTMLExporter
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    from traitlets.config import Config

    from int8lab.grading.course import configure
    from int8lab.grading.sanitize import safe_markdown2html, sanitize_notebook

    once = sanitize_notebook(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(payload)])).cells[0].source
    # sanitize.py now writes a code block's line breaks as &#10; (kept_whole), which keeps the second pass from
    # splitting it; the cleaning of that pass must hold without that too, as it was written before.
    split = once.replace("&#10;", "\n")
    assert active_content(markdown2html_mistune(split))  # the bypass: the plain second pass revives the link
    config = Config()
    configure(config, tmp_path)
    exporter = HTMLExporter(config=config)
    assert exporter.environment.filters["markdown2html"] is safe_markdown2html
    feedback_exporter = HTMLExporter(config=Config({"HTMLExporter": config.GenerateFeedback.HTMLExporter}))
    for text in (once, split):
        assert not active_content(safe_markdown2html(text))
        assert not active_content(feedback_exporter.environment.filters["markdown2html"](text))  # marked for mathml


def _zip_with_a_bad_crc(path):
    import zipfile

    notebook = nbformat.writes(submission("01_weights")).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("submitted/alice/01_weights/weights.ipynb", notebook)
    data = bytearray(path.read_bytes())
    start = data.index(b'"cells"')  # a byte of the stored member's data, not of a header
    data[start + 1] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_zip_stops_with_one_line_that_names_it(tmp_path, capsys):
    import zipfile

    from int8lab import cli
    from int8lab.grading.model import GradingError

    archive = _zip_with_a_bad_crc(tmp_path / "class.zip")
    with pytest.raises(GradingError) as failure:
        intake.open_submissions(archive, tmp_path / "scratch")
    message = str(failure.value)
    assert str(archive) in message and "damaged" in message and "\n" not in message
    solutions = SOURCES["01_weights"].parents[1]
    argv = ["grade", str(archive), "--out", str(tmp_path / "out"), "--solutions", str(solutions)]
    assert cli.main([*argv, "--assignment", "01_weights"]) == 2
    printed = capsys.readouterr().err
    assert printed == f"int8lab grade: {message}\n"
    # Refusals of a readable archive keep their own words.
    with zipfile.ZipFile(tmp_path / "unsafe.zip", "w") as unsafe:
        unsafe.writestr("../escape/01_weights/weights.ipynb", "{}")
    with pytest.raises(GradingError, match="unsafe path"):
        intake.open_submissions(tmp_path / "unsafe.zip", tmp_path / "scratch2")


def test_the_kernel_check_has_its_own_time_limits(tmp_path, monkeypatch):
    """A short --timeout is the students' cell limit: the start-up check of a kernel (torch's import on a
    loaded machine) gets its own, generous one, and so never stops the whole run."""
    import int8lab.training
    from int8lab.grading import course, pipeline, selfcheck
    from int8lab.grading.model import Limits

    seen = []

    def execute(notebook, job_dir, limits, cgroups=None):
        seen.append(limits)
        executed = copy.deepcopy(notebook)
        executed.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="kernel ready\n")]
        return run.Run(Status.OK, executed=executed)

    monkeypatch.setattr(run, "execute", execute)
    monkeypatch.setattr(int8lab.training, "trained_model", lambda **kwargs: None)
    monkeypatch.setattr(selfcheck, "checked_reference", lambda name, source: None)
    assignments = course.load_assignments(SOURCES["01_weights"].parents[1], ["01_weights"])
    students = Limits(cell_timeout=1, notebook_timeout=5, memory_bytes=1 << 30)
    pipeline._check_the_grader(assignments, tmp_path, students, None, progress=False)
    (checked,) = seen
    assert checked.cell_timeout >= 120
    assert checked.notebook_timeout >= checked.cell_timeout
    assert checked.memory_bytes == students.memory_bytes  # the sandbox checked is the students'


def _page(nb, tmp_path) -> str:
    """``nb`` as nbconvert renders it with the course's configuration (its second markdown pass included)."""
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    from int8lab.grading.course import configure

    config = Config()
    configure(config, tmp_path)
    config.HTMLExporter.template_name = "classic"  # formgrade/feedback need nbgrader's resources; same filters
    page, _ = HTMLExporter(config=config).from_notebook_node(copy.deepcopy(nb))
    return page


#: A 1x1 PNG, as Jupyter stores a pasted image.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def _paste_images(nb):
    """The first markdown answer shows a pasted PNG, a pasted SVG and an attachment the student lost."""
    answer = next(c for c in nb.cells if c.cell_type == "markdown" and nbgrader_meta(c).get("solution"))
    answer.source = (
        "My derivation, on the board:\n\n![board](attachment:board.png)\n\n![sketch](attachment:sketch.svg)\n\n"
        "![lost](attachment:lost.png)"
    )
    answer["attachments"] = {
        "board.png": {"image/png": PNG},
        "sketch.svg": {"image/svg+xml": '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'},
    }
    return nbgrader_meta(answer)["grade_id"]


def test_a_pasted_image_in_an_answer_is_graded_and_kept_on_the_page(tmp_path, monkeypatch):
    """The answer's attachments are the student's: a PNG stays (embedded in the page), an SVG goes."""
    from sample_submissions import write_submission

    from int8lab.grading import course, selfcheck, workers
    from int8lab.grading.model import Job, Limits

    name = "02_activations"
    assignment = course.load_assignments(SOURCES[name].parents[1], [name])[name]
    assignment.release = released(name)
    pasted = []
    path = write_submission(
        tmp_path / "submitted", "alice", name, submission(name, edit=lambda nb: pasted.append(_paste_images(nb)))
    )
    # The kernel's run, without a kernel: the probe notebook comes back as it went, with the reference's records.
    records_text = "\n".join(json.dumps(r) for _, _, r in selfcheck.probe_in_process(assignment.source).entries)
    monkeypatch.setattr(run, "execute", lambda nb, *a, **k: run.Run(Status.OK, executed=nb, records_text=records_text))
    result = workers.grade_one(Job("alice", name, path), assignment, tmp_path / "job", Limits(), None)
    assert result.status is Status.OK, result.reason
    assert sum(v.score for v in result.verdicts.values()) == assignment.autograded_points > 0
    graded = nbformat.reads(result.graded_file.decode(), as_version=4)  # as OUT/autograded will hold it
    (answer,) = [c for c in graded.cells if nbgrader_meta(c).get("grade_id") == pasted[0]]
    assert f'src="data:image/png;base64,{PNG}"' in answer.source
    assert "svg" not in answer.source and "alert" not in answer.source
    assert list(answer.attachments) == ["board.png"]
    page = _page(graded, tmp_path)
    assert f'src="data:image/png;base64,{PNG}"' in page
    assert "data:image/svg" not in page and "onload" not in page


def test_an_image_link_cannot_smuggle_other_data():
    from int8lab.grading.sanitize import safe_markdown2html, sanitize_notebook

    nb = nbformat.v4.new_notebook()
    for source in [
        f"[click](data:image/png;base64,{PNG})",
        '<img src="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">',
        f'<img src="data:image/png;base64,{PNG}" onerror="alert(1)">',
        '<img src="https://tracker.example.org/pixel.png">',
        '<a href="da&#x74;a:text/html,<script>alert(1)</script>">x</a>',
    ]:
        nb.cells.append(nbformat.v4.new_markdown_cell(source))
    html = "".join(c.source for c in sanitize_notebook(nb).cells)
    assert "data:text" not in html and "onerror" not in html and "tracker" not in html and "href" not in html
    # The templates' second pass meets an attachment reference as text: no attachment there, and no error.
    assert "attachment:" not in safe_markdown2html("<section>\n\n![x](attachment:x.png)\n\n</section>")


HIDING = [
    {"transient": {"remove_source": True}},
    {"jupyter": {"source_hidden": True, "outputs_hidden": True}},
    {"hide_input": True},
    {"tags": ["remove-input", "keep-me"]},
    {"tags": ["remove_cell"]},
    {"tags": ["hide-input"]},
    {"tags": ["remove-cell", "hide_cell", "remove_output"]},
]


def test_every_page_shows_every_source(tmp_path):
    """A cell's output never appears without the code that made it: metadata that hides a source is dropped."""
    from int8lab.grading.sanitize import sanitize_notebook

    nb = nbformat.v4.new_notebook()
    for index, metadata in enumerate(HIDING):
        cell = nbformat.v4.new_code_cell(f"concealed_{index} = print('Score: 20/20')", metadata=copy.deepcopy(metadata))
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="Score: 20/20\n")]
        nb.cells.append(cell)
    clean = sanitize_notebook(nb)
    for cell in clean.cells:
        assert not cell.metadata.get("transient", {}).get("remove_source")
        assert not cell.metadata.get("jupyter", {}).get("source_hidden")
        assert not cell.metadata.get("jupyter", {}).get("outputs_hidden")
        assert "hide_input" not in cell.metadata
        assert set(cell.metadata.get("tags", [])) <= {"keep-me"}
    assert clean.cells[3].metadata.tags == ["keep-me"]
    page = _page(clean, tmp_path)
    assert all(f"concealed_{index}" in page for index in range(len(HIDING)))


BANNER = '<div class="navbar navbar-fixed-top" id="score" style="color: red">Score: 20/20</div>'


def test_student_markup_keeps_no_class_of_the_page(tmp_path):
    """The page's CSS (Bootstrap's navbar, .hidden) must not style a student's markup: only the classes that
    nbconvert's own rendering needs survive (code highlighting, pandas tables)."""
    from int8lab.grading.sanitize import sanitize_notebook

    table = '<table class="dataframe" border="1"><tbody><tr><td>1</td></tr></tbody></table>'
    code = nbformat.v4.new_code_cell("x")
    code.outputs = [
        _displayed("text/html", BANNER + '<span class="hidden">x</span>' + table),
        _displayed("text/markdown", BANNER),
    ]
    markdown = nbformat.v4.new_markdown_cell(BANNER + "\n\n```python\nx = 1  # one\n```\n\n# Heading")
    nb = nbformat.v4.new_notebook(cells=[markdown, code])
    clean = sanitize_notebook(nb)
    rendered = clean.cells[0].source + "".join(o.data["text/html"] for o in clean.cells[1].outputs)
    assert "Score: 20/20" in rendered
    assert "navbar" not in rendered and "hidden" not in rendered
    assert "style=" not in rendered and "id=" not in rendered
    assert '<div class="highlight">' in rendered and '<span class="mi">1</span>' in rendered
    assert table in rendered
    page = _page(clean, tmp_path)
    assert 'class="navbar' not in page and 'id="score"' not in page


def test_an_answer_left_as_released_is_recognised_after_sanitizing():
    """Markdown answers are rendered to HTML in the graded notebook: an untouched one must still be found, so
    that formgrader shows "No response" instead of waiting for a hand grade."""
    import copy

    from int8lab.grading.merge import unchanged_answers
    from int8lab.grading.sanitize import sanitize_notebook

    release = released("02_activations")
    markdown_answers = {
        cell.metadata["nbgrader"]["grade_id"]
        for cell in release.cells
        if cell.cell_type == "markdown" and cell.metadata.get("nbgrader", {}).get("solution")
    }
    assert markdown_answers
    graded = sanitize_notebook(copy.deepcopy(release))
    assert markdown_answers <= unchanged_answers(graded, release)
    answered = copy.deepcopy(release)
    for cell in answered.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") in markdown_answers:
            cell.source = "My own derivation: $s = \\max|x| / 127$."
    assert not markdown_answers & unchanged_answers(sanitize_notebook(answered), release)


def test_every_image_of_a_feedback_page_has_alternative_text():
    """Catches the feedback exporter (which skips nbconvert's BeautifulSoup pass) leaving an image without alt text,
    or replacing a student's own: a plot gets nbconvert's text, an image with alt keeps it, '>' in a value counts."""
    from int8lab.grading.feedback import _IMAGE_TAG, NO_ALT_TEXT, _with_alt_text

    page = '<p><img src="data:image/png;base64,AAAA"\n></p><img alt="a > b" src="x.png"><IMG SRC=\'y>z.png\'/>'
    rewritten = _IMAGE_TAG.sub(_with_alt_text, page)
    assert rewritten == (
        f'<p><img src="data:image/png;base64,AAAA" alt="{NO_ALT_TEXT}"></p><img alt="a > b" src="x.png">'
        f"<IMG SRC='y>z.png' alt=\"{NO_ALT_TEXT}\"/>"
    )


def test_the_feedback_exporter_writes_the_page_nbconverts_html_exporter_writes():
    """Catches the feedback exporter (nbconvert's HTML exporter without its BeautifulSoup pass, with remembered
    highlighting) writing another page than nbconvert's own exporter, same configuration, filters, preprocessors
    and resources: once through BeautifulSoup as nbconvert's last pass does, ours is nbconvert's page exactly."""
    from bs4 import BeautifulSoup
    from nbconvert import HTMLExporter

    from int8lab.grading import course, pages
    from int8lab.grading.sanitize import sanitize_notebook

    name = "02_activations"
    assignment = course.load_assignments(SOURCES[name].parents[1], [name])[name]
    assignment.release = released(name)
    graded = sanitize_notebook(submission(name))
    plot = next(c for c in graded.cells if c.cell_type == "code")
    plot.outputs = [nbformat.v4.new_output("display_data", data={"image/png": PNG})]  # no alt text of its own
    verdicts = {}
    ours = pages.render_page(graded, Job("ann", name, None), assignment, verdicts)
    feedback = pages._exporter()
    plain = HTMLExporter(parent=feedback.parent, config=feedback.config)
    for preprocessor in feedback._preprocessors:
        plain.register_preprocessor(preprocessor)
    original = pages._exporter
    pages._exporter = lambda: plain
    try:
        theirs = pages.render_page(graded, Job("ann", name, None), assignment, verdicts)
    finally:
        pages._exporter = original
    assert type(feedback) is not type(plain) and "No description has been provided" in theirs
    assert ours != theirs  # bs4's serialisation differs: the comparison below is not of a page with itself
    assert str(BeautifulSoup(ours, features="html.parser")) == theirs


def test_remembered_highlighting_ignores_execution_times_and_keeps_the_magics_language(monkeypatch):
    """Catches a highlighting memory keyed on a cell's whole metadata (nbclient's execution times differ on every
    page: nothing was ever remembered, 60 % of a page's time) and one keyed on less than what nbconvert reads of
    it (``magics_language``: a %%bash cell highlighted as Python)."""
    from nbconvert.filters import highlight
    from nbconvert.filters.highlight import Highlight2HTML

    from int8lab.grading.feedback import RememberedHighlight

    calls = []
    pygmentize = highlight._pygments_highlight
    monkeypatch.setattr(highlight, "_pygments_highlight", lambda *a, **kw: calls.append(1) or pygmentize(*a, **kw))
    remembered, plain = RememberedHighlight(pygments_lexer="ipython3"), Highlight2HTML(pygments_lexer="ipython3")
    source = "%%bash\nfor f in *.ipynb; do echo $f; done"
    times = [{"execution": {"iopub.execute_input": f"2026-12-01T05:0{i}:00Z"}, "tags": []} for i in range(3)]
    pages = [remembered(source, "ipython3", metadata) for metadata in times]
    assert len(calls) == 1 and pages == [plain(source, "ipython3", times[0])] * 3
    bash = {"magics_language": "bash", **times[0]}
    assert remembered(source, "ipython3", bash) == plain(source, "ipython3", bash) != pages[0]
    for metadata in ({}, None, {"magics_language": None}):
        assert remembered(source, "ipython3", metadata) == plain(source, "ipython3", metadata)


def test_a_remembered_markdown_cell_is_the_one_with_its_own_attachments():
    """Catches the sanitizer's memory of rendered markdown keyed on the text alone: two cells with the same text,
    one with a PNG attachment and one without, must each show their own (an image, then none)."""
    from int8lab.grading.sanitize import sanitize_notebook

    text = "![plot](attachment:plot.png)"
    with_image = nbformat.v4.new_markdown_cell(text, attachments={"plot.png": {"image/png": "iVBORw0KGgo="}})
    notebook = nbformat.v4.new_notebook(cells=[with_image, nbformat.v4.new_markdown_cell(text)])
    first, second = sanitize_notebook(notebook).cells
    assert "data:image/png;base64,iVBORw0KGgo=" in first.source
    assert "data:image" not in second.source


def test_an_images_metadata_adds_no_attribute_to_the_page():
    """Catches output metadata reaching the page's unquoted attributes (nbconvert writes width={{ width }}): a width
    or height of "1 onerror=alert(1)" or a filenames entry pointing the image elsewhere is dropped; a plain number
    stays."""
    from nbconvert import HTMLExporter

    from int8lab.grading.sanitize import sanitize_notebook

    hostile = {"width": "1 onerror=alert(1)", "image/png": {"height": "2 onload=alert(2)"}}
    hostile["filenames"] = {"image/png": "https://tracker.example/pixel.png"}
    code = nbformat.v4.new_code_cell("x")
    image = {"image/png": "iVBORw0KGgo="}
    code.outputs = [
        nbformat.v4.new_output("display_data", data=image, metadata=hostile),
        nbformat.v4.new_output("display_data", data=image, metadata={"image/png": {"width": 320}}),
    ]
    nb = nbformat.v4.new_notebook(cells=[code])
    unsafe, _ = HTMLExporter(template_name="classic").from_notebook_node(copy.deepcopy(nb))
    assert active_content(unsafe) and "tracker.example" in unsafe  # the test would prove nothing otherwise
    page, _ = HTMLExporter(template_name="classic").from_notebook_node(sanitize_notebook(nb))
    assert active_content(page) == [] and "tracker.example" not in page
    assert re.search(r"width=\"?320\b", page)  # a plain number stays


def _merge_course(folder: Path) -> dict:
    """01_weights and 03_biases in a gradebook at ``folder`` as ``nbgrader generate_assignment`` fills it (its own
    SaveCells, run in this process: a fraction of a second instead of nbgrader's process), 03_biases with a task
    cell too (a grade and a comment the merge never scores); returns the assignments, with their releases."""
    from nbgrader.api import Gradebook
    from nbgrader.preprocessors import SaveCells

    from int8lab.grading import course

    assignments = course.load_assignments(SOURCES["01_weights"].parents[1], ["01_weights", "03_biases"])
    url = f"sqlite:///{folder / 'gradebook.db'}"
    folder.mkdir(parents=True)
    with Gradebook(url) as gradebook:
        for name in assignments:
            gradebook.add_assignment(name)
    for name, assignment in assignments.items():
        source = copy.deepcopy(assignment.source)
        if name == "03_biases":
            task = {"task": True, "grade": False, "solution": False, "locked": True, "grade_id": "task_explain"}
            source.cells.append(nbformat.v4.new_markdown_cell("Explain.", metadata={"nbgrader": {**task, "points": 1}}))
        resources = {"nbgrader": {"db_url": url, "assignment": name, "notebook": Path(assignment.notebook).stem}}
        SaveCells().preprocess(source, resources)
        assignment.release = released(name)
    return assignments


def _merge_result(assignments, student, name, solved=True, timestamp=None, ran=True, wrong=()):
    """A graded ``name`` of ``student``: every test passed if ``solved`` but those in ``wrong``, none otherwise,
    the first test cell without a verdict; its answers filled if ``solved``, else left as released; submitted at
    ``timestamp``, ``(day, hour, ...)`` of January 2026 (none: no time); not run unless ``ran``."""
    import datetime

    from int8lab.grading.judge import Verdict
    from int8lab.grading.merge import unchanged_answers
    from int8lab.grading.model import Result
    from int8lab.grading.sanitize import sanitize_notebook
    from int8lab.grading.workers import graded_file

    tests = [(grade_id, points) for grade_id, points, autograded in assignments[name].cells if autograded]
    verdicts = {
        grade_id: Verdict(grade_id, points, points, "")
        if solved and grade_id not in wrong
        else Verdict(grade_id, 0.0, points, "no")
        for grade_id, points in tests[1:]
    }
    graded = sanitize_notebook(submission(name, solved=solved)) if ran else None
    when = datetime.datetime(2026, 1, *timestamp) if timestamp else None
    job = Job(student, name, Path(student) / name / assignments[name].notebook, receipt=Receipt(timestamp=when))
    if graded is None:
        return Result(job, Status.OK, verdicts=verdicts, page="<p>page</p>")
    # As the process that judged it sends it (workers.finish): the file and the answers left as released.
    unchanged = frozenset(unchanged_answers(graded, assignments[name].release))
    return Result(
        job, Status.OK, verdicts=verdicts, page="<p>page</p>", graded_file=graded_file(graded), unchanged=unchanged
    )


def _gradebook_rows(database: Path) -> dict:
    """Every row of every table of ``database``, the ids a merge generates replaced by what they identify (the
    course's own ids are the same in every copy of it)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(database)) as db:
        named = {}
        for row_id, assignment, student in db.execute("SELECT id, assignment_id, student_id FROM submitted_assignment"):
            named[row_id] = f"{student}'s {assignment}"
        for row_id, submission_id, notebook in db.execute(
            "SELECT id, assignment_id, notebook_id FROM submitted_notebook"
        ):
            named[row_id] = f"{named[submission_id]} {notebook}"
        for table in ("grade", "comment"):
            for row_id, notebook, cell in db.execute(f"SELECT id, notebook_id, cell_id FROM {table}"):  # noqa: S608
                named[row_id] = f"{table} of {named[notebook]} {cell}"
        rows = {}
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            cursor = db.execute(f"SELECT * FROM {table}")  # noqa: S608
            columns = [column[0] for column in cursor.description]
            rows[table] = sorted(
                (
                    {column: named.get(value, value) for column, value in zip(columns, row, strict=True)}
                    for row in cursor
                ),
                key=repr,
            )
    return rows


def _gradebook_as_nbgrader_sees_it(database: Path, assignments) -> dict:
    """What nbgrader's API says of every submission: formgrader's dicts, times and penalties, grades, comments."""
    from nbgrader.api import Gradebook, SubmittedAssignment

    def without_id(dicts):
        return sorted(({k: v for k, v in d.items() if k != "id"} for d in dicts), key=repr)

    seen = {}
    with Gradebook(f"sqlite:///{database}") as gradebook:
        for name, assignment in assignments.items():
            notebook = Path(assignment.notebook).stem
            seen[name] = without_id(gradebook.submission_dicts(name))
            seen[name, notebook] = without_id(gradebook.notebook_submission_dicts(notebook, name))
        for submission in gradebook.db.query(SubmittedAssignment):
            key = (submission.student.id, submission.name)
            seen[key] = [submission.timestamp, submission.extension, submission.duedate, submission.total_seconds_late]
            for notebook in submission.notebooks:
                seen[key] += [notebook.name, notebook.late_submission_penalty, notebook.flagged, notebook.score]
                seen[key] += sorted(
                    (g.name, g.auto_score, g.manual_score, g.extra_credit, g.needs_manual_grade, g.max_score, g.score)
                    for g in notebook.grades
                )
                seen[key] += sorted((c.name, c.auto_comment, c.manual_comment, c.comment) for c in notebook.comments)
    return seen


def test_a_batchs_new_submissions_inserted_at_once_are_those_nbgraders_orm_makes(tmp_path, monkeypatch):
    """Catches the bulk insert of new submissions differing from nbgrader's add_submission and the ORM merge in any
    column of any row (a default, a score, a comment, a time, a penalty), or in what nbgrader's API derives: the
    same results merged both ways into two copies of a course, first submissions, a re-grade keeping a hand score,
    a student's second assignment, a submission twice in one batch, late ones, one with no time, one not run."""
    import datetime

    import nbgrader.api
    from nbgrader.api import Gradebook

    from int8lab.grading import merge

    # A new gradebook's schema version, which nbgrader asks the alembic command for (5 s on a busy machine): the
    # merge never reads it.
    monkeypatch.setattr(nbgrader.api, "get_alembic_version", lambda: "unread")
    assignments = _merge_course(tmp_path / "template")
    due = {"01_weights": datetime.datetime(2026, 1, 5, 12), "03_biases": datetime.datetime(2026, 1, 10, 12)}
    weights, biases = "01_weights", "03_biases"
    inserted, insert_new = [], merge._insert_new
    monkeypatch.setattr(merge, "_insert_new", lambda *args: inserted.append(insert_new(*args)) or inserted[-1])
    seen = {}
    for way, bulk in (("orm", False), ("bulk", True)):
        out = tmp_path / way
        shutil.copytree(tmp_path / "template", out)
        first = [
            _merge_result(assignments, "ada", weights, timestamp=(5, 11, 59)),
            _merge_result(assignments, "ada", biases, solved=False, timestamp=(9,)),
            _merge_result(assignments, "bob", biases, timestamp=(10, 12, 0, 1)),
            _merge_result(assignments, "cyd", weights, wrong=("quantized_weights_all_zero",)),
            _merge_result(assignments, "dee", weights, ran=False, timestamp=(2,)),
        ]
        late = [merge.merge(out, first, assignments, due, bulk=bulk)]
        with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gradebook:  # a grader's hand score, then a re-grade
            gradebook.find_grade("derivation_bias_scale", "biases", biases, "bob").manual_score = 2.5
            gradebook.db.commit()
        merger = merge.Merger(out, assignments, due, batch=2, bulk=bulk)
        second = [
            _merge_result(assignments, "bob", biases, solved=False, timestamp=(10,)),  # on time
            _merge_result(assignments, "bob", weights, timestamp=(6,)),
            _merge_result(assignments, "eve", weights, solved=False, timestamp=(3,)),
            _merge_result(assignments, "eve", weights, timestamp=(4,), wrong=("quantized_weights_trained_layers",)),
        ]
        third = [
            _merge_result(assignments, "fay", biases, timestamp=(12,)),
            _merge_result(assignments, "ada", weights, solved=False, timestamp=(7,)),
        ]
        late += [merger.merge(second), merger.merge(third)]
        merger.close()
        notebooks = sorted(p.relative_to(out) for p in (out / "autograded").rglob("*") if p.is_file())
        files = {path: (out / path).read_bytes() for path in notebooks}
        pages = [result.page for result in first + second + third]
        seen[way] = late, pages, files, _gradebook_rows(out / "gradebook.db")
        seen[way] += (_gradebook_as_nbgrader_sees_it(out / "gradebook.db", assignments),)
        # The bulk way inserted the first submissions, the ORM re-graded the others (and the twice submitted one)
        assert sum(map(len, inserted)) == (7 if bulk else 0), inserted
    orm, bulk = seen["orm"], seen["bulk"]
    assert orm[0] == [[("bob", biases)], [("bob", weights)], [("fay", biases), ("ada", weights)]], orm[0]
    page = "<p>page</p>"  # kept unless late or scored by hand, nbgrader's to render then
    assert orm[1] == [page, page, None, page, page, None, None, page, page, None, None], orm[1]
    for part, name in enumerate(("late submissions", "pages kept", "autograded files", "table rows", "nbgrader's API")):
        if isinstance(orm[part], dict):
            for key in orm[part]:
                assert bulk[part].get(key) == orm[part][key], f"{name}: {key}"
        assert bulk[part] == orm[part], name
    assert sum(len(orm[3][table]) for table in ("grade", "comment")) > 50  # the comparison saw the rows
    assert [row["manual_score"] for row in orm[3]["grade"] if row["manual_score"] is not None] == [2.5]  # kept


def test_grader_processes_do_not_build_the_rfc3987_grammar():
    """Catches the grader importing rfc3987_syntax through jsonschema (a lark grammar built at import: 1-1.8 s per
    grader process): the grader's package keeps it out, and nbformat still validates notebooks without it."""
    import subprocess
    import sys

    check = (
        "import int8lab.grading, jsonschema, nbformat, sys; "
        "nbformat.validate(nbformat.v4.new_notebook()); "
        "print(sys.modules.get('rfc3987_syntax') is None)"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]


def test_a_code_block_with_a_blank_line_shows_whole_on_the_page(tmp_path):
    """Catches the templates' second markdown pass cutting a code block at its blank line: the rest became markdown
    (its indented line a block of escaped tags, ``*args`` emphasis), as in notebook 6's cells not run in grading."""
    from int8lab.grading.sanitize import safe_markdown2html, sanitize_notebook

    code = "```python\nfor name in (*LAYER_NAMES,):\n    x = 1\n\n    print(*args, **kw)\n```"
    clean = sanitize_notebook(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"Code:\n\n{code}")]))
    page = _page(clean, tmp_path)
    assert "&lt;span" not in page and "<em>" not in page, page[page.find("Code:") :][:1500]
    assert page.count('<span class="nb">print</span>') == 1
    assert safe_markdown2html(clean.cells[0].source).strip() == clean.cells[0].source.strip()  # a second pass: same


def test_a_passed_self_check_is_remembered_for_the_same_source_and_environment_only(tmp_path, monkeypatch):
    """Catches a remembered self-check read back with other shapes than it computed (the judge would then check a
    correct student's values against wrong shapes), read for another source or environment, kept after a failure,
    or trusted when damaged: each of those runs the check again."""
    from int8lab.grading import selfcheck
    from notebook_harness import read_source

    monkeypatch.setattr(selfcheck, "_remembered_folder", lambda: tmp_path)
    source = read_source("01_weights")
    computed = selfcheck.check_reference("01_weights", source)
    ran = []
    check = selfcheck.check_reference
    monkeypatch.setattr(selfcheck, "check_reference", lambda *args: ran.append(1) or check(*args))
    assert selfcheck.checked_reference("01_weights", source) == computed and len(ran) == 1
    assert selfcheck.checked_reference("01_weights", copy.deepcopy(source)) == computed and len(ran) == 1
    (kept,) = tmp_path.glob("*.json")
    other = copy.deepcopy(source)
    other.cells[-1].source += "\n"  # another source: checked, kept beside
    assert selfcheck.checked_reference("01_weights", other) == computed and len(ran) == 2
    machine = selfcheck.machine_digest()
    monkeypatch.setattr(selfcheck, "machine_digest", lambda: machine + "another torch")
    assert selfcheck.checked_reference("01_weights", source) == computed and len(ran) == 3
    monkeypatch.setattr(selfcheck, "machine_digest", lambda: machine)
    kept.write_text('[["a cell", "not a statement", {}]]')
    assert selfcheck.checked_reference("01_weights", source) == computed and len(ran) == 4
    kept.write_text("{")
    assert selfcheck.checked_reference("01_weights", source) == computed and len(ran) == 5
    assert selfcheck.checked_reference("01_weights", source) == computed and len(ran) == 5
    monkeypatch.setenv("INT8LAB_RECHECK", "1")  # the instructor's way to check again
    assert selfcheck.checked_reference("01_weights", source) == computed and len(ran) == 6
    monkeypatch.delenv("INT8LAB_RECHECK")
    # A check that changed what its key says (it wrote the model cache) keeps nothing.
    from int8lab.data import cache_dir

    written = cache_dir() / "written-by-the-check.bin"
    monkeypatch.setattr(selfcheck, "check_reference", lambda *args: written.write_bytes(b"x") and computed)
    changed = copy.deepcopy(source)
    changed.cells[-1].source += "\n\n"
    kept_before = sorted(tmp_path.glob("*.json"))
    try:
        assert selfcheck.checked_reference("01_weights", changed) == computed
    finally:
        written.unlink()
    assert sorted(tmp_path.glob("*.json")) == kept_before
    monkeypatch.setattr(selfcheck, "check_reference", check)
    # A reference that fails its own tests: an AssertionError each time, nothing kept.
    broken = copy.deepcopy(source)
    solution = next(c for c in broken.cells if nbgrader_meta(c).get("solution") and c.cell_type == "code")
    solution.source += "\n\ndef quantized_weights(weights):\n    raise ValueError('broken')\n"
    before = sorted(tmp_path.glob("*.json"))
    for _attempt in range(2):
        with pytest.raises(AssertionError, match="judge fails the reference solution of 01_weights"):
            selfcheck.checked_reference("01_weights", broken)
    assert sorted(tmp_path.glob("*.json")) == before


def test_the_environment_digest_skips_files_being_written_and_files_gone_since_the_listing(tmp_path, monkeypatch):
    """Catches `int8lab grade` failing on FileNotFoundError when a file of the model cache goes between its listing
    and its reading (a notebook's sweep writes simulated/NAME.<pid>.npz, then renames it; seen in a fresh-clone
    CI run), and a file being written that changes the digest."""
    from int8lab.grading import selfcheck

    monkeypatch.setenv("INT8LAB_CACHE", str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "net.pt").write_bytes(b"weights")
    before = selfcheck.environment_digest()
    (tmp_path / "simulated").mkdir()
    (tmp_path / "simulated" / "0123abcd.3738.npz").write_bytes(b"half written")
    assert selfcheck.environment_digest() == before
    listing = selfcheck._cache_listing(tmp_path)
    (tmp_path / "checkpoints" / "net.pt").unlink()
    assert selfcheck._cache_digest(str(tmp_path), listing)  # listed, then gone: no error


def test_processes_checking_together_share_the_self_checks_out(tmp_path, monkeypatch):
    """Catches a judge process that waits in line behind another one checking the same first source (a Dask
    machine's workers all start with the first assignment): it checks the next sources first, then takes the
    first's outcome once the other process keeps it, without checking it again; and a source whose reference fails
    is reported by name (``judging.load``'s problems), the others loaded."""
    import fcntl
    import threading
    import time

    from int8lab.grading import course, judging, selfcheck
    from notebook_harness import read_source

    monkeypatch.setattr(selfcheck, "_remembered_folder", lambda: tmp_path)
    sources = {name: read_source(name) for name in ("01_weights", "03_biases")}
    computed = {name: selfcheck.check_reference(name, source) for name, source in sources.items()}
    checked = []
    monkeypatch.setattr(selfcheck, "check_reference", lambda name, source: checked.append(name) or computed[name])
    first = nbformat.writes(sources["01_weights"])
    key = selfcheck._key(first)
    outcomes = {}
    sharing = threading.Thread(target=lambda: outcomes.update(selfcheck.checked_references(sources)))
    with open(tmp_path / f"{key}.lock", "a") as held:  # another process is checking 01_weights
        fcntl.flock(held, fcntl.LOCK_EX)
        sharing.start()
        deadline = time.monotonic() + 30
        while checked != ["03_biases"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert checked == ["03_biases"] and sharing.is_alive()  # the next source checked, the first awaited
        selfcheck._keep_shapes(tmp_path / f"{key}.json", computed["01_weights"], key, first)
    sharing.join(30)
    assert checked == ["03_biases"] and outcomes == computed and list(outcomes) == list(sources)

    broken = copy.deepcopy(sources["03_biases"])
    broken.cells[-1].source += "\n"  # another source: not remembered
    monkeypatch.setattr(
        selfcheck, "check_reference", lambda name, source: (_ for _ in ()).throw(AssertionError(f"{name} fails"))
    )
    assignments = {
        "01_weights": course.Assignment("01_weights", "01_weights.ipynb", sources["01_weights"]),
        "03_biases": course.Assignment("03_biases", "03_biases.ipynb", broken),
    }
    monkeypatch.setattr(judging, "_assignments", {})
    assert judging.load(assignments) == {"03_biases": "on this worker, 03_biases fails"}
    assert "01_weights" in judging._assignments and "03_biases" not in judging._assignments


def test_a_releases_page_fragments_kept_by_one_process_serve_another_and_change_no_page(tmp_path, monkeypatch):
    """Catches kept page fragments that change a page (a page rendered with the fragments another process kept
    differs from one rendered without any), fragments that serve nothing (the release's markdown sanitized again
    on the first page), a student's own code kept, and a damaged file trusted."""
    from int8lab.grading import course, fragments, selfcheck
    from int8lab.grading.model import Job
    from int8lab.grading.pages import render_page
    from int8lab.grading.rebuild import graded_notebook
    from int8lab.grading.sanitize import sanitize_notebook

    monkeypatch.setattr(selfcheck, "_remembered_folder", lambda: tmp_path)
    name = "04_integer_only"
    assignment = course.load_assignments(SOURCES[name].parents[1], [name])[name]
    assignment.release = released(name)
    student = copy.deepcopy(assignment.source)  # a student who wrote the reference's code
    student.metadata["language_info"] = dict(fragments.KERNEL_LANGUAGE)

    def page() -> str:
        graded = sanitize_notebook(graded_notebook(copy.deepcopy(student), assignment.judge.tests, {}))
        return render_page(graded, Job("ann", name, None), assignment, {})

    fragments.forget()
    with fragments.recording() as cold:
        alone = page()
    fragments.forget()
    fragments.share({name: assignment})  # the first process: renders the release, keeps what that computed
    (kept,) = tmp_path.glob("*.fragments.json")
    fragments.forget()
    rendered = fragments.render_release
    monkeypatch.setattr(fragments, "render_release", lambda *args: pytest.fail("rendered, not read"))
    assert fragments.share({name: assignment}) == []  # another process: reads them
    monkeypatch.setattr(fragments, "render_release", rendered)
    with fragments.recording() as warm:
        shared = page()
    assert shared == alone
    answers = [c for c in student.cells if c.cell_type == "markdown" and nbgrader_meta(c).get("solution")]
    assert len([entry for entry in warm if entry[0] == "markdown"]) <= 2 * len(answers) < len(cold)
    assert len(warm) < len(cold) / 2, (len(warm), len(cold))
    code = next(c.source for c in student.cells if c.cell_type == "code" and nbgrader_meta(c).get("solution"))
    written = max(code.splitlines(), key=len)
    assert written.strip() and json.dumps(written)[1:-1] not in kept.read_text()
    kept.write_text('[["markdown", "a text", 3]]')  # damaged: not adopted, rendered and kept again
    fragments.forget()
    fragments.share({name: assignment})
    assert page() == alone and ["markdown", "a text", 3] not in json.loads(kept.read_text())
    fragments.forget()


def test_a_remembered_self_check_is_kept_where_no_kernel_can_reach_it(tmp_path, monkeypatch):
    """Catches remembered self-checks kept in the model cache, which every kernel reads: a kernel could hold their
    lock (every judge on the machine waiting) and, where nothing keeps it from writing, plant shapes that every
    later grading would take; so none is kept on a machine without Landlock."""
    from int8lab.grading import landlock, run, selfcheck

    monkeypatch.setenv("INT8LAB_CACHE", str(tmp_path / "cache"))
    folder = selfcheck._remembered_folder()
    if landlock.landlock_abi() == 0:
        assert folder is None
    else:
        assert folder is not None and folder.is_dir()
        for readable in run._readable_paths():
            assert not folder.resolve().is_relative_to(Path(readable).resolve()), readable
    monkeypatch.setattr(landlock, "landlock_abi", lambda: 0)
    assert selfcheck._remembered_folder() is None


@pytest.mark.parametrize("assignment", ["04_integer_only", "06_zero_points"])
def test_the_judges_memo_changes_no_verdict(assignment, monkeypatch):
    """Notebooks 4 and 6 recompute references (the engine's network, profiled activations) for each
    submission; remembered, they give the same verdicts, right answers and wrong ones alike."""
    from int8lab import memo
    from int8lab.grading.selfcheck import probe_in_process

    source = nbformat.read(SOURCES[assignment], as_version=4)
    judge = Judge.from_source(source)
    right = {(cell, statement): record for cell, statement, record in probe_in_process(source).entries}
    wrong = dict(right)
    for key, record in right.items():  # every recorded tensor a little off: each test that reads one fails
        values = record.get("values", {})
        wrong[key] = {"values": {name: _nudged(value) for name, value in values.items()}} if values else record

    def verdicts(records):
        return {grade_id: (v.score, v.message) for grade_id, v in judge.judge(records).items()}

    memo.forget()
    remembered = [verdicts(right), verdicts(wrong), verdicts(right)]
    assert memo.statistics["remembered"] > 0
    monkeypatch.setattr(memo, "remembering", contextlib.nullcontext)
    memo.forget()
    assert [verdicts(right), verdicts(wrong), verdicts(right)] == remembered
    assert memo.statistics["remembered"] == memo.statistics["computed"] == 0
    assert any(score == 0 for score, _ in remembered[1].values()) and remembered[0] == remembered[2]


def _nudged(encoded):
    value = records.decode(encoded)
    if isinstance(value, torch.Tensor) and value.numel() and value.dtype != torch.bool:
        return records.encode(value + (0.5 if value.is_floating_point() else 1))
    return encoded


def test_kept_files_unused_for_a_month_and_orphaned_parts_are_pruned(tmp_path, monkeypatch):
    """Each change of code, packages or model cache starts new keys: without pruning, old files pile up. A file
    read recently stays, however old its writing."""
    from int8lab.grading import selfcheck
    from notebook_harness import read_source

    monkeypatch.setattr(selfcheck, "_remembered_folder", lambda: tmp_path)
    monkeypatch.setattr(selfcheck, "_pruned_folders", set())
    source = read_source("01_weights")
    selfcheck.check_reference("01_weights", source)  # what it loads into the model cache, loaded before its key
    selfcheck.checked_reference("01_weights", source)  # kept, and read back below
    (read,) = tmp_path.glob("*.json")
    month = selfcheck.UNUSED_DAYS * 86400
    old = time.time() - month - 60
    stale = {tmp_path / "0ld.json", tmp_path / "0ld.fragments.json", tmp_path / "0ld.lock"}
    for path in stale:
        path.write_text("[]")
        os.utime(path, (old, old))
    orphan = tmp_path / "0ld.json.123.part"
    orphan.write_text("half")
    os.utime(orphan, (time.time() - 2 * selfcheck.ORPHAN_SECONDS,) * 2)
    fresh_part = tmp_path / "new.json.456.part"  # being written now
    fresh_part.write_text("half")
    held = tmp_path / "held.lock"  # another process checks that key now, however old its lock file
    held.write_text("")
    os.utime(held, (old, old))
    os.utime(read, (old, old))
    assert selfcheck.checked_reference("01_weights", source)  # a read: marks it used
    monkeypatch.setattr(selfcheck, "_pruned_folders", set())
    other = copy.deepcopy(source)
    other.cells[-1].source += "\n"
    with open(held, "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        selfcheck.checked_reference("01_weights", other)  # a keep: prunes first
    left = set(tmp_path.iterdir())
    assert not left & (stale | {orphan})
    assert {read, fresh_part, held} <= left and len(list(tmp_path.glob("*.json"))) == 2
