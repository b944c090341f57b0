import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# tests/ holds helpers (notebook_harness, classes) that the test modules import by name.
sys.path.insert(0, str(Path(__file__).parent))

#: The graded classes of classes.py, by the name of the session fixture that returns each.
CLASS_FIXTURES = ("hostile_class", "demo_class")


def pytest_configure(config):
    """Train into a cache of the test session's own unless the caller chose one (CI sets a fresh one).

    Set here, before collection ends, because the background gradings (classes.py) start then and read it.
    """
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
    needed = [name for name in CLASS_FIXTURES if any(name in item.fixturenames for item in session.items)]
    if needed and not session.config.option.collectonly:
        from classes import Gradings

        session.config._int8lab_gradings = Gradings(needed)


def pytest_unconfigure(config):
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


@pytest.fixture(scope="session")
def hostile_class(request):
    """The hostile class of classes.py, graded (in the background since collection ended)."""
    return _graded(request, "hostile_class")


@pytest.fixture(scope="session")
def demo_class(request):
    """The demo class of classes.py, graded after the hostile class, plot cells run."""
    return _graded(request, "demo_class")


@pytest.fixture(scope="session")
def digits_loaders():
    from int8lab import load_data

    return load_data("digits")


@pytest.fixture(scope="session")
def float_net():
    from int8lab import trained_model

    return trained_model("digits", progress=False)
