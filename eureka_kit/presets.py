"""The algorithm presets, as data: one dict of algorithm-slot values per algorithm (`config.RunConfig.from_preset`).

An algorithm is a composition of independent choices; a preset names the value of every slot it changes from
`NEUTRAL`, and nothing else. Values are checked by `config.RunConfig` (this module imports nothing of ours).
"""

from __future__ import annotations

from typing import Any

# Presets. `NEUTRAL` sets every algorithm slot; each preset overrides the slots its paper names.
NEUTRAL: dict[str, Any] = dict(
    advantage_estimator="grpo",
    std_eps=1e-9,
    whiten_advantages=False,
    adv_weight="none",
    adv_weight_cap=3.0,
    surrogate="pg",
    eps_low=0.2,
    eps_high=0.2,
    dual_clip=None,
    cispo_cap=5.0,
    sapo_tau_pos=1.0,
    sapo_tau_neg=1.05,
    clip_cov_ratio=2e-4,
    clip_cov_lb=1.0,
    clip_cov_ub=5.0,
    kl_cov_ratio=2e-4,
    kl_cov_coef=0.1,
    dppo_delta=0.2,
    drift_coef=0.0,
    drift_clip=2.0,
    kl_coef=0.0,
    kl_estimator="k3",
    aggregation="seq-mean-token-mean",
    correction="none",
    correction_level="token",
    correction_cap=2.0,
    correction_low=0.5,
    correction_high=2.0,
    opsm_delta=0.1,
    m2po_tau=0.04,
    online_filter=False,
    filter_lower=0.1,
    filter_upper=0.9,
    dynamic_sampling=False,
    overlong_buffer=0,
    overlong_penalty=1.0,
    mask_truncated=False,
    process_mode="none",
    process_weight=0.5,
    prm_aggregation="min",
)
ALGORITHM_FIELDS = tuple(NEUTRAL)

CPGD_PAPER = "https://arxiv.org/abs/2505.12504"
MM_EUREKA_PAPER = "https://arxiv.org/abs/2503.07365"
# The CPGD ladder aggregates as the paper's Eq. 2 (token mean within each prompt's group, then mean over
# prompts); MM-EUREKA's code uses seq-mean-token-mean (note D2): override `aggregation` to match it.
_CPGD_LADDER = dict(aggregation="group-token-mean")
_DRIFT = dict(drift_coef=0.01, drift_clip=2.0)
# The PPO-clip baselines of CPGD Table 1 ran through MM-EUREKA's code path: seq-mean-token-mean, and
# RLOO whitened over the batch (the CPGD paper's RLOO definition, note D4).
_PPO = dict(surrogate="ppo_clip", aggregation="seq-mean-token-mean")

