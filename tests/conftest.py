"""Shared test helpers, and the skip policy CI runs under.

`--allowed-skips REGEX`: a test (or module) skipped for a reason that does not match REGEX fails the run, and
the offending skips are listed. CI allows only "no CUDA" skips, so a missing browser, notebook engine or backend
cannot turn a test run green by skipping. `--require-backend NAME` (vllm, deepspeed) makes that backend's import
in `backends.import_backend` a plain import, and no skip at all is allowed in such a run.
"""

from __future__ import annotations

import os
import re

import pytest
from backends import REQUIRED_ENV


def pytest_addoption(parser):
    group = parser.getgroup("eureka_kit")
    group.addoption("--allowed-skips", metavar="REGEX", default=None,
                    help="fail the run when a test is skipped for a reason that does not match REGEX")
    group.addoption("--require-backend", action="append", default=[], choices=("vllm", "deepspeed"),
                    help="this backend must import (an import failure is an error) and no test may skip")


def pytest_configure(config):
    required = config.getoption("require_backend")
    if required:
        os.environ[REQUIRED_ENV] = ",".join(required)
    pattern = "(?!)" if required else config.getoption("allowed_skips")  # "(?!)" matches no reason
    if pattern is not None:
        config.pluginmanager.register(SkipPolicy(re.compile(pattern)), "eureka_skip_policy")


class SkipPolicy:
    """Records every skip (module-level ones too) and fails the session on one whose reason is not allowed."""

    def __init__(self, allowed: re.Pattern):
        self.allowed, self.bad = allowed, []

    def _record(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            longrepr = report.longrepr
            reason = (longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)).removeprefix("Skipped: ")
            if not self.allowed.search(reason):
                self.bad.append((report.nodeid, reason))

    def pytest_runtest_logreport(self, report):
        self._record(report)

    def pytest_collectreport(self, report):
        self._record(report)

    def pytest_sessionfinish(self, session):
        if self.bad and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if self.bad:
            terminalreporter.section(f"skips not allowed here (allowed: {self.allowed.pattern!r})", red=True)
            for node, reason in self.bad:
                terminalreporter.line(f"{node}: {reason}")


@pytest.fixture
def crash_on_call(monkeypatch):
    """`crash_on_call(module, name, n)`: the n-th call of `module.name` raises KeyboardInterrupt (a simulated
    kill mid-run); returns a function that puts the real one back."""

    def install(module, name: str, n: int):
        real, calls = getattr(module, name), {"n": 0}

        def crashing(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt(f"simulated kill at call {n} of {name}")
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, crashing)
        return lambda: monkeypatch.setattr(module, name, real)

    return install


@pytest.fixture
def parity_reward(monkeypatch):
    """Score by the parity of the completion's length: a random-init model never answers right, so this gives its
    groups mixed rewards and nonzero advantages. Modules opt in with `pytestmark = pytest.mark.usefixtures(...)`."""
    from eureka_kit.data import rewards

    def score_batch(completions, golds, **_):
        return [dict(accuracy=float(len(c) % 2), format=0.0, total=float(len(c) % 2), timeout=0.0)
                for c in completions]

    monkeypatch.setattr(rewards, "score_batch", score_batch)
