"""Advantage estimators and CPGD advantage weights (outcome reward, gamma = 1).

Every estimator maps per-response rewards `R [B]` to per-response advantages `A [B]`; the loss
broadcasts `A` to every token of the response. Groups are contiguous runs of `group_size` rows
(row `i` belongs to prompt `i // group_size`), which is how the rollout lays them out.

Definitions follow docs/algorithms.md §4.1-4.2 (CPGD arXiv 2505.12504, MM-EUREKA code branch `qwen`):

| estimator              | A_k                                                   |
|------------------------|-------------------------------------------------------|
| grpo                   | (R_k - mean_g) / (std_g + std_eps), std unbiased      |
| dr_grpo, equal         | R_k - mean_g                                          |
| rloo                   | R_k - mean of the other K-1 = K/(K-1) (R_k - mean_g)  |
| reinforce_pp           | GlobalNorm(R)                                         |
| reinforce_pp_baseline  | GlobalNorm(R_k - mean_g)                              |
| none                   | R_k ("unprocessed rewards" ablation)                  |

GlobalNorm is whitening over all valid *tokens* of the batch (a response of n tokens counts n times),
with the biased variance clamped at 1e-8, as MM-EUREKA/OpenRLHF; verl uses the unbiased variance and
OpenRLHF adds a further +1e-8 after the division, both omitted here. REINFORCE++'s KL-in-reward term
(beta * sum of log-ratios to the reference) is not used by any CPGD run and is not implemented.
"""

from __future__ import annotations

import torch
from torch import Tensor

from eureka_kit.config import ESTIMATORS, GROUP_ESTIMATORS, ConfigError, RunConfig

WHITEN_VAR_FLOOR = 1e-8


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """View `[B]` as `[B // group_size, group_size]`, with a clear error when B is not a multiple."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards: expected shape [B], got {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"group_size: {group_size} does not divide the batch of {rewards.numel()} responses")
    return rewards.view(-1, group_size)


def group_mean_centered(rewards: Tensor, group_size: int) -> Tensor:
    """R_k - mean of its group. Args: rewards [B] float. Returns: [B]."""
    return _centered(_grouped(rewards, group_size)).reshape(-1)


def _centered(grouped: Tensor) -> Tensor:
    """[N, K] -> R - group mean, exactly 0 for all-equal groups.

    The float mean of K equal non-dyadic values (e.g. 0.1) can miss the value by an ulp; divided by
    std + 1e-9 that residue became an advantage of about +-0.9 for a zero-variance group.
    """
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    return torch.where((grouped == grouped[:, :1]).all(dim=1, keepdim=True), torch.zeros_like(centered), centered)


def group_zscore(rewards: Tensor, group_size: int, std_eps: float = 1e-9) -> Tensor:
    """GRPO advantage (R_k - mean_g) / (std_g + std_eps), std with Bessel's correction (torch default).

    A zero-variance group gets exactly zero advantage (numerator is 0). Returns [B].
    """
    grouped = _grouped(rewards, group_size)
    std = grouped.std(dim=1, keepdim=True, unbiased=True)
    return (_centered(grouped) / (std + std_eps)).reshape(-1)


def leave_one_out(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO: R_k - (1/(K-1)) sum_{k' != k} R_k'. Sums to zero within each group. Returns [B]."""
    grouped = _grouped(rewards, group_size)
    # K/(K-1) (R - mean) is the same quantity, and is exactly 0 for a zero-variance group.
    return (_centered(grouped) * (group_size / (group_size - 1))).reshape(-1)


