"""The rollout sampler: the learner itself, a low-precision copy refreshed in place, or a stale copy."""

from __future__ import annotations

import torch

from eureka_kit.config import RunConfig
from eureka_kit.engine.sampler import Sampler


def _policy():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))


def test_without_injection_the_learner_samples():
    policy = _policy()
    assert Sampler(RunConfig()).for_rollout(policy) is policy


def test_bf16_copy_without_lag_is_one_module_refreshed_in_place_from_the_current_weights():
    policy, sampler = _policy(), Sampler(RunConfig(sampler_dtype="bfloat16"))
    first = sampler.for_rollout(policy)
    assert first is not policy and first[0].weight.dtype == torch.bfloat16
    with torch.no_grad():
        policy[0].weight.add_(1.0)
    second = sampler.for_rollout(policy)
    # the same module (a compiled decode graph for it stays valid), holding the new weights rounded to bf16
    assert second is first
    assert torch.equal(second[0].weight, policy[0].weight.to(torch.bfloat16))
    assert len(sampler.history) == 0  # nothing kept on the CPU without a lag


def test_lag_one_samples_with_the_previous_steps_weights():
    policy, sampler = _policy(), Sampler(RunConfig(sampler_lag=1))
    before = policy[0].weight.detach().clone()
    sampler.for_rollout(policy)
    with torch.no_grad():
        policy[0].weight.add_(1.0)
    stale = sampler.for_rollout(policy)
    assert torch.equal(stale[0].weight, before) and not torch.equal(stale[0].weight, policy[0].weight)
