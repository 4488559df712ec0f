"""Diagnostics next to the loss: ratio tails, clip fractions by side, drift, reference KL, sentinels.

Every metric is defined once here and documented in docs/algorithms.md ("Logged metrics"). All
statistics are over valid (mask = 1) tokens, computed without gradient, returned as Python floats.
Clip fractions use the *active* surrogate's own thresholds and log-ratio/ratio space (unlike
MM-EUREKA's logged clip fraction, which hard-codes 0.2 in ratio space: note D10).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd

RATIO_QUANTILES = (0.001, 0.01, 0.5, 0.99, 0.999)
TAIL_LOG_RATIO = math.log(2.0)  # a token is in the ratio tail when r > 2 or r < 1/2


def _quantile_name(q: float) -> str:
    return "p" + f"{q * 100:g}".replace(".", "_")


@torch.no_grad()
def policy_stats(
    log_ratio: Tensor, adv: Tensor, mask: Tensor, clip_info: dict[str, Tensor], *, drift_clip: float = 2.0
) -> dict[str, float]:
    """Ratio and clipping statistics of one loss evaluation.

    Args:
        log_ratio: [B, T] delta = logp - old_logp. adv: [B, T]. mask: [B, T] 0/1.
        clip_info: the surrogate's bool masks (clipped_low, clipped_high, optionally dual_clipped, cov_selected).
        drift_clip: CPGD's c, for `drift/capped_frac`.
    Returns:
        policy/ratio_{mean,min,max,p0_1,p1,p50,p99,p99_9}, policy/log_ratio_abs_max, policy/ratio_tail_frac,
        policy/approx_kl (k3 of KL(pi_old || pi_theta): the policy drift), policy/clipfrac_{low,high},
        policy/clipfrac, policy/dual_clipfrac (when dual-clip is on), policy/cov_selected_frac (clip_cov, kl_cov),
        drift/coef_mean, drift/capped_frac.
    """
    valid = mask.bool()
    delta = log_ratio[valid].double()
    if delta.numel() == 0:
        return {"policy/num_tokens": 0.0}
    ratio = delta.clamp(-20, 20).exp()
    stats = {
        "policy/num_tokens": float(delta.numel()),
        "policy/ratio_mean": ratio.mean().item(),
        "policy/ratio_min": ratio.min().item(),
        "policy/ratio_max": ratio.max().item(),
        "policy/log_ratio_abs_max": delta.abs().max().item(),
        "policy/ratio_tail_frac": (delta.abs() > TAIL_LOG_RATIO).double().mean().item(),
        "policy/approx_kl": (ratio - 1 - delta).mean().item(),
        "drift/coef_mean": (ratio - 1).clamp(max=drift_clip).mean().item(),
        "drift/capped_frac": (ratio - 1 > drift_clip).double().mean().item(),
    }
    sorted_ratio = ratio.sort().values
    for q in RATIO_QUANTILES:
        index = min(int(q * (sorted_ratio.numel() - 1) + 0.5), sorted_ratio.numel() - 1)
        stats[f"policy/ratio_{_quantile_name(q)}"] = sorted_ratio[index].item()
    low = clip_info.get("clipped_low", torch.zeros_like(valid))[valid].double().mean().item()
    high = clip_info.get("clipped_high", torch.zeros_like(valid))[valid].double().mean().item()
    stats.update({"policy/clipfrac_low": low, "policy/clipfrac_high": high, "policy/clipfrac": low + high})
    if "dual_clipped" in clip_info:
        stats["policy/dual_clipfrac"] = clip_info["dual_clipped"][valid].double().mean().item()
    if "cov_selected" in clip_info:  # clip_cov (gradient detached) / kl_cov (penalised)
        stats["policy/cov_selected_frac"] = clip_info["cov_selected"][valid].double().mean().item()
    stats["adv/token_mean"] = adv[valid].double().mean().item()
    return stats


@torch.no_grad()
def advantage_stats(adv: Tensor, mask: Tensor) -> dict[str, float]:
    """adv/mean and adv/abs_max, per response.

    adv: (B,) one advantage per response, or (B, T) per-token (step) advantages; mask: (B, T) valid tokens.
    A (B, T) advantage counts only valid tokens: a response's advantage is the mean over its valid tokens
    (padding would otherwise pull the mean towards 0), and abs_max is over valid tokens. A response without
    valid tokens counts as 0.
    """
    if adv.dim() == 1:
        return {"adv/mean": adv.double().mean().item(), "adv/abs_max": adv.abs().max().item()}
    valid = mask.bool()
    per_response = (adv.double() * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)
    return {"adv/mean": per_response.mean().item(),
            "adv/abs_max": adv[valid].abs().max().item() if valid.any() else 0.0}


@torch.no_grad()
def reference_kl_stats(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> dict[str, float]:
    """kl/ref_k1 and kl/ref_k3: mean estimates of KL(pi_theta || pi_ref) over valid tokens."""
    u = (logp - ref_logp)[mask.bool()].double()
    if u.numel() == 0:
        return {}
    return {"kl/ref_k1": u.mean().item(), "kl/ref_k3": (torch.exp(-u.clamp(-20, 20)) - 1 + u).mean().item()}


# ---------------------------------------------------------------------------------------------
# Collapse sentinels over a run's metric history (one dict per step, as in metrics.jsonl).

SENTINEL_DEFAULTS = dict(
    ratio_max=10.0,          # any token ratio above this is a blow-up precursor (MM-Eureka §4.5)
    entropy_slope=-0.02,     # entropy falling faster than this per step, fitted over `window` steps
    length_drop=0.5,         # mean response length below this fraction of its early-run median
    format_gap=0.3,          # format rate gained minus any accuracy gain over `window` steps: hacking the format
    window=10,
)
COMPLETION_CHARS = 300  # a warning quotes at most this much of each offending completion


def collapse_warnings(history: list[dict[str, float]], **thresholds: float) -> list[dict[str, object]]:
    """Warnings (step, since_step, kind, message, value) for the collapse precursors seen in a run's metric history.

    Kinds: ratio_tail (policy/ratio_max above `ratio_max`), entropy_slope (least-squares slope of
    policy/entropy over the last `window` steps below `entropy_slope`), length_collapse
    (rollout/len_mean below `length_drop` x the median of the first `window` steps: PG/PGD's
    `<think>`-only collapse), format_divergence (over the last `window` steps the format rate rose while accuracy
    did not follow: (format_frac gain) - max(0, accuracy gain) above `format_gap`; a falling accuracy counts as no
    gain, so a run whose format rate stays put, at 1.0 or anywhere, never triggers it), nonfinite_steps (optim/skipped_steps > 0: optimizer steps dropped for a NaN/Inf loss or
    gradient). `since_step` is the first step of the evidence (the window start for the windowed kinds).
    Missing metrics are skipped, so this works on any subset of the documented keys.
    """
    t = {**SENTINEL_DEFAULTS, **thresholds}
    early_length = _early_length(history, int(t["window"]))
    return [w for i in range(len(history)) for w in _warnings_at(history, i, early_length, t)]


def step_warnings(history: list[dict[str, float]], rollouts_of: Callable[[int], pd.DataFrame], *, top_k: int = 3,
                  **thresholds: float) -> list[dict[str, object]]:
    """The warnings that fire at the last step of `history`, each with `samples`: the `top_k` rows of that step's
    rollouts (`rollouts_of(step)`, e.g. `RunDir.rollouts`; read only when a warning fires) that show it best.

    Called by `train` after every step, so `warnings.jsonl` grows as the run goes; equal to filtering
    `collapse_warnings(history)` to the last step, plus the samples.
    """
    fired = sentinels_at(history, **thresholds)
    if fired:
        rows = rollouts_of(int(fired[0]["step"])).to_dict("records")
        for w in fired:
            w["samples"] = offending_samples(str(w["kind"]), rows, top_k)
    return fired


def sentinels_at(history: list[dict[str, float]], **thresholds: float) -> list[dict[str, object]]:
    """The warnings (step, since_step, kind, value, message) that fire at the last step of `history`, without
    samples: `collapse_warnings(history)` filtered to that step. [] for an empty history."""
    if not history:
        return []
    t = {**SENTINEL_DEFAULTS, **thresholds}
    return _warnings_at(history, len(history) - 1, _early_length(history, int(t["window"])), t)


def offending_samples(kind: str, rows: list[dict], top_k: int = 3) -> list[dict[str, object]]:
    """The `top_k` responses of one step (rollouts parquet rows) that show a warning of `kind` best.

    ratio_tail: the largest |log ratio| (logp - old_logp over loss tokens, in any update epoch when the run saved
    `epoch_logp`, else the last epoch's new_logp);
    entropy_slope: the lowest mean token entropy; length_collapse: the shortest responses; format_divergence:
    well formatted but wrong (format > 0, accuracy 0), in sample order; nonfinite_steps: responses holding a
    NaN/Inf log-prob, advantage or reward first, then the largest |log ratio|.
    Each sample: its row (`sample`), reward, accuracy, format, length, max_log_ratio (signed, the token with the
    largest |log ratio|) and that `token` and its update `epoch` (None with one epoch), entropy_mean, and the completion (first COMPLETION_CHARS characters).
    """
    summaries = [(_sample_summary(position, row), _all_finite(row)) for position, row in enumerate(rows)]
    rank = {
        "ratio_tail": lambda s, finite: -abs(s["max_log_ratio"]),
        "entropy_slope": lambda s, finite: math.inf if math.isnan(s["entropy_mean"]) else s["entropy_mean"],
        "length_collapse": lambda s, finite: s["length"],
        "format_divergence": lambda s, finite: s["sample"],
        "nonfinite_steps": lambda s, finite: (finite, -abs(s["max_log_ratio"])),
    }[kind]
    if kind == "format_divergence":
        summaries = [(s, finite) for s, finite in summaries if s["format"] > 0 and s["accuracy"] <= 0]
    return [s for s, _ in sorted(summaries, key=lambda pair: rank(*pair))][:top_k]


def _sample_summary(position: int, row: dict) -> dict[str, object]:
    keep = np.asarray(row.get("loss_mask", []), dtype=float) > 0
    old = np.asarray(row.get("old_logp", []), dtype=float)
    # Every update epoch's log-probs when saved (`epoch_logp`), else the last epoch's: the token whose |log ratio|
    # is largest in any epoch, since policy/ratio_max is the maximum over all of them.
    saved = row.get("epoch_logp")
    epochs = [np.asarray(e, dtype=float) for e in (saved if saved is not None and len(saved) else [row.get("new_logp", [])])]
    deltas = np.stack([(e - old)[keep] if len(e) == len(old) == len(keep) else np.full(int(keep.sum()), np.nan)
                       for e in epochs]) if len(keep) else np.zeros((1, 0))
    flat = None if np.isnan(deltas).all() else int(np.nanargmax(np.abs(deltas)))  # all() of nothing is True
    epoch, at = (None, None) if flat is None else divmod(flat, deltas.shape[1])
    delta = deltas[epoch] if epoch is not None else np.zeros(0)
    tokens = list(row.get("tokens", []))
    entropy = np.asarray(row.get("entropy", []), dtype=float)
    return {
        "sample": int(row.get("sample", position)),
        "reward": float(row.get("reward", math.nan)),
        "accuracy": float(row.get("accuracy", math.nan)),
        "format": float(row.get("format", math.nan)),
        "length": len(row.get("token_ids", [])),
        "max_log_ratio": 0.0 if at is None else float(delta[at]),
        "epoch": None if epoch is None else (epoch + 1 if len(epochs) > 1 else None),  # 1-based, when saved per epoch
        "token": str(np.asarray(tokens, dtype=object)[keep][at]) if at is not None and len(tokens) == len(keep) else "",
        "entropy_mean": float(entropy[keep].mean()) if len(entropy) == len(keep) and keep.any() else math.nan,
        "completion": str(row.get("completion", ""))[:COMPLETION_CHARS],
    }


def _all_finite(row: dict) -> bool:
    values = [row.get(k, []) for k in ("new_logp", "old_logp")] + [[row.get("advantage", 0.0), row.get("reward", 0.0)]]
    return bool(np.isfinite(np.concatenate([np.asarray(v, dtype=float) for v in values])).all())


def _early_length(history: list[dict[str, float]], window: int) -> float | None:
    """Median of the first `window` logged mean response lengths (None before any; NaN = not logged, as in a
    history read back from metrics.jsonl by pandas)."""
    lengths = [h["rollout/len_mean"] for h in history if not math.isnan(h.get("rollout/len_mean", math.nan))][:window]
    return sorted(lengths)[len(lengths) // 2] if lengths else None


def _warnings_at(history: list[dict[str, float]], i: int, early_length: float | None,
                 t: dict[str, float]) -> list[dict[str, object]]:
    """The warnings that fire at history[i] (see `collapse_warnings`)."""
    window = int(t["window"])
    h = history[i]
    step = int(h.get("step", i))
    window_start = int(history[max(0, i - window + 1)].get("step", max(0, i - window + 1)))
    warnings: list[dict[str, object]] = []

    def warn(kind: str, value: float, message: str, since_step: int = step) -> None:
        warnings.append({"step": step, "since_step": since_step, "kind": kind, "value": value, "message": message})

    if h.get("policy/ratio_max", 0.0) > t["ratio_max"]:
        warn("ratio_tail", h["policy/ratio_max"], f"max token ratio {h['policy/ratio_max']:.3g} > {t['ratio_max']}")
    if early_length and i >= window and h.get("rollout/len_mean", early_length) < t["length_drop"] * early_length:
        warn("length_collapse", h["rollout/len_mean"],
             f"mean response length {h['rollout/len_mean']:.1f} < {t['length_drop']} x early median {early_length:.1f}")
    past = history[i - window + 1] if i + 1 >= window else None
    if past is not None and all(k in h and k in past for k in ("reward/format_frac", "reward/accuracy")):
        # Only a format rate that rose counts: accuracy falling under a constant format rate is not format hacking
        # (the old "format gain minus accuracy gain" fired in every arm whose accuracy dipped at format 1.0).
        gap = (h["reward/format_frac"] - past["reward/format_frac"]) - max(0.0, h["reward/accuracy"] - past["reward/accuracy"])
        if gap > t["format_gap"]:
            warn("format_divergence", gap, f"format rate gained {gap:.2f} more than accuracy over {window} steps",
                 window_start)
    entropies = [x.get("policy/entropy") for x in history[max(0, i - window + 1): i + 1]]
    if i + 1 >= window and all(e is not None for e in entropies):
        slope = _slope(entropies)
        if slope < t["entropy_slope"]:
            warn("entropy_slope", slope, f"entropy falling at {slope:.3g}/step over {window} steps", window_start)
    if h.get("optim/skipped_steps", 0.0) > 0:
        warn("nonfinite_steps", h["optim/skipped_steps"],
             f"{h['optim/skipped_steps']:.0f} optimizer step(s) skipped for a NaN/Inf loss or gradient")
    return warnings


def _slope(values: list[float]) -> float:
    n = len(values)
    x_mean, y_mean = (n - 1) / 2, sum(values) / n
    num = sum((i - x_mean) * (v - y_mean) for i, v in enumerate(values))
    den = sum((i - x_mean) ** 2 for i in range(n))
    return num / den if den else 0.0
