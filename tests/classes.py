"""The classes that several test modules read, each graded once per test session, in the background.

Grading a class is the suite's longest work. ``conftest.py`` starts the gradings that the selected tests need as
soon as the tests are collected, one after another in a thread of their own (``Gradings``), and runs the tests
that read them last: meanwhile, the tests that need no class run beside the grading, on the other core.

- the hostile class (``build_hostile_class``): about fifty submissions of every assignment, honest, broken and
  hostile, graded with ``--skip-demos``; read by test_grading and test_dask;
- the demo class (``build_demo_class``): the honest students of assignments 01 to 03, one student whose pages
  carry script (mallory) and one corrupt file, handed over as a .zip and graded as by default, plot cells
  run; read by test_grading (feedback pages, the honest students' rows against the hostile class's) and by
  test_browser (formgrader, feedback pages in Chromium). Nobody submitted 04 and 05 there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from hostile import HOSTILE, SCRIPT_OUTPUTS, script_in_derivations
from sample_submissions import graded_cells, submission, write_submission

ROOT = Path(__file__).resolve().parents[1]
# Wall-clock limits far above an honest run even on a machine three times busier (an honest cell takes a second
# or two here, a whole notebook about twenty) and far below the hostile ones: the loop student's cell never ends
# and is stopped at 30 s. Only that student's status depends on a limit.
TIMEOUTS = ["--timeout", "30", "--notebook-timeout", "300"]
GRADE = [sys.executable, "-m", "int8lab", "grade", "--workers", "2", *TIMEOUTS]
GRADE += ["--solutions", str(ROOT / "solutions"), "--disk", "64"]
#: How long a whole class may take before the test reports the grader's log: a hang shows here.
CLASS_DEADLINE = 1800
#: Every warning shown (ResourceWarning included), so that a test sees any that a run emits.
WARNINGS_SHOWN = {"PYTHONWARNINGS": "default"}

HONEST = ("perfect", "stubs", "mis_multiplied", "mis_naive", "mis_bias_int8", "floor", "zeros")

WRONG_MULTIPLIED = """
def quantized_weights(weights):
    scale = weights.abs().max().item() / 127
    return torch.clamp(torch.round(weights * scale), -128, 127), scale
"""
WRONG_NAIVE = """
def naive_scale(activations, s_w, s_initial_input, ss):
    return float(np.abs(activations).max()) / 127

NetQuantized.quantize_activations = staticmethod(naive_scale)
"""
WRONG_BIAS_INT8 = """
def int8_bias(bias, s_w, s_initial_input, ss):
    scale = s_w * s_initial_input * (float(np.prod([w * o for w, o in ss])) if ss else 1.0)
    return torch.clamp(torch.round(bias / scale), -128, 127)

NetQuantizedWithBias.quantized_bias = staticmethod(int8_bias)
"""
FLOOR = """
def quantized_weights(weights):
    largest = weights.abs().max().item()
    scale = largest / 127 if largest > 0 else 1.0
    return torch.clamp(torch.floor(weights / scale), -128, 127), scale
"""


ZEROS = """
def quantized_weights(weights):
    return torch.zeros_like(weights), 0.0
