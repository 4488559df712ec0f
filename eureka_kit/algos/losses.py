"""Policy losses: surrogates, CPGD's policy-drift term, reference-KL estimators, aggregation.

All functions are pure. A surrogate maps per-token log-ratios `delta = logp - old_logp [B, T]` and
advantages `A [B, T]` to a per-token loss `[B, T]` (to be minimised) plus boolean clip masks;
`aggregate` reduces a per-token loss to a scalar; `policy_loss` composes a preset.

Values follow the CPGD paper's log-ratio form (docs/algorithms.md §3.2): CPG's loss is
-min(delta*A, clip(delta, ln(1-eps_low), ln(1+eps_high))*A), whose value is 0 at r = 1. MM-EUREKA's code
logs -A*clamped(logp) instead, which has the same gradient and a value shifted by -A*old_logp per
token. The PG and CISPO surrogates use delta in place of logp for the same reason (same gradient,
value 0 at r = 1); the drift term keeps the paper's logp (Eq. 3-5), so its value is not a KL and is
never logged as one. Exponentials of log-ratios are taken after clamping to [-20, 20] (verl), which
only changes values where the ratio exceeds e^20.

References: CPGD arXiv 2505.12504; PPO 1707.06347; dual-clip 1912.09729; CISPO 2506.13585;
GSPO 2507.18071; Dr. GRPO 2503.20783; DAPO 2503.14476; k1/k2/k3 http://joschu.net/blog/kl-approx.html;
SAPO 2511.20347; GMPO 2507.20673; Clip-Cov/KL-Cov 2505.22617; DPPO 2602.04879; LUSPO 2602.05261
"""

from __future__ import annotations

import inspect
import math
import zlib
from typing import Any

import torch
from torch import Tensor

from eureka_kit.algos import diagnostics, mismatch
from eureka_kit.config import AGGREGATIONS, KL_ESTIMATORS, ConfigError, RunConfig

LOG_RATIO_CLAMP = 20.0
GSPO_LOG_RATIO_MAX = 10.0  # verl clamps the sequence log-ratio at 10 before exp


def _safe_exp(log_ratio: Tensor) -> Tensor:
    return log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()


def ratio_floor(eps_low: float) -> float:
    """The ratio's lower clip bound: 1 - eps_low, or 0 when eps_low >= 1.

    eps_low >= 1 means no lower clip, as verl and TRL allow any clip range: a ratio is always > 0, so
    under the strict `ratio < floor` tests no token falls below a floor of 0.
    """
    return max(1.0 - eps_low, 0.0)


def log_ratio_floor(eps_low: float) -> float:
    """ln(ratio_floor(eps_low)): the log-ratio's lower clip bound, -inf (no lower clip) when eps_low >= 1."""
    floor = ratio_floor(eps_low)
    return math.log(floor) if floor > 0 else -math.inf


# ---------------------------------------------------------------------------------------------
# Surrogates. Each returns (per_token_loss [B, T], info) where info holds [B, T] bool masks:
#   clipped_low  - A < 0 and the ratio fell below the lower bound (the gradient is cut)
#   clipped_high - A > 0 and the ratio rose above the upper bound (the gradient is cut)
#   (CISPO cuts no gradient: there the masks mark IS weights held at a bound, whatever the sign of A)
#   dual_clipped - A < 0 and r > c (dual-clip only)
# eps_low >= 1 turns the lower side off (`ratio_floor`, `log_ratio_floor`): clipped_low is then empty.


