"""Train-inference mismatch: raw metrics of the behaviour policy mu against the learner's pi_old, and corrections.

The rollout engine samples from mu (its own precision, temperature / top-k / top-p truncation, possibly stale
weights); the learner recomputes pi_old. Per token rho = pi_old / mu = exp(old_logp - behavior_logp), detached;
rho is 1 everywhere only when the sampler is the learner. docs/algorithms.md §4.10 has the formulas and sources.

    mismatch_stats(old_logp, behavior_logp, mask)           raw metrics, before any correction
    correct(per_token_loss, ..., cfg) -> (loss, keep, stats)  one correction of CORRECTIONS applied to a surrogate

A correction returns a detached per-token weight [B, T] (multiplied onto the surrogate's per-token loss) and a
0/1 keep mask [B, T]: a dropped token leaves the loss and its denominator (the aggregation runs over kept tokens).
All functions are pure; shapes are [B, T] with `mask` marking response tokens.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

LOG_CLAMP = 20.0  # exp of a log-weight is taken after clamping to [-20, 20], as losses._safe_exp
RHO_BAND = (0.5, 2.0)  # a token's rho outside [1/2, 2] counts as a mismatch tail (mismatch/rho_out_frac)
RHO_QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)


def _masked_values(x: Tensor, mask: Tensor) -> Tensor:
    return x[mask.bool()].float()


def sequence_log_weights(log_rho: Tensor, mask: Tensor) -> Tensor:
    """log w_k = sum_t m_{k,t} log rho_{k,t}: [B, T] -> [B]."""
    return (log_rho * mask).sum(dim=1)


def mismatch_stats(old_logp: Tensor, behavior_logp: Tensor, mask: Tensor) -> dict[str, float]:
    """Raw mismatch of the sampler (mu) against the learner (pi_old), before any correction.

    mismatch/abs_mean, abs_max: mean and max |log pi_old - log mu| over response tokens;
    mismatch/kl_k3: KL(mu || pi_old) by k3 with samples from mu, mean of rho - 1 - ln rho (>= 0);
    mismatch/seq_chi2 and seq_ess: w_k = exp(sum_t ln rho), chi^2 = mean(w^2) / mean(w)^2 - 1 and the normalised
    effective sample size (sum w)^2 / (n sum w^2) = 1 / (1 + chi^2), both in log space (w overflows);
    mismatch/rho_out_frac: share of tokens with rho outside [1/2, 2]; mismatch/rho_qXX: quantiles of rho.
    All are 0 (ESS 1, quantiles 1) when mu == pi_old. Args [B, T]; returns floats.
    """
    valid = mask.bool()
    log_rho = torch.where(valid, old_logp.float() - behavior_logp.float(), 0.0)
    values = _masked_values(log_rho, mask)
    if values.numel() == 0:
        return {}
    rho = values.clamp(-LOG_CLAMP, LOG_CLAMP).exp()
    seq = sequence_log_weights(log_rho, mask.float())[valid.any(dim=1)].double()
    n = seq.numel()
    # chi^2 = n * sum w^2 / (sum w)^2 - 1, with the sums as logsumexp
    log_chi2_plus_1 = math.log(n) + float(torch.logsumexp(2 * seq, 0) - 2 * torch.logsumexp(seq, 0))
    quantiles = torch.quantile(rho.double(), torch.tensor(RHO_QUANTILES, dtype=torch.float64))
    return {
        "mismatch/abs_mean": float(values.abs().mean()),
        "mismatch/abs_max": float(values.abs().max()),
        "mismatch/kl_k3": float((rho - 1 - values).mean()),
        "mismatch/seq_chi2": math.expm1(log_chi2_plus_1),
        "mismatch/seq_ess": math.exp(-log_chi2_plus_1),
        "mismatch/rho_out_frac": float(((rho < RHO_BAND[0]) | (rho > RHO_BAND[1])).float().mean()),
        **{f"mismatch/rho_q{round(q * 100):02d}": float(v) for q, v in zip(RHO_QUANTILES, quantiles, strict=True)},
    }


# ---------------------------------------------------------------------------------------------
# Corrections. Each maps (log_rho [B, T], fmask [B, T] float, logp, old_logp, adv, cfg) to (weight, keep) [B, T],
# both detached; masked positions of `log_rho` are 0.


def _level_log_weight(log_rho: Tensor, fmask: Tensor, level: str) -> Tensor:
    """Per-token log-weight: log rho itself (token level) or the response's sum broadcast (sequence level)."""
    if level == "sequence":
        return sequence_log_weights(log_rho, fmask)[:, None].expand_as(log_rho)
    return log_rho


def tis(log_rho: Tensor, fmask: Tensor, cfg, **_: Any) -> tuple[Tensor, Tensor]:
    """Truncated importance sampling (Yao et al. 2025; verl rollout correction, TRL vllm_importance_sampling):
    weight min(rho, C) per token, or min(w_k, C) for every token of response k at sequence level. Nothing is
    masked; the aggregation is unchanged."""
    log_w = _level_log_weight(log_rho, fmask, cfg.correction_level)
    return log_w.clamp(max=math.log(cfg.correction_cap)).exp() * fmask, fmask