"""


def _drop_tests(nb):
    nb.cells = [c for c in nb.cells if c not in graded_cells(nb)]


def _edit_tests(nb):
    for cell in graded_cells(nb):
        cell.source = "assert True"


def _tests_to_markdown(nb):
    for cell in graded_cells(nb):
        cell.cell_type = "markdown"
        cell.pop("outputs", None)
        cell.pop("execution_count", None)


def _snoop(out: Path) -> str:
    targets = [
        out / "gradebook.db",
        out / "source" / "01_weights" / "weights.ipynb",
        ROOT / "solutions" / "01_weights" / "weights.ipynb",
        out / "submitted" / "perfect" / "01_weights" / "weights.ipynb",
    ]
    return (
        "import socket\n"
        f"for path in {[str(t) for t in targets]!r}:\n"
        "    try:\n"
        "        open(path, 'rb').read(1)\n"
        "        print('SNOOP-READ', path)\n"
        "    except OSError as error:\n"
        "        print('SNOOP-BLOCKED', path, error.errno)\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 22), timeout=1)\n"
        "    print('SNOOP-NETWORK')\n"
        "except OSError:\n"
        "    print('SNOOP-NO-NETWORK')\n"
    )


def _vandal(out: Path, submitted: Path) -> str:
    targets = [
        out / "submitted" / "perfect" / "01_weights" / "weights.ipynb",
        out / ".work" / "jobs" / "perfect--01_weights" / "autograded" / "perfect" / "01_weights" / "weights.ipynb",
        out / "gradebook.db",
        out / "int8lab-grades.csv",
        submitted / "perfect" / "01_weights" / "weights.ipynb",
        Path("../../perfect/01_weights/weights.ipynb"),
    ]
    return (
        f"for path in {[str(t) for t in targets]!r}:\n"
        "    try:\n"
        "        open(path, 'w').write('{}')\n"
        "        print('VANDAL-WROTE', path)\n"
        "    except OSError as error:\n"
        "        print('VANDAL-BLOCKED', path, error.errno)\n"
    )


def honest_cases() -> dict[tuple[str, str], object]:
    """The HONEST students' submissions of 01 to 03, written the same way into both classes."""
    return {
        ("perfect", "01_weights"): submission("01_weights"),
        ("perfect", "02_activations"): submission("02_activations"),
        ("perfect", "03_biases"): submission("03_biases"),
        ("stubs", "01_weights"): submission("01_weights", solved=False),
        ("stubs", "02_activations"): submission("02_activations", solved=False),
        ("stubs", "03_biases"): submission("03_biases", solved=False),
        ("mis_multiplied", "01_weights"): submission("01_weights", append=WRONG_MULTIPLIED),
        ("mis_naive", "02_activations"): submission("02_activations", append=WRONG_NAIVE),
        ("mis_bias_int8", "03_biases"): submission("03_biases", append=WRONG_BIAS_INT8),
        ("floor", "01_weights"): submission("01_weights", append=FLOOR),
        ("zeros", "01_weights"): submission("01_weights", append=ZEROS),
    }


def build_hostile_class(root: Path, out: Path) -> Path:
    submitted = root / "submitted"
    cases = {
        **honest_cases(),
        ("perfect", "04_integer_only"): submission("04_integer_only"),
        ("perfect", "05_ranges_and_bits"): submission("05_ranges_and_bits"),
        ("perfect", "06_zero_points"): submission("06_zero_points"),
        ("stubs", "06_zero_points"): submission("06_zero_points", solved=False),
        ("perfect", "07_quantization_aware_training"): submission("07_quantization_aware_training"),
        ("stubs", "07_quantization_aware_training"): submission("07_quantization_aware_training", solved=False),
        ("loop", "01_weights"): submission("01_weights", append="while True:\n    pass"),
        ("hog", "01_weights"): submission("01_weights", append="import numpy\nhog = numpy.ones(50 * 2**30 // 8)"),
        ("exits", "01_weights"): submission("01_weights", append="import os\nos._exit(1)"),
        ("killed", "01_weights"): submission("01_weights", append="import ctypes\nctypes.string_at(0)"),
        ("corrupt", "01_weights"): b'{"cells": [ {"cell_type": "code", ',
        ("notjupyter", "01_weights"): b'{"hello": "world"}',
        ("absent", "01_weights"): None,
        ("deleted", "01_weights"): submission("01_weights", append=WRONG_MULTIPLIED, edit=_drop_tests),
        ("edited", "01_weights"): submission("01_weights", append=WRONG_MULTIPLIED, edit=_edit_tests),
        ("markdown", "01_weights"): submission("01_weights", append=WRONG_MULTIPLIED, edit=_tests_to_markdown),
        ("snoop", "01_weights"): submission("01_weights", append=_snoop(out)),
        ("vandal", "01_weights"): submission("01_weights", append=_vandal(out, submitted)),
    }
    for name, (baseline, assignment, trick) in HOSTILE.items():
        solved, append = {"stubs": (False, ""), "floor": (True, FLOOR), "zeros": (True, ZEROS)}[baseline]
        cases[(name, assignment)] = submission(assignment, solved=solved, append=append + trick)
    cases.update(
        {
            ("-dash[id]", "01_weights"): submission("01_weights"),
            ("=1+2", "01_weights"): submission("01_weights"),
            ("filler", "01_weights"): submission("01_weights", append=FILLER),
            ("kernel_links", "01_weights"): submission("01_weights", append=_kernel_links(out)),
            ("html", "02_activations"): submission("02_activations", append=HTML_OUTPUTS, edit=_script_answer),
        }
    )
    for (student, assignment), content in cases.items():
        write_submission(submitted, student, assignment, content)
    for student in ("linked_nb", "fifo"):
        (submitted / student / "01_weights").mkdir(parents=True)
    (submitted / "linked_nb" / "01_weights" / "weights.ipynb").symlink_to("/etc/passwd")
    os.mkfifo(submitted / "fifo" / "01_weights" / "weights.ipynb")
    (submitted / "linked_folder").symlink_to(submitted / "perfect")
    return submitted


