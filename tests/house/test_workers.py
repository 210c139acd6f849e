"""The suite's workers (pytest-xdist): what shares a costly fixture runs on one worker, and
what the tests start runs one torch thread (see tests/conftest.py)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def shared() -> object:
    return object()


def test_a_test_sharing_a_module_fixture_runs_in_its_modules_group(shared, request):
    """xdist names a test's group at the end of its node id; pytest 9.2 with xdist 3.8 lost
    it without a word, and each worker made every shared fixture again."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not request.config.getvalue("loadgroup"):
        pytest.skip("the suite runs without workers (-n 0)")
    assert request.node.nodeid.endswith("@tests/house/test_workers.py"), request.node.nodeid


@pytest.mark.integration
def test_processes_the_tests_start_run_one_torch_thread():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "1", out.stderr
