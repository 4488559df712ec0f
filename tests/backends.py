"""Importing an optional backend (vLLM, DeepSpeed) in a test module.

In the default venv these backends are absent and their test modules skip. In a backend's own venv
(`make test-vllm`, `make test-deepspeed`) the run passes `--require-backend NAME`: then the import is a
plain import, so a broken import chain is a collection error with its traceback, never a silent skip.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRED_ENV = "EUREKA_KIT_REQUIRE_BACKENDS"  # comma-separated; set by conftest.py from --require-backend


def import_backend(name: str) -> ModuleType:
    """`name` imported; skips the calling module when it is absent and the run does not require it."""
    if name in os.environ.get(REQUIRED_ENV, "").split(","):
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"{name} is not installed here; it has its own venv and make target")