FILLER = """
for index in range(3):
    with open(f"filler{index}.bin", "wb") as handle:
        handle.write(b"x" * (30 << 20))
"""
HTML_OUTPUTS = """
from IPython.display import HTML, Javascript, display
display(HTML('<img src="x" onerror="alert(1)"><script>alert(2)</script>'))
display(Javascript("alert(3)"))
"""


def _script_answer(nb):
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = 'My derivation <script>alert(4)</script> <a href="javascript:alert(5)">see</a>'


def _kernel_links(out: Path) -> str:
    return KERNEL_LINKS.format(gradebook=str(out / "gradebook.db"))


KERNEL_LINKS = """
import os
for name, target in [("weights.ipynb", {gradebook!r}), ("records.jsonl", "/etc/passwd")]:
    try:
        os.symlink(target, name)
    except OSError:
        pass
os.mkfifo("weights.html")
open("big.bin", "wb").write(b"x" * (20 << 20))
"""


#: The demo class's submissions: the honest students' work on 01 to 03 (as in the hostile class, byte for byte).
DEMO_ASSIGNMENTS = ("01_weights", "02_activations", "03_biases")


def build_demo_class(root: Path) -> Path:
    """The demo class, written to ``root/submitted`` and packed as ``root/submitted.zip`` (returned)."""
    submitted = root / "submitted"
    cases = {
        **honest_cases(),
        ("mallory", "03_biases"): submission("03_biases", append=SCRIPT_OUTPUTS, edit=script_in_derivations),
        ("corrupt", "01_weights"): b'{"cells": [ {"cell_type": "code", ',
    }
    for (student, assignment), content in cases.items():
        write_submission(submitted, student, assignment, content)
    archive = root / "submitted.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(submitted.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(root).as_posix())
    return archive


@dataclass
class Finished:
    """What a grading run left: its exit status and output (as subprocess.run would give them)."""

    returncode: int
    stdout: str
    stderr: str


@dataclass
class GradedClass:
    """A class and the OUT folder of its grading."""

    name: str
    base: Path
    submitted: Path
    out: Path
    command: list[str]
    originals: dict[Path, bytes] = field(default_factory=dict)
    #: For a command that grades nothing (classes.COMMANDS): its environment, folder, and one output stream.
    env: dict[str, str] = field(default_factory=lambda: dict(WARNINGS_SHOWN))
    cwd: Path | None = None
    merge_output: bool = False
    run: Finished | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __getitem__(self, key: str):  # the tests read a class as a dict: graded["out"]
        return getattr(self, key)


def hostile_class(base: Path) -> GradedClass:
    out = base / "out"
    submitted = build_hostile_class(base, out)
    originals = {p: p.read_bytes() for p in submitted.rglob("*.ipynb") if p.is_file() and not p.is_symlink()}
    originals.update({p: p.read_bytes() for p in (ROOT / "solutions").rglob("*.ipynb")})
    command = [*GRADE, "--skip-demos", str(submitted), "--out", str(out)]
    return GradedClass("hostile", base, submitted, out, command, originals)


def demo_class(base: Path) -> GradedClass:
    archive = build_demo_class(base)
    command = [*GRADE, str(archive), "--out", str(base / "out")]
    return GradedClass("demo", base, base / "submitted", base / "out", command)


