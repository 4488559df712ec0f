"""glibc allocator settings for CPU training (`engine.cpu_memory`): freed memory is kept for the next step."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from eureka_kit.config import RunConfig
from eureka_kit.engine import session
from eureka_kit.engine.distributed import World
from eureka_kit.models import build_toy_model

# Allocate and free 200 x 1 MB ten times, as a step's activations come and go, and count the page faults.
CHURN = """
import resource, sys
import torch
from eureka_kit.engine import cpu_memory
print(cpu_memory.keep_freed_memory() if sys.argv[1] == "tuned" else "default")
def cycle():
    blocks = [torch.ones(2**18) for _ in range(200)]
    del blocks
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults_per_cycle(mode: str, **env) -> tuple[str, float]:
    import os

    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_new_page_faults():
    """With glibc's defaults each cycle maps fresh pages (200 MB = 51,200 pages, more than its trim threshold
    keeps); tuned, the second cycle on reuses the heap. EUREKA_KIT_MALLOC_TUNING=0 leaves the defaults."""
    status, tuned = _faults_per_cycle("tuned")
    assert status == "True"
    _, default = _faults_per_cycle("default")
    status_off, off = _faults_per_cycle("tuned", EUREKA_KIT_MALLOC_TUNING="0")
    assert status_off == "False"
    assert tuned < 1000  # of 51,200 pages touched per cycle
    assert default > 3000 and off > 3000


def test_cpu_training_tunes_the_allocator_and_cuda_does_not(monkeypatch):
    calls = []
    monkeypatch.setattr(session, "keep_freed_memory", lambda: calls.append(1) or True)
    model, tok = build_toy_model(seed=0)
    cfg = RunConfig.from_preset("grpo", prompt_template="none")
    session.start_policy(cfg, World(), torch.device("cpu"), model, tok)
    assert calls == [1]
    monkeypatch.setattr(model, "to", lambda device: model)  # no CUDA here: only the branch is under test
    session.start_policy(cfg, World(), torch.device("cuda"), model, tok)
    assert calls == [1]
