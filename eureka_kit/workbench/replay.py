"""Replay: recompute a saved step's policy loss under another preset (a counterfactual on the same batch).

A run directory keeps, per RL step, every response's per-token `old_logp` (the rollout policy, before the
step's updates), `new_logp` (the learner's log-probs at the last update epoch), `advantage` and `loss_mask`
(runs.py). Replaying feeds exactly those tensors to `losses.policy_loss` with another preset's choices,
so one can ask "what would CPGD's loss, clip fractions and per-token gradient have been on the batch
GRPO actually saw?". Nothing is re-sampled and no model is needed.

Limits: the reference model's log-probs are not saved, so the reference-KL term (kl_coef > 0) cannot be
replayed; it is dropped and `replay/kl_dropped = 1` is reported. `new_logp` is the policy at the moment
each micro-batch was last evaluated (before that minibatch's own optimizer step), as logged in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from eureka_kit.algos import losses
from eureka_kit.config import RunConfig
from eureka_kit.engine.runs import RunDir, open_run

PER_TOKEN_COLUMNS = ("old_logp", "new_logp", "loss_mask")


@dataclass
class Replay:
    """The result of replaying one step. Per-token arrays are [B, T] numpy, zero beyond each response."""

    preset: str
    loss: float
    stats: dict[str, float]
    per_token_loss: np.ndarray
    """surrogate + drift_coef * drift, per token (what `aggregate` reduces), 0 on masked tokens"""
    grad_coef: np.ndarray
    """d loss / d logp per token: how hard each token is pushed (negative = made more likely)"""
    clipped_low: np.ndarray
    clipped_high: np.ndarray
    log_ratio: np.ndarray
    mask: np.ndarray

    def per_sample(self) -> pd.DataFrame:
        """One row per response: its token-mean loss, clip fractions by side, max |log-ratio|."""
        n = self.mask.sum(axis=1).clip(min=1)
        return pd.DataFrame({
            "loss_token_mean": (self.per_token_loss * self.mask).sum(axis=1) / n,
            "clipfrac_low": (self.clipped_low * self.mask).sum(axis=1) / n,
            "clipfrac_high": (self.clipped_high * self.mask).sum(axis=1) / n,
            "log_ratio_abs_max": np.abs(self.log_ratio * self.mask).max(axis=1),
        })


def pad_column(values: pd.Series | list, dtype=torch.float32) -> Tensor:
    """A column of per-token lists -> [B, T] tensor, right-padded with zeros to the longest row."""
    rows = [np.array(v, dtype=np.float64) for v in values]
    T = max((len(r) for r in rows), default=0)
    out = torch.zeros((len(rows), max(T, 1)), dtype=dtype)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(r, dtype=dtype)
    return out


def step_tensors(rollouts: pd.DataFrame) -> dict[str, Tensor]:
    """old_logp, new_logp, mask ([B, T]) and adv ([B]) of one saved step (rows in sample order)."""
    missing = [c for c in (*PER_TOKEN_COLUMNS, "advantage") if c not in rollouts]
    if missing:
        raise KeyError(f"rollouts: missing column(s) {missing}; is this a eureka_kit rollouts parquet?")
    rollouts = rollouts.sort_values("sample") if "sample" in rollouts else rollouts
    return {
        "old_logp": pad_column(rollouts["old_logp"]),
        "new_logp": pad_column(rollouts["new_logp"]),
        "mask": pad_column(rollouts["loss_mask"]),
        "adv": torch.tensor(rollouts["advantage"].to_numpy(dtype=np.float64), dtype=torch.float32),
    }


def replay_tensors(old_logp: Tensor, new_logp: Tensor, adv: Tensor, mask: Tensor, *, preset: str,
                   group_size: int | None = None, max_len: int | None = None, **overrides: Any) -> Replay:
    """Loss, stats and per-token pieces of `preset` on given tensors ([B, T]; adv [B] or [B, T]).

    `group_size` / `max_len` are the run's (needed by group-token-mean and seq-mean-token-sum-norm).
    The loss equals `losses.policy_loss(new_logp, old_logp, adv, mask, preset=..., **overrides)`.
    """
    extra = {k: v for k, v in dict(group_size=group_size, max_len=max_len).items() if v is not None}
    # Batch sizes do not enter the loss; set them to the group size so any preset validates.
    k = extra.get("group_size", RunConfig.group_size)
    cfg = RunConfig.from_preset(preset, **{"train_batch_size": k, "micro_batch_size": k, **extra, **overrides})
    kl_dropped = cfg.kl_coef > 0
    if kl_dropped:  # no saved reference log-probs: replay the rest of the loss
        cfg = RunConfig.from_dict({**cfg.to_dict(), "kl_coef": 0.0})
    B = mask.shape[0]
    if cfg.aggregation == "group-token-mean" and B % cfg.group_size:
        raise ValueError(f"group_size: {cfg.group_size} does not divide the {B} saved responses "
                         "(group-token-mean needs whole groups); pass group_size=")
    logp = new_logp.detach().clone().double().requires_grad_(True)
    old, fmask = old_logp.double(), mask.double()
    loss, stats = losses.policy_loss(logp, old, adv.double(), fmask, cfg=cfg)
    loss.backward()

    # Per-token pieces through policy_loss's own masking and surrogate routing.
    fmask, logp_v, old_v, log_ratio, adv_t = losses.masked_inputs(logp.detach(), old, adv.double(), fmask)
    valid = fmask.bool()
    per_token, info = losses.surrogate(log_ratio, adv_t, fmask, cfg, logp=logp_v)
    if cfg.drift_coef > 0:
        per_token = per_token + cfg.drift_coef * losses.drift_loss(logp_v, old_v, cfg.drift_clip)
    none = torch.zeros_like(valid)
    stats = {**stats, "replay/kl_dropped": float(kl_dropped)}
    return Replay(
        preset=preset, loss=float(loss.detach()), stats=stats,
        per_token_loss=(per_token.detach() * fmask).numpy(),
        grad_coef=(logp.grad * fmask).numpy(),
        clipped_low=(info.get("clipped_low", none) & valid).numpy(),
        clipped_high=(info.get("clipped_high", none) & valid).numpy(),
        log_ratio=log_ratio.numpy(), mask=fmask.numpy(),
    )


def run_settings(run: RunDir) -> dict[str, Any]:
    """The run's saved RunConfig dict (config.json's `config`)."""
    return run.config().get("config", {})


def replay_step(run: RunDir | str | Path, step: int, preset: str | None = None, **overrides: Any) -> Replay:
    """Replay step `step` of a run directory under `preset` (default: the run's own preset).

    The run's group_size and max_len are used unless overridden; other `overrides` are RunConfig
    algorithm fields (eps_low, eps_high, dual_clip, drift_coef, aggregation, ...).
    """
    run = run if isinstance(run, RunDir) else open_run(run)
    settings = run_settings(run)
    steps = run.rollout_steps()
    if step not in steps:
        raise ValueError(f"step: {step} has no saved rollouts in {run.path}; saved steps: {steps}")
    t = step_tensors(run.rollouts(step))
    overrides = {"group_size": settings.get("group_size"), "max_len": settings.get("max_len"), **overrides}
    return replay_tensors(t["old_logp"], t["new_logp"], t["adv"], t["mask"],
                          preset=preset or settings.get("preset", "cpgd"), **overrides)


def compare_presets(run: RunDir | str | Path, step: int, presets: list[str] | tuple[str, ...],
                    keys: tuple[str, ...] = ("loss/total", "policy/clipfrac_low", "policy/clipfrac_high",
                                             "policy/ratio_max", "policy/approx_kl")) -> pd.DataFrame:
    """One row per preset: the replayed loss and the chosen stats on the same saved batch."""
    rows = []
    for preset in presets:
        r = replay_step(run, step, preset)
        rows.append({"preset": preset, **{k: r.stats.get(k, float("nan")) for k in keys},
                     "grad_abs_mean": float(np.abs(r.grad_coef).sum() / max(r.mask.sum(), 1))})
    return pd.DataFrame(rows)
