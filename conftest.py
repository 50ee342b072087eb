"""pytest: import callhome from this checkout, and keep test files out of it."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, REPO)


@pytest.fixture(autouse=True, scope="session")
def _work_in_temporary_directory(tmp_path_factory):
    """trial's mktemp() makes relative paths: run the tests in a scratch directory."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)
