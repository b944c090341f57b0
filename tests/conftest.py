import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# tests/ holds helpers (notebook_harness, classes) that the test modules import by name.
sys.path.insert(0, str(Path(__file__).parent))

#: What classes.py runs in the background (graded classes, then long commands), by the name of the session fixture
#: that returns each, in the order it runs them.
CLASS_FIXTURES = ("hostile_class", "demo_class", "solutions_validated", "releases_inverted", "demo_run", "cifar_run")


def pytest_configure(config):
    """Train into a cache of the test session's own unless the caller chose one (CI sets a fresh one).

    Set here, before collection ends, because the background gradings (classes.py) start then and read it.
    """
    # One torch thread per process: the suite runs gradings and a second process beside its own tests, and
    # OpenMP threads that spin-wait on a busy 2-core machine made an in-process notebook run 3 to 10 times slower.
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    if "INT8LAB_CACHE" not in os.environ:
        config._int8lab_cache = tempfile.mkdtemp(prefix="int8lab-cache-")
        os.environ["INT8LAB_CACHE"] = config._int8lab_cache


def _class_rank(item) -> int:
    """0 for a test that reads no graded class, then by the order in which classes.Gradings grades them."""
    used = [index for index, name in enumerate(CLASS_FIXTURES) if name in getattr(item, "fixturenames", ())]
    return 1 + max(used) if used else 0


def pytest_collection_modifyitems(session, config, items):
    # The tests that read a graded class run last (stable: each group keeps its order), so that the others run
    # while the classes are graded.
    items.sort(key=_class_rank)


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    needed = [name for name in CLASS_FIXTURES if any(name in item.fixturenames for item in session.items)]
    if needed:
        from classes import Gradings

        session.config._int8lab_gradings = Gradings(needed)
    # The notebook runs of the selected tests (test_misconceptions, test_alternatives), half of them in a second
    # process: each module that has them says which run an item makes (its planned_run). To debug one process
    # alone, set INT8LAB_TESTS_ONE_PROCESS=1.
    runs = [run for item in session.items if (run := _planned_run(item)) is not None]
    if len(runs) > 1 and not os.environ.get("INT8LAB_TESTS_ONE_PROCESS"):
        import notebook_harness

        notebook_harness.plan(runs)


def _planned_run(item):
    planned = getattr(getattr(item, "module", None), "planned_run", None)
    return planned(item) if planned else None


def pytest_unconfigure(config):
    if "notebook_harness" in sys.modules:
        sys.modules["notebook_harness"].stop_planned()
    gradings = getattr(config, "_int8lab_gradings", None)
    if gradings is not None:
        gradings.stop()
        shutil.rmtree(gradings.base, ignore_errors=True)
    if getattr(config, "_int8lab_cache", None):
        shutil.rmtree(config._int8lab_cache, ignore_errors=True)


def _graded(request, name: str):
    gradings = getattr(request.config, "_int8lab_gradings", None)
    if gradings is None or name not in gradings.classes:
        pytest.fail(f"{name} was not started at collection (conftest.pytest_collection_finish)", pytrace=False)
    return gradings.result(name)


def _background_fixture(name: str):
    """The session fixture ``name``: what classes.BUILDERS[name] describes, waited for (it runs since collection)."""

    @pytest.fixture(scope="session", name=name)
    def fixture(request):
        return _graded(request, name)

    return fixture


for _name in CLASS_FIXTURES:
    globals()[_name] = _background_fixture(_name)


@pytest.fixture(scope="session")
def digits_loaders():
    from int8lab import load_data

    return load_data("digits")


@pytest.fixture(scope="session")
def float_net():
    from int8lab import trained_model

    return trained_model("digits", progress=False)
