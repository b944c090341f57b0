import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Train into a cache of the test session's own unless the caller chose one (CI sets a fresh one)."""
    if "INT8LAB_CACHE" not in os.environ:
        os.environ["INT8LAB_CACHE"] = str(tmp_path_factory.mktemp("int8lab-cache"))
    yield


@pytest.fixture(scope="session")
def digits_loaders():
    from int8lab import load_data

    return load_data("digits")


@pytest.fixture(scope="session")
def float_net():
    from int8lab import trained_model

    return trained_model("digits", progress=False)


def pytest_configure(config):
    import sys
    from pathlib import Path

    # tests/ holds helpers (notebook_harness) that the test modules import by name.
    sys.path.insert(0, str(Path(__file__).parent))
