"""A wheel built from the repository grades a class from a folder outside the checkout."""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from sample_submissions import submission, write_submission

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_grades_a_class_outside_the_checkout(tmp_path):
    wheels, checkout = tmp_path / "wheels", tmp_path / "checkout"
    # A clean copy: a build/ folder left in the repository would otherwise fill the wheel.
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "graded"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    subprocess.run(
        [*build, str(checkout)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("int8lab-*.whl")
    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=False)
    site = next((fresh / "lib").glob("python3*/site-packages"))
    # The dependencies come from this environment's site-packages (a path, not its .pth files:
    # the editable install of the checkout stays out); int8lab itself only from the wheel.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(fresh / "bin" / "python"),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    course = tmp_path / "course"
    shutil.copytree(ROOT / "solutions", course / "solutions")
    for student, solved in (("ada", True), ("bob", False), ("cy", True)):
        write_submission(course / "submitted", student, "01_weights", submission("01_weights", solved=solved))
    located = subprocess.run(
        [str(fresh / "bin" / "python"), "-c", "import int8lab.grading.pipeline as p; print(p.__file__)"],
        capture_output=True,
        text=True,
        cwd=course,
    )
    assert located.returncode == 0 and str(fresh) in located.stdout, located.stderr
    # nbgrader runs the `alembic` script of its dependencies, which the borrowed site-packages lack.
    path = os.pathsep.join([str(fresh / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]])
    result = subprocess.run(
        [str(fresh / "bin" / "int8lab"), "grade", "submitted", "--out", "graded", "--timeout", "30"],
        cwd=course,
        # nbconvert's templates (share/jupyter) are installed beside the borrowed packages, under this prefix: the
        # feedback pages failed without them, which the exit status now says (it was 0 whatever the feedback did).
        env={**os.environ, "PATH": path, "JUPYTER_PATH": str(Path(sys.prefix) / "share" / "jupyter")},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    grades = (course / "graded" / "int8lab-grades.csv").read_text().splitlines()
    assert grades[1:] == ["ada,01_weights,10,10,ok", "bob,01_weights,0,10,ok", "cy,01_weights,10,10,ok"]


def _declared_minimum() -> str:
    import tomllib

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    return next(part.strip().removeprefix(">=") for part in requires.split(",") if part.strip().startswith(">="))


def test_requires_python_is_the_true_minimum_of_the_lock():
    """Every locked package installs on the lowest Python that pyproject.toml and the README name, and one of
    them needs exactly that one: a lower bound would let pip fail on an older 3.11 (Debian 12's 3.11.2)."""
    import importlib.metadata

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    minimum = Version(_declared_minimum())
    previous = Version(f"{minimum.major}.{minimum.minor}.{minimum.micro - 1}") if minimum.micro else None
    locked = [line.split("==")[0] for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines()]
    needs = {}
    for name in (n.strip() for n in locked if n.strip() and not n.startswith("#")):
        requires = importlib.metadata.metadata(name).get("Requires-Python")
        if requires:
            needs[name] = SpecifierSet(requires)
    assert all(minimum in spec for spec in needs.values()), {n: str(s) for n, s in needs.items() if minimum not in s}
    assert previous is None or any(previous not in spec for spec in needs.values()), "the minimum could be lower"
    readme = (ROOT / "README.md").read_text()
    assert f"Python {minimum}" in readme and "Python 3.11 or" not in readme
