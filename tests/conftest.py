"""Shared test helpers."""

from __future__ import annotations

import pytest


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