def pg_loss(log_ratio: Tensor, adv: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Plain policy gradient (GPG / verl `gpg`): loss = -A * delta, gradient -A * grad(logp).

    Args: log_ratio [B, T] = logp - old_logp (old detached); adv [B, T]. Returns ([B, T], {}).
    """
    return -adv * log_ratio, {}


def cpg_loss(log_ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float) -> tuple[Tensor, dict[str, Tensor]]:
    """CPGD's clipped policy gradient (paper Eq. 2, Phi_{k,t}): -min(delta*A, clip(delta, ln(1-el), ln(1+eh))*A).

    Written as a `where` over the four regions (sign of A, inside or outside the clip) so the gradient is exactly
    -A*grad(logp) inside and 0 on the clipped side (no half-gradients at ties). There is no upper
    clip for A < 0: that gradient stays -A*grad(logp), bounded since it carries no ratio factor.
    eps_low >= 1 means no lower clip (lo = -inf, `log_ratio_floor`): every A < 0 token keeps -A*grad(logp).
    """
    lo, hi = log_ratio_floor(eps_low), math.log(1 + eps_high)
    clipped_high = (adv > 0) & (log_ratio > hi)
    clipped_low = (adv < 0) & (log_ratio < lo)
    # The clipped value clip(delta, lo, hi)*A, held constant. Clamping delta (rather than A*lo) keeps an
    # infinite lo out of the arithmetic, so no inf/NaN appears even in the branch `where` discards.
    held = adv * log_ratio.detach().clamp(lo, hi)
    objective = torch.where(clipped_high | clipped_low, held, adv * log_ratio)
    return -objective, {"clipped_low": clipped_low, "clipped_high": clipped_high}


def ppo_clip_loss(
    log_ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float, dual_clip: float | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO/GRPO clip with asymmetric eps and optional dual-clip: -min(r*A, clip(r, 1-el, 1+eh)*A).

    Dual-clip (Ye et al. 2020), for A < 0 only: objective max(., c*A), i.e. the loss is capped at -c*A
    and the gradient is 0 once r > c. Equal in value and gradient to MM-EUREKA's r <- min(r, c)
    pre-clamp, TRL's `delta`, verl's `clip_ratio_c` and OpenRLHF's `dual_clip` for c > 1 + eps_high.
    eps_low >= 1 means no lower clip (floor 0, `ratio_floor`): every A < 0 token keeps the gradient -A*r.
    """
    ratio = _safe_exp(log_ratio)
    floor = ratio_floor(eps_low)
    clipped_high = (adv > 0) & (ratio > 1 + eps_high)
    clipped_low = (adv < 0) & (ratio < floor)
    objective = torch.where(
        clipped_high, adv * (1 + eps_high), torch.where(clipped_low, adv * floor, adv * ratio)
    )
    info = {"clipped_low": clipped_low, "clipped_high": clipped_high}
    if dual_clip is not None:
        dual_clipped = (adv < 0) & (ratio > dual_clip)
        objective = torch.where(dual_clipped, adv * dual_clip, objective)
        info["dual_clipped"] = dual_clipped
    return -objective, info


def cispo_loss(log_ratio: Tensor, adv: Tensor, cispo_cap: float) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO, TRL form (`loss_type="cispo"`): loss = -sg(min(r, cap)) * A * delta; cap is absolute (e.g. 5).

    Every token keeps a gradient, -min(r, cap)*A*grad(logp); only the weight is capped, no lower bound.
    `clipped_high` marks capped weights (any sign of A).
    """
    ratio = _safe_exp(log_ratio)
    weight = ratio.clamp(max=cispo_cap).detach()
    return -weight * adv * log_ratio, {"clipped_high": ratio > cispo_cap, "clipped_low": torch.zeros_like(ratio, dtype=torch.bool)}


def cispo_verl_loss(log_ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO, verl form (`loss_mode: cispo`): loss = -sg(clip(r, 1-el, 1+eh)) * A * delta.

    `clipped_high`/`clipped_low` mark the weight's upper/lower bound being active (any sign of A; gradient kept).
    eps_low >= 1 means no lower bound (floor 0, `ratio_floor`): the weight is min(r, 1+eh).
    """
    ratio = _safe_exp(log_ratio)
    floor = ratio_floor(eps_low)
    weight = ratio.clamp(floor, 1 + eps_high).detach()
    return -weight * adv * log_ratio, {"clipped_high": ratio > 1 + eps_high, "clipped_low": ratio < floor}


def _sequence_log_ratio(log_ratio: Tensor, mask: Tensor) -> Tensor:
    """(1/|y_k|) sum_t delta_{k,t}, clamped at 10 (verl). [B, T] -> [B, 1]."""
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)
    return ((log_ratio * mask).sum(dim=1, keepdim=True) / lengths).clamp(max=GSPO_LOG_RATIO_MAX)


