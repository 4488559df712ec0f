"""Verifier failures in the RL loop: a verifier that cannot run stops `train` before step 0; errors are counted
per step (`reward/errors`, `reward/timeouts`); a step with more errors than `max_verifier_error_frac` stops the
run before training on it, with the earlier checkpoints kept. (`rewards` itself: tests/test_rewards.py.)"""

from __future__ import annotations

import sys

import pytest
import torch

from eureka_kit.config import RunConfig
from eureka_kit.data import rewards, toyworld
from eureka_kit.engine.loop import VerifierFailure, train
from eureka_kit.engine.runs import open_run
from eureka_kit.models import build_toy_model

SMALL = dict(rollout_batch_size=4, group_size=4, train_batch_size=8, micro_batch_size=8, max_len=12, num_steps=2,
             lr=1e-3)
ANSWERS = SMALL["rollout_batch_size"] * SMALL["group_size"]  # answers scored per step without a filter
MESSAGE = "ValueError('sympy gave up')"


@pytest.fixture(scope="module")
def problems():
    return toyworld.load("train", "math", seed=0, n_per_level=4)


def failing_reward(error_every: int = 1, timeout_every: int = 0, from_call: int = 1):
    """A score_batch whose verifier raises on every `error_every`-th answer and times out on every
    `timeout_every`-th other one, from its `from_call`-th call on (one call per rollout); the other answers score
    the parity of their length (a random-init model never answers right). Calls are counted in `.calls`."""
    def score_batch(completions, golds, **_):
        score_batch.calls += 1
        failing = score_batch.calls >= from_call
        out = []
        for i, c in enumerate(completions):
            acc = float(len(c) % 2)
            if failing and i % error_every == 0:
                out.append(dict(accuracy=0.0, format=0.0, total=0.0, timeout=0.0, error=1.0, error_message=MESSAGE))
            elif failing and timeout_every and i % timeout_every == 1:
                out.append(dict(accuracy=0.0, format=0.0, total=0.0, timeout=1.0, error=0.0))
            else:
                out.append(dict(accuracy=acc, format=0.0, total=acc, timeout=0.0, error=0.0))
        return out

    score_batch.calls = 0
    return score_batch


def test_train_fails_before_step_0_when_the_reward_worker_cannot_start(tmp_path, problems, monkeypatch):
    broken = [sys.executable, "-c", "import sys; sys.stderr.write('math_verify is missing'); sys.exit(3)"]
    monkeypatch.setattr(rewards, "_WORKER", rewards._Worker(broken))
    monkeypatch.setattr(rewards, "_CHECKED", set())  # an earlier test's passing check must not hide this worker
    model, tok = build_toy_model(seed=0)
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "run"), **SMALL)
    with pytest.raises(rewards.VerifierUnavailable) as err:
        train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    assert "exit code 3" in str(err.value) and "math_verify is missing" in str(err.value)
    assert not (tmp_path / "run").exists(), "nothing is written (no metrics row) before the verifier is checked"


def test_a_failing_step_stops_the_run_before_training_and_keeps_the_earlier_checkpoints(tmp_path, problems,
                                                                                        monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setattr(rewards, "score_batch", failing_reward(from_call=3))  # steps 0, 1 fine; step 2 fails
    model, tok = build_toy_model(seed=1)
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "run"), save_every=1, **{**SMALL, "num_steps": 4})
    with pytest.raises(VerifierFailure) as err:
        train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    message = str(err.value)
    for part in ("step 2", f"{ANSWERS} of {ANSWERS} answers (100%)", "max_verifier_error_frac=0.5", MESSAGE,
                 "step_000001"):
        assert part in message, (part, message)

    rd = open_run(tmp_path / "run")
    metrics = rd.metrics()
    assert list(metrics.step) == [0, 1, 2]  # the failing step is logged
    assert list(metrics["reward/errors"]) == [0, 0, ANSWERS] and list(metrics["reward/timeouts"]) == [0, 0, 0]
    assert [c.name for c in rd.checkpoints()] == ["step_000000", "step_000001"]
    assert rd.rollout_steps() == [0, 1]
    saved = load_file(rd.checkpoints()[-1] / "model.safetensors")  # step 2 did not update the policy
    assert all(torch.equal(p, saved[n]) for n, p in model.named_parameters() if n in saved)


def test_a_filter_that_drops_every_failing_group_still_counts_their_errors_and_stops(tmp_path, problems,
                                                                                     monkeypatch):
    """Every answer errors -> every group scores 0 -> the online filter keeps nothing, for all its rollouts."""
    monkeypatch.setattr(rewards, "score_batch", failing_reward())
    model, tok = build_toy_model(seed=2)
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "run"), online_filter=True, **SMALL)
    with pytest.raises(VerifierFailure, match=f"step 0: the verifier raised on {8 * ANSWERS} of {8 * ANSWERS}"):
        train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    assert open_run(tmp_path / "run").metrics()["reward/errors"].tolist() == [8 * ANSWERS]  # 8 rollouts


@pytest.mark.parametrize("error_every, frac, stops", [
    (4, 0.5, False),   # 25% errors under the default threshold
    (4, 0.25, False),  # stops on more than the share: exactly 25% goes on
    (4, 0.2, True),
    (1, 1.0, False),   # 1 = never stop, even when every answer errors
])
def test_the_threshold_is_a_share_of_the_step_s_answers_and_time_outs_do_not_count(tmp_path, problems, monkeypatch,
                                                                                    error_every, frac, stops):
    monkeypatch.setattr(rewards, "score_batch", failing_reward(error_every, timeout_every=4))
    model, tok = build_toy_model(seed=3)
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "run"), max_verifier_error_frac=frac,
                                **{**SMALL, "num_steps": 1})
    if stops:
        with pytest.raises(VerifierFailure, match="step 0"):
            train(cfg, policy=model, processor=tok, problems=problems, progress=False)
        return
    run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    errors = ANSWERS // error_every
    timeouts = 0 if error_every == 1 else ANSWERS // 4
    assert [(h["reward/errors"], h["reward/timeouts"]) for h in run.history] == [(errors, timeouts)]
    assert [c.name for c in run.dir.checkpoints()] == ["step_000000"]  # the run went on to its end