PRESETS: dict[str, dict[str, Any]] = {
    # CPGD ablation ladder (CPGD report Table 2). STD weight = GRPO advantage, as the released script.
    "pg": dict(paper=CPGD_PAPER, surrogate="pg", **_CPGD_LADDER),
    "cpg": dict(paper=CPGD_PAPER, surrogate="cpg", **_CPGD_LADDER),
    "pgd": dict(paper=CPGD_PAPER, surrogate="pg", **_DRIFT, **_CPGD_LADDER),
    "cpgd": dict(paper=CPGD_PAPER, surrogate="cpg", **_DRIFT, **_CPGD_LADDER),
    # GRPO family (DeepSeekMath; MM-Eureka arXiv 2503.07365 Eq. 1). grpo_dual_clip = the released
    # GRPO code, which always pre-clamps r <= 3 (open point 1: both are offered).
    "grpo": dict(paper="https://arxiv.org/abs/2402.03300", **_PPO),
    "grpo_kl": dict(paper="https://arxiv.org/abs/2402.03300", **_PPO, kl_coef=1e-3, kl_estimator="k3"),
    "grpo_dual_clip": dict(paper="https://arxiv.org/abs/1912.09729", **_PPO, dual_clip=3.0),
    # MM-Eureka-32B's two stages (MME §4.5, §6.3) in one run: GRPO without KL, then with KL 1e-3 (k3) on
    # another data set (MMK12 then Geo3k; in the toy world the physics wording stands in for Geo3k).
    "mm_eureka_two_stage": dict(paper=MM_EUREKA_PAPER, **_PPO, num_steps=50, stages=(
        dict(num_steps=30, kl_coef=0.0),
        dict(num_steps=20, kl_coef=1e-3, train_subject="physics"))),
    "rloo": dict(paper="https://arxiv.org/abs/2402.14740", advantage_estimator="rloo", whiten_advantages=True, **_PPO),
    "reinforce_pp": dict(paper="https://arxiv.org/abs/2501.03262", advantage_estimator="reinforce_pp", **_PPO),
    "reinforce_pp_baseline": dict(paper="https://arxiv.org/abs/2501.03262",
                                  advantage_estimator="reinforce_pp_baseline", **_PPO),
    "dr_grpo": dict(paper="https://arxiv.org/abs/2503.20783", advantage_estimator="dr_grpo",
                    surrogate="ppo_clip", aggregation="seq-mean-token-sum-norm"),
    # DAPO: L_cache = 4096 of L_max = 20480 in the paper; 16 tokens here fits the toy's max_len = 64.
    "dapo": dict(paper="https://arxiv.org/abs/2503.14476", surrogate="ppo_clip", eps_low=0.2, eps_high=0.28,
                 aggregation="token-mean", dynamic_sampling=True, overlong_buffer=16, overlong_penalty=1.0),
    "cispo": dict(paper="https://arxiv.org/abs/2506.13585", surrogate="cispo", cispo_cap=5.0,
                  aggregation="token-mean"),
    "gspo": dict(paper="https://arxiv.org/abs/2507.18071", surrogate="gspo", eps_low=3e-4, eps_high=4e-4,
                 aggregation="seq-mean-token-mean"),
    # Post-CPGD objectives (docs/algorithms.md §3.15-3.20), GRPO advantage throughout.
    "sapo": dict(paper="https://arxiv.org/abs/2511.20347", surrogate="sapo", sapo_tau_pos=1.0, sapo_tau_neg=1.05,
                 aggregation="seq-mean-token-mean"),
    # GMPO's eps are log-ratio bounds: r in [e^-0.4, e^0.4] (paper; verl's example clip_ratio 0.4).
    "gmpo": dict(paper="https://arxiv.org/abs/2507.20673", surrogate="gmpo", eps_low=0.4, eps_high=0.4,
                 aggregation="seq-mean-token-mean"),
    "clip_cov": dict(paper="https://arxiv.org/abs/2505.22617", surrogate="clip_cov", eps_low=0.2, eps_high=0.2,
                     clip_cov_ratio=2e-4, clip_cov_lb=1.0, clip_cov_ub=5.0, aggregation="token-mean"),
    "kl_cov": dict(paper="https://arxiv.org/abs/2505.22617", surrogate="kl_cov", kl_cov_ratio=2e-4, kl_cov_coef=0.1,
                   aggregation="token-mean"),
    "dppo_tv": dict(paper="https://arxiv.org/abs/2602.04879", surrogate="dppo_tv", dppo_delta=0.2,
                    aggregation="token-mean"),
    # LUSPO clip range: paper §5.1 (as TRL's paper index gives it).
    "luspo": dict(paper="https://arxiv.org/abs/2602.05261", surrogate="luspo", eps_low=2e-3, eps_high=2.5e-3,
                  aggregation="seq-mean-token-mean"),
    # CPGD + a PRM's step scores as per-token advantages (PRIME-style step level; MM-PRM names outcome +
    # process as future work). Needs prm_path at train time (a PRM folder from `eureka-kit prm train`).
    "cpgd_prm": dict(paper="https://arxiv.org/abs/2502.01456", surrogate="cpg", **_DRIFT, **_CPGD_LADDER,
                     process_mode="step_advantage", process_weight=0.5),
}


# Supervised fine-tuning recipes for `sft.sft` / `eureka-kit sft` (no algorithm slot is used). The
# optimiser settings are the toy base policy's warm start (engine.base_policy.SFTConfig): AdamW (0.9, 0.98), wd 0.01,
# warm-up then cosine to 10%.
SFT_PRESETS: dict[str, dict[str, Any]] = {
    "sft": dict(paper="https://arxiv.org/abs/2501.17161", sft_target="cot", lr=5e-4, lr_schedule="cosine_with_min_lr",
                warmup_steps=6, num_steps=60, train_batch_size=32, micro_batch_size=32, adam_betas=(0.9, 0.98),
                weight_decay=0.01),
}