def _clipped_sequence_objective(s: Tensor, adv: Tensor, eps_low: float, eps_high: float):
    floor = ratio_floor(eps_low)
    clipped_high = (adv > 0) & (s > 1 + eps_high)
    clipped_low = (adv < 0) & (s < floor)
    objective = torch.where(clipped_high, adv * (1 + eps_high), torch.where(clipped_low, adv * floor, adv * s))
    return objective, {"clipped_low": clipped_low, "clipped_high": clipped_high}


def gspo_loss(
    log_ratio: Tensor, adv: Tensor, mask: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (sequence level): s_k = exp(mean_t delta); loss_k = -min(s_k A_k, clip(s_k, 1-el, 1+eh) A_k).

    The sequence loss is broadcast to every valid token, so `seq-mean-token-mean` aggregation gives
    (1/B) sum_k loss_k exactly (the paper's objective); the unclipped gradient per token is
    -A_k s_k / |y_k| grad(logp). A per-token `adv` is reduced to its masked mean per response.
    eps_low >= 1 means no lower clip (floor 0, `ratio_floor`), as in `ppo_clip_loss`.
    """
    seq_adv = _per_sequence(adv, mask)
    s = _sequence_log_ratio(log_ratio, mask).exp()
    objective, info = _clipped_sequence_objective(s, seq_adv, eps_low, eps_high)
    return (-objective).expand_as(log_ratio), {k: v.expand_as(log_ratio) for k, v in info.items()}


def gspo_token_loss(
    log_ratio: Tensor, adv: Tensor, mask: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO-token: s_{k,t} = sg(s_k) * exp(logp - sg(logp)), clipped like GSPO, per-token A.

    Same value and gradient as `gspo_loss` when A is constant per response; allows per-token A.
    """
    s_seq = _sequence_log_ratio(log_ratio, mask).exp().detach()
    s_tok = s_seq * torch.exp(log_ratio - log_ratio.detach())
    objective, info = _clipped_sequence_objective(s_tok, adv, eps_low, eps_high)
    return -objective, info


def _per_sequence(adv: Tensor, mask: Tensor) -> Tensor:
    """[B, T] per-token advantage -> [B, 1] masked mean; [B, 1]/[B, T]-broadcast inputs pass through."""
    return (adv * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)


# ---------------------------------------------------------------------------------------------
# Post-CPGD objectives (docs/algorithms.md §3.15-3.20). Those that read the per-token log-probs take a `logp`
# argument (the masked logp, `surrogate(..., logp=)`); they use it only through detached selections.


def sapo_loss(log_ratio: Tensor, adv: Tensor, sapo_tau_pos: float, sapo_tau_neg: float
              ) -> tuple[Tensor, dict[str, Tensor]]:
    """SAPO (Qwen, arXiv 2511.20347): loss = -(4/tau) * sigmoid(tau * (r - 1)) * A, no clip.

    tau = sapo_tau_pos (1.0) where A > 0, else sapo_tau_neg (1.05; A = 0 contributes nothing either way), the
    paper's, TRL's (`sapo_temperature_pos/neg`) and verl's (`tau_pos/neg`) defaults and sign rule. Gradient
    -4 sigma'(tau(r - 1)) * r * A: exactly -A at r = 1 (sigma'(0) = 1/4), the on-policy PG, decaying smoothly
    off-policy (a soft trust region instead of a hard clip) and faster for A < 0 since tau_neg > tau_pos.
    The value at r = 1 is -2A/tau (not 0). No gradient is ever cut, so no clip masks are returned.
    As in the paper, TRL and verl: a token-level gate (verl forces seq-mean-token-mean; the preset names it).
    """
    ratio = _safe_exp(log_ratio)
    tau = torch.where(adv > 0, torch.full_like(ratio, sapo_tau_pos), torch.full_like(ratio, sapo_tau_neg))
    gate = torch.sigmoid(tau * (ratio - 1)) * (4 / tau)
    return -gate * adv, {}


def gmpo_loss(log_ratio: Tensor, adv: Tensor, mask: Tensor, eps_low: float, eps_high: float
              ) -> tuple[Tensor, dict[str, Tensor]]:
    """GMPO (arXiv 2507.20673; verl `loss_mode: geo_mean`): per response, loss_k = -A_k * exp(mean_t u_t),
    u_t = s * min(s * delta_t, s * clip(delta_t, -eps_low, eps_high)), s = sign(A_k).

    The geometric mean of the token ratios, each clipped in LOG space: here eps_low / eps_high are log-ratio
    bounds [-eps_low, eps_high] (the paper's and verl's example: 0.4 both sides, i.e. r in [e^-0.4, e^0.4]), not
    the 1 -/+ eps ratio bounds of `ppo_clip`, and eps_low >= 1 is just a wide bound, not "off". As in PPO the clip
    is one-sided in the direction of A: for A > 0 a token above eps_high is held at eps_high (`clipped_high`,
    no gradient), for A < 0 one below -eps_low is held at -eps_low (`clipped_low`). A per-token `adv` is reduced
    to its masked mean per response (verl does the same). The loss is broadcast to every valid token, so
    seq-mean-token-mean gives (1/B) sum_k loss_k, verl's mean over responses; the unclipped gradient per token
    is -A_k exp(mean u) / |y_k|, i.e. -A * the aggregation weight at r = 1 (under every aggregation).
    exp is taken after clamping to [-20, 20] (verl leaves its clamp commented out).
    """
    seq_adv = _per_sequence(adv, mask)
    clipped_high = (seq_adv > 0) & (log_ratio > eps_high)
    clipped_low = (seq_adv < 0) & (log_ratio < -eps_low)
    u = torch.where(clipped_high | clipped_low, log_ratio.detach().clamp(-eps_low, eps_high), log_ratio)
    mean_u = (u * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)
    loss = -seq_adv * _safe_exp(mean_u)
    return loss.expand_as(log_ratio), {"clipped_low": clipped_low & mask.bool(), "clipped_high": clipped_high & mask.bool()}


def _token_covariance(logp: Tensor, adv: Tensor, valid: Tensor) -> Tensor:
    """Cov_t = (logp_t - mean logp)(A_t - mean A), means over the valid tokens of the batch given; detached [B, T]."""
    n = valid.sum().clamp(min=1)
    lp, a = logp.detach(), adv.detach()
    mean_lp = torch.where(valid, lp, torch.zeros_like(lp)).sum() / n
    mean_a = torch.where(valid, a, torch.zeros_like(a)).sum() / n
    return (lp - mean_lp) * (a - mean_a)


def _content_seed(*tensors: Tensor) -> int:
    """A seed computed from the tensors' values (crc32 of their float64 bytes): equal inputs, equal draw."""
    seed = 0
    for x in tensors:
        seed = zlib.crc32(x.detach().to(torch.float64).cpu().numpy().tobytes(), seed)
    return seed


def clip_cov_loss(
    log_ratio: Tensor, adv: Tensor, mask: Tensor, logp: Tensor, eps_low: float, eps_high: float,
    clip_cov_ratio: float, clip_cov_lb: float, clip_cov_ub: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clip-Cov ("The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617; verl `clip_cov`).

    The `ppo_clip` loss (eps_low / eps_high), except that among the valid tokens not already clipped whose
    Cov_t = (logp_t - mean logp)(A_t - mean A) lies in (clip_cov_lb, clip_cov_ub) (strict, verl: 1, 5),
    max(1, int(clip_cov_ratio * #valid tokens)) (verl: 2e-4) are drawn at random and their gradient detached
    (`cov_selected`). Means are over the valid tokens of the batch the loss sees (a micro-batch in training,
    as in verl), so the selection depends on the micro-batching.
    Reproducible draw: a `torch.Generator` seeded with crc32 of (logp, A, mask) values (`_content_seed`), so
    equal inputs select equal tokens (verl uses the global RNG's randperm).
    Differs from verl in the value only: verl multiplies the selected tokens' loss by 0, here it is kept but
    detached (the paper's "detach their gradients"); the gradient is the same.
    """
    loss, info = ppo_clip_loss(log_ratio, adv, eps_low, eps_high)
    valid = mask.bool()
    cov = _token_covariance(logp, adv, valid)
    candidates = valid & ~info["clipped_low"] & ~info["clipped_high"] & (cov > clip_cov_lb) & (cov < clip_cov_ub)
    index = candidates.flatten().nonzero().squeeze(1)
    n_pick = max(int(clip_cov_ratio * int(valid.sum())), 1)
    gen = torch.Generator().manual_seed(_content_seed(logp, adv, mask))
    picked = index[torch.randperm(index.numel(), generator=gen)[:n_pick].to(index.device)]
    selected = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device)
    selected[picked] = True
    selected = selected.view_as(valid)
    info["cov_selected"] = selected
    return torch.where(selected, loss.detach(), loss), info


def kl_cov_loss(log_ratio: Tensor, adv: Tensor, mask: Tensor, logp: Tensor, kl_cov_ratio: float,
                kl_cov_coef: float) -> tuple[Tensor, dict[str, Tensor]]:
    """KL-Cov (arXiv 2505.22617; verl `kl_cov`): loss = -r * A, plus kl_cov_coef * |delta| on the top-k tokens by Cov_t.

    k = max(1, int(kl_cov_ratio * #valid tokens)) (verl: ratio 2e-4, `ppo_kl_coef` 0.1), Cov_t as in
    `clip_cov_loss` (batch means over valid tokens), `torch.topk` (deterministic). The base term is the
    UNCLIPPED ratio objective, as in the paper (KL-Cov replaces the clip) and verl; no PPO clip is applied, so
    eps_low / eps_high are unused. Penalty gradient kl_cov_coef * sign(delta): 0 at r = 1 (torch's d|x| at 0),
    so the on-policy gradient is -A. `cov_selected` marks the penalised tokens; no gradient is cut.
    """
    valid = mask.bool()
    cov = _token_covariance(logp, adv, valid).masked_fill(~valid, -math.inf)
    n_valid = int(valid.sum())
    k = min(max(int(kl_cov_ratio * n_valid), 1), n_valid)
    selected = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device)
    selected[cov.flatten().topk(k).indices] = True
    selected = selected.view_as(valid)
    penalty = torch.where(selected, kl_cov_coef * log_ratio.abs(), torch.zeros_like(log_ratio))
    return -adv * _safe_exp(log_ratio) + penalty, {"cov_selected": selected}


def dppo_tv_loss(log_ratio: Tensor, adv: Tensor, logp: Tensor, dppo_delta: float
                 ) -> tuple[Tensor, dict[str, Tensor]]:
    """DPPO, binary-TV mask (arXiv 2602.04879; prime-rl's default loss): loss = -r * A where the token is inside
    the trust region, the same value held constant (no gradient) where it is not.

    The sampled token's probability shift p - p_old (p = exp(logp), p_old = exp(logp - delta): the binary TV
    estimate of the divergence at that state is |p - p_old|) replaces PPO's ratio test, one-sided in the
    direction of A like PPO's mask: A > 0 and p - p_old > dppo_delta -> `clipped_high`; A < 0 and
    p - p_old < -dppo_delta -> `clipped_low`. dppo_delta = 0.2 on both sides (prime-rl `dppo_mask_low/high`).
    Differences: prime-rl and the authors' verl code multiply masked tokens by 0 (value 0, same gradient);
    prime-rl's default loss also adds a Kimi-K2.5 term kl_tau * delta^2 (1e-3), not included here (use
    `kl_coef` for a reference KL); the authors' verl code caps the IS weight at 10. The trust region is
    anchored at old_logp, the learner's pi_old: the paper anchors at the sampler's log-probs, which equal it
    when the rollout and the learner agree (the toy world's default).
    """
    lp = logp.detach()
    shift = lp.exp() - (lp - log_ratio.detach()).exp()
    clipped_high = (adv > 0) & (shift > dppo_delta)
    clipped_low = (adv < 0) & (shift < -dppo_delta)
    ratio = _safe_exp(log_ratio)
    objective = torch.where(clipped_high | clipped_low, adv * ratio.detach(), adv * ratio)
    return -objective, {"clipped_low": clipped_low, "clipped_high": clipped_high}


def luspo_loss(log_ratio: Tensor, adv: Tensor, mask: Tensor, eps_low: float, eps_high: float
               ) -> tuple[Tensor, dict[str, Tensor]]:
    """LUSPO (arXiv 2602.05261; TRL `loss_type="luspo"`): the `gspo_loss` of each response times its length |y_k|.

    With seq-mean-token-mean this is (1/B) sum_k |y_k| loss_k, TRL's `(per_token_loss * mask.sum(1)).mean()`;
    the unclipped gradient per token is -A_k s_k (GSPO's -A_k s_k / |y_k| without the 1/|y_k|), so at r = 1 it is
    -A * |y_k| * the aggregation weight. Clip range as the paper (§5.1, per TRL's paper index): 2e-3 / 2.5e-3.
    The sequence log-ratio is clamped at 10 before exp as in `gspo_loss` (verl); TRL does not clamp.
    """
    loss, info = gspo_loss(log_ratio, adv, mask, eps_low, eps_high)
    return loss * mask.sum(dim=1, keepdim=True), info


SURROGATES = {
    "pg": pg_loss,
    "cpg": cpg_loss,
    "ppo_clip": ppo_clip_loss,
    "cispo": cispo_loss,
    "cispo_verl": cispo_verl_loss,
    "gspo": gspo_loss,
    "gspo_token": gspo_token_loss,
    "sapo": sapo_loss,
    "gmpo": gmpo_loss,
    "clip_cov": clip_cov_loss,
    "kl_cov": kl_cov_loss,
    "dppo_tv": dppo_tv_loss,
    "luspo": luspo_loss,
}


# ---------------------------------------------------------------------------------------------
# Regularisers (per token, to be added to the surrogate loss and aggregated the same way).


def drift_loss(logp: Tensor, old_logp: Tensor, drift_clip: float) -> Tensor:
    """CPGD policy-drift surrogate E = min(sg(r) - 1, c) * logp (paper Eq. 3-5, §1.4).

    Its gradient min(r - 1, c) * grad(logp) equals grad(k3) of the forward KL(pi_old || pi_theta) while
    r <= 1 + c and is capped at c * grad(logp) beyond (still pushing the ratio down). The clip is on the
    gradient coefficient, never on the estimator value. The value is NOT a KL estimate (it can be
    negative); `policy/approx_kl` (k3) logs the drift itself. Returns [B, T].
    """
    coef = (_safe_exp(logp.detach() - old_logp) - 1).clamp(max=drift_clip)
    return coef * logp


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str) -> Tensor:
    """Reference KL(pi_theta || pi_ref) per token with u = logp - ref_logp (samples from pi_theta/pi_old).

    k1 = u (grad 1); k2 = u^2 / 2 (grad u); k3 = exp(-u) - 1 + u >= 0 (grad 1 - exp(-u)). Returns [B, T].
    """
    if estimator not in KL_ESTIMATORS:
        raise ConfigError(f"kl_estimator: unknown value {estimator!r}; allowed: {', '.join(KL_ESTIMATORS)}")
    u = logp - ref_logp
    if estimator == "k1":
        return u
    if estimator == "k2":
        return 0.5 * u**2
    return torch.exp(-u.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)) - 1 + u


# ---------------------------------------------------------------------------------------------
# Aggregation (docs/algorithms.md §4.4).


def aggregate(
    per_token_loss: Tensor, mask: Tensor, mode: str, *, group_size: int | None = None, max_len: int | None = None
) -> Tensor:
    """Reduce a per-token loss to a scalar.

    Args:
        per_token_loss: [B, T].
        mask: [B, T] 0/1 (bool or float) response-token mask.
        mode: token-mean (sum / #tokens; DAPO, verl default) | seq-mean-token-mean (mean over responses of
            each response's token mean; GRPO, MM-EUREKA code) | seq-mean-token-sum (mean over responses of
            token sums) | seq-mean-token-sum-norm (sum / (B * max_len): Dr. GRPO as TRL `dr_grpo`; verl
            divides by max_len only, i.e. B times larger) | group-token-mean (mean over prompts of each
            group's token mean; CPGD paper Eq. 2; needs group_size).
        group_size: K, for group-token-mean.
        max_len: constant L, for seq-mean-token-sum-norm.
    Returns:
        scalar tensor. Responses with no valid token count as zero in the seq-mean modes.
    """
    mask = mask.to(per_token_loss.dtype)
    masked = per_token_loss * mask
    num_seqs = per_token_loss.shape[0]
    if mode == "token-mean":
        return masked.sum() / mask.sum().clamp(min=1)
    if mode == "seq-mean-token-mean":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    if mode == "seq-mean-token-sum":
        return masked.sum(dim=1).mean()
    if mode == "seq-mean-token-sum-norm":
        if not max_len:
            raise ConfigError("max_len: seq-mean-token-sum-norm needs the constant L (max_len)")
        return masked.sum() / (num_seqs * max_len)
    if mode == "group-token-mean":
        if not group_size or num_seqs % group_size:
            raise ConfigError(f"group_size: group-token-mean needs a group_size dividing B={num_seqs}, got {group_size}")
        group_sums = masked.sum(dim=1).view(-1, group_size).sum(dim=1)
        group_tokens = mask.sum(dim=1).view(-1, group_size).sum(dim=1)
        return (group_sums / group_tokens.clamp(min=1)).mean()
    raise ConfigError(f"aggregation: unknown value {mode!r}; allowed: {', '.join(AGGREGATIONS)}")


def aggregation_units(mask: Tensor, mode: str, *, group_size: int | None = None) -> float:
    """How many units a (micro-)batch contributes to `aggregate`'s denominator.

    Weighting micro-batch losses by units / total units makes gradient accumulation equal to one
    aggregate over the whole optimizer batch (DAPO's global token-mean, not a mean of micro means).
    Tokens for token-mean, responses for seq-mean-*, prompts for group-token-mean.
    """
    if mode == "token-mean":
        return float(mask.sum())
    if mode == "group-token-mean":
        return mask.shape[0] / (group_size or 1)
    return float(mask.shape[0])


# ---------------------------------------------------------------------------------------------
# Composition.


def resolve(preset: str = "cpgd", cfg: RunConfig | None = None, **overrides: Any) -> RunConfig:
    """A validated RunConfig: `cfg` (or the preset's choices) with `overrides` (RunConfig field names)."""
    if cfg is not None:
        return RunConfig.from_dict({**cfg.to_dict(), **overrides}) if overrides else cfg
    return RunConfig.from_preset(preset, **overrides)


def masked_inputs(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The loss's inputs with every masked position zeroed *before* any exp/log, so padding can never leak NaN
    into the gradient: (fmask, logp, old_logp detached, log-ratio, advantages broadcast to [B, T] detached),
    all [B, T] in `logp`'s dtype. `adv` is [B] or [B, T]."""
    valid = mask.bool()
    zeros = torch.zeros_like(logp)
    logp_v = torch.where(valid, logp, zeros)
    old_v = torch.where(valid, old_logp.detach(), zeros)
    adv_t = (adv.unsqueeze(1) if adv.dim() == 1 else adv).to(logp.dtype).expand_as(logp).detach()
    return valid.to(logp.dtype), logp_v, old_v, logp_v - old_v, torch.where(valid, adv_t, zeros)


def surrogate(log_ratio: Tensor, adv: Tensor, fmask: Tensor, cfg: RunConfig, logp: Tensor | None = None
              ) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token surrogate of `cfg.surrogate` ([B, T]) and its clip info: each surrogate takes the config fields
    its signature names (eps_low, eps_high, dual_clip, ...), the mask when it asks for `mask`, and the masked
    log-probs (`masked_inputs`' logp) when it asks for `logp` (clip_cov, kl_cov, dppo_tv)."""
    fn = SURROGATES[cfg.surrogate]
    inputs = {"mask": fmask, "logp": logp}
    kwargs = {name: (inputs[name] if name in inputs else getattr(cfg, name))
              for name in inspect.signature(fn).parameters if name not in ("log_ratio", "adv")}
    if "logp" in kwargs and logp is None:
        raise ValueError(f"logp: surrogate {cfg.surrogate!r} needs the per-token log-probs; call "
                         "surrogate(..., logp=logp_v) with masked_inputs' logp")
    return fn(log_ratio, adv, **kwargs)


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    *,
    preset: str = "cpgd",
    ref_logp: Tensor | None = None,
    behavior_logp: Tensor | None = None,
    cfg: RunConfig | None = None,
    **overrides: Any,
) -> tuple[Tensor, dict[str, float]]:
    """The full policy loss of a preset: aggregate(correction(surrogate) + drift_coef * E + kl_coef * KL).

    Args:
        logp: [B, T] log-probs of the sampled tokens under the current policy (requires grad).
        old_logp: [B, T] log-probs under the rollout policy (detached inside).
        adv: [B] per-response or [B, T] per-token advantages (already weighted).
        mask: [B, T] response-token mask; masked tokens get exactly zero gradient, whatever their values.
        preset: name in `config.PRESETS`; ignored when `cfg` is given.
        ref_logp: [B, T] reference-model log-probs; required when kl_coef > 0.
        behavior_logp: [B, T] log-probs under the distribution the sampler drew from (mu); required by the
            corrections tis, icepop and opsm (`mismatch.correct`). A correction weights the surrogate term; a
            token it drops leaves every term and the aggregation's denominator.
        cfg: a RunConfig to take the algorithm choices from.
        overrides: RunConfig field names (eps_low, eps_high, dual_clip, drift_coef, drift_clip, kl_coef,
            kl_estimator, aggregation, group_size, max_len, surrogate, correction, correction_level,
            correction_cap, correction_low, correction_high, opsm_delta, m2po_tau, ...).
    Returns:
        (loss, stats): scalar loss differentiable w.r.t. `logp`; stats maps slash-grouped metric names
        (docs/algorithms.md "Logged metrics") to floats.
    """
    cfg = resolve(preset, cfg, **overrides)
    if logp.shape != old_logp.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError(f"logp, old_logp, mask: expected equal [B, T] shapes, got "
                         f"{tuple(logp.shape)}, {tuple(old_logp.shape)}, {tuple(mask.shape)}")
    valid = mask.bool()
    fmask, logp_v, old_v, log_ratio, adv_t = masked_inputs(logp, old_logp, adv, mask)
    zeros = torch.zeros_like(logp)
    per_token_surrogate, clip_info = surrogate(log_ratio, adv_t, fmask, cfg, logp=logp_v)
    kept, correction_stats = fmask, {}
    if cfg.correction != "none":
        per_token_surrogate, kept, correction_stats = mismatch.correct(
            per_token_surrogate, fmask, cfg, logp=logp_v, old_logp=old_v, behavior_logp=behavior_logp, adv=adv_t)

    def agg(x: Tensor) -> Tensor:
        return aggregate(x, kept, cfg.aggregation, group_size=cfg.group_size, max_len=cfg.max_len)

    loss_policy = agg(per_token_surrogate)
    loss = loss_policy
    stats: dict[str, float] = {"loss/policy": loss_policy.item()}
    if cfg.drift_coef > 0:
        loss_drift = agg(drift_loss(logp_v, old_v, cfg.drift_clip))
        loss = loss + cfg.drift_coef * loss_drift
        stats["loss/drift_surrogate"] = loss_drift.item()
    if cfg.kl_coef > 0:
        if ref_logp is None:
            raise ValueError("ref_logp: required when kl_coef > 0 (a reference model must be loaded)")
        ref_v = torch.where(valid, ref_logp.detach(), zeros)
        loss_kl = agg(kl_penalty(logp_v, ref_v, cfg.kl_estimator))
        loss = loss + cfg.kl_coef * loss_kl
        stats["loss/kl"] = loss_kl.item()
    stats["loss/total"] = loss.item()
    stats.update(diagnostics.policy_stats(log_ratio.detach(), adv_t, fmask, clip_info, drift_clip=cfg.drift_clip))
    stats.update(correction_stats)
    if ref_logp is not None:
        stats.update(diagnostics.reference_kl_stats(logp_v.detach(), ref_v if cfg.kl_coef > 0 else
                                                    torch.where(valid, ref_logp, zeros), fmask))
    return loss, stats