def global_whiten(values: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Token-weighted whitening: (v - mu) / sqrt(max(var, 1e-8)), each row weighted by its token count.

    Args:
        values: [B] per-response values (broadcast to every token of the response).
        lengths: [B] token counts n_k; None weighs every response once.
    Returns: [B].
    """
    weights = torch.ones_like(values) if lengths is None else lengths.to(values.dtype)
    total = weights.sum()
    if total <= 0:
        raise ValueError("lengths: the batch has no valid tokens to whiten over")
    mean = (weights * values).sum() / total
    var = (weights * (values - mean) ** 2).sum() / total  # biased, as MM-EUREKA/OpenRLHF
    return (values - mean) * var.clamp(min=WHITEN_VAR_FLOOR).rsqrt()


def compute(
    rewards: Tensor,
    group_size: int,
    estimator: str,
    *,
    std_eps: float = 1e-9,
    lengths: Tensor | None = None,
    whiten: bool = False,
) -> Tensor:
    """Advantages for one batch of responses.

    Args:
        rewards: [B] float, one scalar reward per response; groups are contiguous rows.
        group_size: K responses per prompt.
        estimator: one of `config.ESTIMATORS`.
        std_eps: denominator epsilon of `grpo`.
        lengths: [B] token counts; used by the token-weighted whitening of reinforce_pp(_baseline)
            and of `whiten=True`.
        whiten: whiten the result over tokens afterwards (MM-EUREKA code does this for every estimator
            except grpo; reinforce_pp(_baseline) are always whitened, so it is a no-op for them).
    Returns:
        [B] float advantages.

    Example:
        >>> compute(torch.tensor([1., 0., 0., 0.]), 4, "rloo")
        tensor([ 1.0000, -0.3333, -0.3333, -0.3333])
    """
    if estimator not in ESTIMATORS:
        raise ConfigError(f"advantage_estimator: unknown value {estimator!r}; allowed: {', '.join(ESTIMATORS)}")
    if estimator in GROUP_ESTIMATORS and group_size < 2:
        raise ConfigError(f"group_size: must be >= 2 for advantage_estimator={estimator!r}, got {group_size}")
    rewards = rewards.float()
    adv = _ESTIMATORS[estimator](rewards, group_size, std_eps, lengths)
    if whiten and estimator not in ("reinforce_pp", "reinforce_pp_baseline"):
        adv = global_whiten(adv, lengths)
    return adv


_ESTIMATORS = {
    "grpo": lambda r, k, eps, n: group_zscore(r, k, eps),
    "dr_grpo": lambda r, k, eps, n: group_mean_centered(r, k),
    "equal": lambda r, k, eps, n: group_mean_centered(r, k),
    "rloo": lambda r, k, eps, n: leave_one_out(r, k),
    "reinforce_pp": lambda r, k, eps, n: global_whiten(r, n),
    "reinforce_pp_baseline": lambda r, k, eps, n: global_whiten(group_mean_centered(r, k), n),
    "none": lambda r, k, eps, n: r.clone(),
}


def zero_std_groups(rewards: Tensor, group_size: int) -> Tensor:
    """[B // K] bool: groups whose rewards are all equal (no learning signal)."""
    grouped = _grouped(rewards, group_size)
    return (grouped == grouped[:, :1]).all(dim=1)


def clip_filter_like_weights(rewards: Tensor, group_size: int, cap: float = 3.0) -> Tensor:
    """CPGD clip-filter-like weight omega(x) = min(cap, N / N_nonzero) per response (docs/algorithms.md §4.2).

    N = prompts in the batch, N_nonzero = prompts whose group reward std != 0. It re-scales instead of
    dropping zero-signal groups, mimicking the online filter. Zero-std groups get weight 1 (their
    advantage is 0 anyway), and if every group is zero-std all weights are 1. The batch passed in is
    the scope of N: MM-EUREKA computes it per rank (note D5); pass the global batch for the paper's form.

    Args:
        rewards: [B] total rewards (accuracy + format), groups contiguous.
        group_size: K.
        cap: c_omega (MM-EUREKA default 3.0).
    Returns:
        [B] float weights.
    """
    zero = zero_std_groups(rewards, group_size)
    num_groups, num_nonzero = zero.numel(), int((~zero).sum())
    if num_nonzero == 0:
        return torch.ones_like(rewards, dtype=torch.float32)
    weight = min(cap, num_groups / num_nonzero)
    per_group = torch.where(zero, torch.ones(()), torch.full((), weight))
    return per_group.repeat_interleave(group_size).float()


def adora_weights(
    rewards: Tensor, lengths: Tensor, group_size: int, *, lam: float = 0.1, max_len_cutoff: int = 4094
) -> Tensor:
    """ADORA group weights (MM-EUREKA `--use_adora`).

    A group is down-weighted to `lam` when it has a correct response (R > 0.5) and its longest correct
    response is no longer than the mean length of the incorrect responses shorter than `max_len_cutoff`
    (no such response: mean = +inf, so the group is down-weighted). Otherwise weight 1.

    Args: rewards [B], lengths [B] token counts. Returns: [B] float weights.
    """
    grouped_r = _grouped(rewards.float(), group_size)
    grouped_n = lengths.float().view(-1, group_size)
    correct = grouped_r > 0.5
    longest_correct = torch.where(correct, grouped_n, torch.full_like(grouped_n, -1.0)).amax(dim=1)
    short_wrong = (~correct) & (grouped_n < max_len_cutoff)
    count = short_wrong.sum(dim=1)
    mean_wrong = torch.where(
        count > 0, (grouped_n * short_wrong).sum(dim=1) / count.clamp(min=1), torch.full_like(longest_correct, float("inf"))
    )
    down = correct.any(dim=1) & (longest_correct <= mean_wrong)
    per_group = torch.where(down, torch.full_like(longest_correct, lam), torch.ones_like(longest_correct))
    return per_group.repeat_interleave(group_size)


def for_config(rewards: Tensor, lengths: Tensor, cfg: RunConfig) -> Tensor:
    """(B,) advantages of (B,) rewards with the config's estimator, whitening and CPGD clip-filter-like weight:
    what `train()` feeds the loss (before any process signal)."""
    adv = compute(rewards, cfg.group_size, cfg.advantage_estimator, std_eps=cfg.std_eps, lengths=lengths,
                  whiten=cfg.whiten_advantages)
    if cfg.adv_weight == "clip_filter_like":
        adv = adv * clip_filter_like_weights(rewards, cfg.group_size, cfg.adv_weight_cap)
    return adv