def _validated(base: Path, invert: bool) -> GradedClass:
    """nbgrader validate on every solution notebook (or, inverted, on every release) in one process."""
    folder = "notebooks" if invert else "solutions"
    paths = [str(path) for path in sorted((ROOT / folder).glob("*/*.ipynb"))]
    command = [sys.executable, "-m", "nbgrader", "validate", *(["--invert"] if invert else []), *paths]
    return GradedClass(folder, base, base, base, command, env={}, cwd=ROOT / "autograder", merge_output=True)


def demo_run(base: Path) -> GradedClass:
    """int8lab demo on the digits, as `make demo` runs it (tests/test_project.py reads its table)."""
    return GradedClass("demo run", base, base, base, _demo_command(base), env={})


def _demo_command(base: Path) -> list[str]:
    """``int8lab demo`` writing its plots under BASE/results and its table to BASE/table.json."""
    return [sys.executable, "-m", "int8lab", "demo", "--out", str(base / "results"), "--json", str(base / "table.json")]


def cifar_run(base: Path) -> GradedClass:
    """int8lab demo with INT8LAB_DATASET=cifar10 on a small archive written here, in a model cache of its own."""
    from tiny_cifar import write_tiny_cifar

    write_tiny_cifar(base / "cache" / "cifar10", per_batch=300, learnable=True)
    env = {"INT8LAB_CACHE": str(base / "cache"), "INT8LAB_DATASET": "cifar10"}
    return GradedClass("cifar run", base, base, base, _demo_command(base), env=env)


#: What runs in the background, in this order, by the name of the session fixture that returns each: the classes
#: first (many tests read them), then the long commands whose tests only read what they printed and wrote.
BUILDERS = {
    "hostile_class": hostile_class,
    "demo_class": demo_class,
    "solutions_validated": lambda base: _validated(base, invert=False),
    "releases_inverted": lambda base: _validated(base, invert=True),
    "demo_run": demo_run,
    "cifar_run": cifar_run,
}


class Gradings:
    """Grades classes one after another in a thread of its own; ``result(name)`` waits for one.

    One at a time: each grading runs two workers, so two at once would only share the same cores.
    """

    def __init__(self, names: list[str]):
        self.base = Path(tempfile.mkdtemp(prefix="int8lab-classes-"))
        self.classes = {}
        for name in names:
            (self.base / name).mkdir(parents=True)
            self.classes[name] = BUILDERS[name](self.base / name)
        self._process: subprocess.Popen | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._grade_all, name="int8lab-gradings", daemon=True)
        self._thread.start()

    def _grade_all(self) -> None:
        for graded in self.classes.values():
            if self._stopped:
                break
            graded.run = self._grade(graded)
            graded.done.set()
        for graded in self.classes.values():
            graded.done.set()

    def _grade(self, graded: GradedClass) -> Finished:
        stdout, stderr = graded.base / "run.stdout", graded.base / "run.stderr"
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            env = {**os.environ, **graded.env}
            self._process = subprocess.Popen(
                graded.command,
                stdout=out,
                stderr=subprocess.STDOUT if graded.merge_output else err,
                env=env,
                cwd=graded.cwd,
                start_new_session=True,
            )
            try:
                returncode = self._process.wait(timeout=CLASS_DEADLINE)
            except subprocess.TimeoutExpired:
                self._kill()
                returncode = -1
                err.write(f"\n[the test suite stopped this grading after {CLASS_DEADLINE} s]\n".encode())
        return Finished(returncode, stdout.read_text(errors="replace"), stderr.read_text(errors="replace"))

    def result(self, name: str) -> GradedClass:
        graded = self.classes[name]
        started = time.monotonic()
        while not graded.done.wait(timeout=5):
            if not self._thread.is_alive():
                break
        if graded.run is None:
            raise RuntimeError(f"the {name} was not graded (waited {time.monotonic() - started:.0f} s)")
        return graded

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def stop(self) -> None:
        """Stop the grading under way and the ones not started (the session ends)."""
        self._stopped = True
        self._kill()
