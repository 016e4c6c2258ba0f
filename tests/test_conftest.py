"""The ``--run-slow`` option of tests/conftest.py: slow tests are skipped unless it is given."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]


def test_run_slow_option(pytester):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    slow: long checks\n")
    pytester.makepyfile("import pytest\n\n@pytest.mark.slow\ndef test_slow():\n    pass\n\ndef test_fast():\n    pass\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=1)
    pytester.runpytest("-p", "no:cacheprovider", "--run-slow").assert_outcomes(passed=2)
