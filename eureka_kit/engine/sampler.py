"""The policy rollouts are drawn from: the learner itself, or a copy with an injected train-inference mismatch.

Two mismatches of real systems, reproducible on a CPU (docs/algorithms.md §4.10):
* precision (`sampler_dtype`): the rollout engine runs the weights in bf16/fp16 while the learner is fp32;
* staleness (`sampler_lag = k`): the sampler holds the weights of k RL steps ago, the asynchronous case.
Truncated sampling (top_p, top_k) and a learner temperature other than the sampler's need no copy: they are
config fields the rollout and the learner read. The learner's pi_old is never touched: the mismatch lives in mu.

With a lag, snapshots of the weights are kept on the CPU (k + 1 of them), so a lag costs k + 1 copies of the model;
without one the copy is refreshed from the learner on its device. `sampler_dtype="bfloat16"` with no lag is also how a
CUDA run rolls out fast from fp32 master weights, as peer frameworks' bf16 rollout engines do. A resumed
run starts with no history (its first k steps sample with the oldest weights it has, i.e. fewer steps behind).
"""

from __future__ import annotations

import copy
from collections import deque

import torch

from eureka_kit.config import RunConfig

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class Sampler:
    """`for_rollout(policy)` returns the model to sample this step's rollouts from."""

    def __init__(self, cfg: RunConfig):
        self.dtype = DTYPES.get(cfg.sampler_dtype)
        self.history: deque[dict[str, torch.Tensor]] = deque(maxlen=cfg.sampler_lag + 1)
        self.copy = None

    @property
    def injects(self) -> bool:
        return self.dtype is not None or self.history.maxlen > 1

    def for_rollout(self, policy):
        """`policy` itself, or its copy holding the weights of `sampler_lag` steps ago (fewer at the start) in
        `sampler_dtype`. Call once per step, before the rollout: each call records the current weights."""
        if not self.injects:
            return policy
        if self.copy is None:
            self.copy = copy.deepcopy(policy).requires_grad_(False).eval()
            if self.dtype is not None:
                self.copy.to(self.dtype)
        if self.history.maxlen == 1:
            # No lag: copy the current weights straight across (on the device; no CPU snapshot to keep).
            weights = policy.state_dict()
        else:
            self.history.append({k: v.detach().to("cpu", copy=True) for k, v in policy.state_dict().items()})
            weights = self.history[0]
        # In place, into the copy's own dtype and device: the copy stays the same module, so a CUDA static-cache
        # decode graph compiled for it stays warm across steps.
        self.copy.load_state_dict(weights)
        return self.copy