def icepop(log_rho: Tensor, fmask: Tensor, cfg, **_: Any) -> tuple[Tensor, Tensor]:
    """IcePop / masked IS (Ring-1T; OpenRLHF icepop, verl seq-MIS): weight rho where alpha <= rho <= beta, else
    the token (sequence level: the whole response, by w_k) is masked and leaves the loss denominator."""
    log_w = _level_log_weight(log_rho, fmask, cfg.correction_level)
    inside = (log_w >= math.log(cfg.correction_low)) & (log_w <= math.log(cfg.correction_high))
    keep = fmask * inside
    return log_w.clamp(-LOG_CLAMP, LOG_CLAMP).exp() * keep, keep


def opsm(log_rho: Tensor, fmask: Tensor, cfg, *, logp: Tensor, behavior_logp: Tensor, adv: Tensor,
         **_: Any) -> tuple[Tensor, Tensor]:
    """Off-policy sequence masking (DeepSeek-V3.2, arXiv 2512.02556; TRL off_policy_mask_threshold, slime
    --use-opsm): response k is masked when A_k < 0 and (1/|y_k|) sum_t (log mu - sg(log pi_theta)) > delta.
    Sequence level by definition (correction_level is not read); weight 1 on kept tokens."""
    lengths = fmask.sum(dim=1).clamp(min=1)
    drift = ((behavior_logp - logp.detach()) * fmask).sum(dim=1) / lengths
    seq_adv = (adv * fmask).sum(dim=1) / lengths
    keep = fmask * ~((seq_adv < 0) & (drift > cfg.opsm_delta))[:, None]
    return keep, keep


def m2po(log_rho: Tensor, fmask: Tensor, cfg, *, logp: Tensor, old_logp: Tensor, **_: Any) -> tuple[Tensor, Tensor]:
    """M2PO second-moment masking (arXiv 2510.01161; AReaL): with delta = log pi_theta - log pi_old (detached),
    drop the tokens with the largest delta^2, one at a time, until the mean delta^2 of the kept tokens is <= tau.
    Token level by definition, over the tokens given (the loop's micro-batch); weight 1 on kept tokens. The paper
    pairs the mask with an unclipped -r*A; here it masks whatever surrogate the preset has."""
    valid = fmask.bool()
    sq = torch.where(valid, (logp.detach() - old_logp).float() ** 2, -1.0)  # invalid tokens sort last
    order = sq.flatten().argsort(descending=True)
    n = int(valid.sum())
    ranked = sq.flatten()[order][:n].double()  # descending delta^2 of the valid tokens
    # kept mean after dropping the j largest: (total - sum of the j largest) / (n - j), for j = 0 .. n-1
    dropped_sums = torch.cat([ranked.new_zeros(1), ranked.cumsum(0)[:-1]]) if n else ranked
    kept_means = (ranked.sum() - dropped_sums) / torch.arange(n, 0, -1, dtype=torch.float64)
    fits = (kept_means <= cfg.m2po_tau).nonzero()
    drop = int(fits[0]) if len(fits) else n
    keep = torch.ones(sq.numel(), dtype=fmask.dtype)
    keep[order[:drop]] = 0
    keep = keep.view_as(fmask) * fmask
    return keep, keep


CORRECTIONS = {"tis": tis, "icepop": icepop, "opsm": opsm, "m2po": m2po}
NEEDS_BEHAVIOR = ("tis", "icepop", "opsm")


def correct(per_token_loss: Tensor, fmask: Tensor, cfg, *, logp: Tensor, old_logp: Tensor,
            behavior_logp: Tensor | None, adv: Tensor) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Apply `cfg.correction` to a surrogate's per-token loss.

    Args: per_token_loss, fmask (float 0/1), logp (current policy), old_logp (pi_old), behavior_logp (mu, or None
    for m2po), adv: all [B, T], masked positions already zeroed (losses.masked_inputs).
    Returns: (weighted per-token loss, keep mask [B, T] float for the aggregation, correction/* stats):
    masked_frac (share of response tokens dropped), weight_mean / weight_max over kept tokens, and for TIS
    capped_frac (share of kept tokens whose weight hit the cap).
    """
    if cfg.correction in NEEDS_BEHAVIOR and behavior_logp is None:
        raise ValueError(f"behavior_logp: correction={cfg.correction!r} needs the sampler's log-probs (mu); "
                         f"pass behavior_logp=, or correction='none'")
    behavior = old_logp if behavior_logp is None else torch.where(fmask.bool(), behavior_logp.detach(), 0.0)
    log_rho = (old_logp.detach() - behavior) * fmask
    weight, keep = CORRECTIONS[cfg.correction](log_rho, fmask, cfg, logp=logp, old_logp=old_logp.detach(),
                                               behavior_logp=behavior, adv=adv)
    weight, keep = weight.detach().to(per_token_loss.dtype), keep.detach().to(per_token_loss.dtype)
    total, kept = float(fmask.sum()), keep.bool()
    stats = {"correction/masked_frac": 1.0 - float(keep.sum()) / max(total, 1.0)}
    if kept.any():
        stats.update({"correction/weight_mean": float(weight[kept].mean()),
                      "correction/weight_max": float(weight[kept].max())})
    if cfg.correction == "tis":
        stats["correction/capped_frac"] = float((weight[kept] >= cfg.correction_cap * (1 - 1e-6)).float().mean()) \
            if kept.any() else 0.0
    return per_token_loss * weight, keep, stats
