"""The skip policy CI runs under (conftest.py): only allowed skip reasons pass, and a required backend's broken
import is an error, not a skip."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
HERE = Path(__file__).parent

SKIPPING = """
import pytest
from backends import import_backend

def test_runs():
    assert True

@pytest.mark.skip(reason="needs CUDA")
def test_gpu():
    pass

def test_browser():
    pytest.skip("chromium missing")
"""


@pytest.fixture
def suite(pytester):
    for name in ("conftest.py", "backends.py"):
        shutil.copy(HERE / name, pytester.path / name)
    return pytester


def test_a_skip_for_a_reason_that_is_not_allowed_fails_the_run_and_is_listed(suite):
    suite.makepyfile(test_skips=SKIPPING)
    result = suite.runpytest_subprocess("-rs", "--allowed-skips", "CUDA")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*skips not allowed here*", "*test_browser: chromium missing"])
    assert "test_gpu: needs CUDA" not in result.stdout.str()


def test_allowed_skips_pass_and_without_the_option_every_skip_is_allowed(suite):
    suite.makepyfile(test_skips=SKIPPING)
    assert suite.runpytest_subprocess("--allowed-skips", "CUDA|chromium").ret == pytest.ExitCode.OK
    assert suite.runpytest_subprocess().ret == pytest.ExitCode.OK


def test_a_required_backend_that_does_not_import_is_an_error_and_an_optional_one_skips(suite):
    suite.makepyfile(test_backend='from backends import import_backend\nimport_backend("no_such_backend_xyz")\n'
                                  "def test_uses_it():\n    pass\n",
                     test_other="def test_runs():\n    pass\n")
    suite.makeconftest((HERE / "conftest.py").read_text().replace('("vllm", "deepspeed")',
                                                                    '("vllm", "deepspeed", "no_such_backend_xyz")'))
    optional = suite.runpytest_subprocess()
    assert optional.ret == pytest.ExitCode.OK
    optional.assert_outcomes(passed=1, skipped=1)
    required = suite.runpytest_subprocess("--require-backend", "no_such_backend_xyz")
    assert required.ret == pytest.ExitCode.INTERRUPTED  # a collection error, with its traceback
    required.stdout.fnmatch_lines(["*ModuleNotFoundError: No module named 'no_such_backend_xyz'*"])


def test_a_required_backend_allows_no_skip_at_all(suite):
    suite.makepyfile(test_skips=SKIPPING)
    result = suite.runpytest_subprocess("--require-backend", "vllm", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*test_gpu: needs CUDA", "*test_browser: chromium missing"])
