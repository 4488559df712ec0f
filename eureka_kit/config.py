"""Run configuration: one flat typed dataclass plus the algorithm presets, as data.

An algorithm is a composition of independent choices (advantage estimator, advantage weight,
surrogate, policy-drift term, reference KL, aggregation, filters). A preset names one value for
*every* algorithm slot, so two presets differ exactly in the choices they name and in nothing else
(`RunConfig.from_preset` never lets a field default leak into an algorithm slot).

The presets themselves (`PRESETS`, `SFT_PRESETS`) are data in `eureka_kit/presets.py`, re-exported here.
Equations, paper links and deviations are in docs/algorithms.md; the math is in `algos/`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eureka_kit.presets import ALGORITHM_FIELDS, NEUTRAL, PRESETS, SFT_PRESETS

# ---------------------------------------------------------------------------------------------
# Allowed values of the choice fields (validation and error messages read these tables).
ESTIMATORS = ("grpo", "dr_grpo", "equal", "rloo", "reinforce_pp", "reinforce_pp_baseline", "none")
ADV_WEIGHTS = ("none", "clip_filter_like")
SURROGATES = ("pg", "cpg", "ppo_clip", "cispo", "cispo_verl", "gspo", "gspo_token",
              "sapo", "gmpo", "clip_cov", "kl_cov", "dppo_tv", "luspo")
KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
    "group-token-mean",
)
ROLLOUT_BACKENDS = ("hf", "vllm")
# Train-inference mismatch (docs/algorithms.md §4.10): corrections of the behaviour policy mu and injected mismatch.
CORRECTIONS = ("none", "tis", "icepop", "opsm", "m2po")
CORRECTION_LEVELS = ("token", "sequence")
SAMPLER_DTYPES = ("same", "bfloat16", "float16")
PROMPT_TEMPLATES = ("cpgd_7b", "mmeureka_32b", "none")
LR_SCHEDULES = ("constant", "cosine_with_min_lr", "linear")
PROCESS_MODES = ("none", "step_advantage", "shaped_reward")
# Difficulty levels of the toy world (`data.toyworld.LEVELS`, which checks this count): config sits below data.
TOY_WORLD_LEVELS = 6
# = bestofn.AGGREGATIONS (kept here so the config does not import torch; a test checks they agree)
PRM_AGGREGATIONS = ("min", "last", "product", "average", "max", "sum_logprob", "sum_logit", "mean_odd")
# = the keys of algos.diagnostics.SENTINEL_DEFAULTS (config sits below algos; a test checks they agree)
SENTINEL_KEYS = ("ratio_max", "entropy_slope", "length_drop", "format_gap", "window")
# Estimators that need a group (K >= 2 responses per prompt) to compute a baseline.
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "equal", "rloo", "reinforce_pp_baseline")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the allowed values."""


# What one stage of a multi-stage run may override (model, optimiser, batch shape and the PRM, loaded once,
# stay the run's).
STAGE_FIELDS = (*(f for f in ALGORITHM_FIELDS if f not in ("process_mode", "process_weight", "prm_aggregation")),
                "num_steps", "train_subject", "train_levels", "train_per_level", "data_path")
SFT_TARGETS = ("cot", "answer")

def preset_choices(name: str) -> dict[str, Any]:
    """Every algorithm slot of preset `name` (neutral values + the preset's own), without `paper`."""
    if name not in PRESETS and name not in SFT_PRESETS:
        raise ConfigError(f"preset: unknown preset {name!r}; allowed: {', '.join(PRESETS)}, {', '.join(SFT_PRESETS)}")
    choices = {**NEUTRAL, **(PRESETS.get(name) or SFT_PRESETS[name])}
    choices.pop("paper")
    return choices


# ---------------------------------------------------------------------------------------------
@dataclass
class RunConfig:
    """Everything one run needs. Build with `RunConfig.from_preset("cpgd", lr=...)`.

    Defaults are the CPGD preset on the CPU toy world. Algorithm fields (the slots a preset sets) come
    first, then data/model, rollout, optimisation, and bookkeeping.
    """

    preset: str = "cpgd"
    """name of the preset the algorithm fields came from (recorded, validated against PRESETS)"""

    # --- advantage -------------------------------------------------------------------------
    advantage_estimator: str = "grpo"
    """grpo (group z-score, Bessel std) | dr_grpo / equal (R - group mean) | rloo | reinforce_pp |
    reinforce_pp_baseline (token-weighted global whitening) | none (A = R)"""
    std_eps: float = 1e-9
    """added to the group std in grpo: (R - mean) / (std + std_eps); MM-EUREKA 1e-9, verl 1e-6, TRL 1e-4"""
    whiten_advantages: bool = False
    """whiten any estimator over all valid tokens afterwards (MM-EUREKA code does this for all but grpo)"""
    adv_weight: str = "none"
    """CPGD weight omega(x) multiplied onto the advantage: none | clip_filter_like (min(cap, N / N_nonzero))"""
    adv_weight_cap: float = 3.0
    """cap c_omega of the clip-filter-like weight (MM-EUREKA --clip_filter_like_weight_clip_eps)"""

    # --- surrogate, drift, KL, aggregation -------------------------------------------------
    surrogate: str = "cpg"
    """pg | cpg (log-ratio clip) | ppo_clip | cispo (TRL absolute cap) | cispo_verl (1+eps form) | gspo | gspo_token |
    sapo (soft gate) | gmpo (geometric mean) | clip_cov | kl_cov (covariance-selected tokens) | dppo_tv (binary-TV
    trust region) | luspo (length-scaled gspo)"""
    eps_low: float = 0.2
    """lower clip width: ratio floor 1 - eps_low (log-ratio floor ln(1 - eps_low) for cpg); > 0, and
    eps_low >= 1 means no lower clip (floor 0, log-ratio floor -inf: losses.ratio_floor), as verl and TRL allow.
    gmpo reads it as the log-ratio bound -eps_low (there >= 1 is only a wide bound)"""
    eps_high: float = 0.2
    """upper clip width: ratio ceiling 1 + eps_high (DAPO clip-higher: 0.28; log-ratio bound eps_high for gmpo);
    > 0, a large value = no upper clip"""
    dual_clip: float | None = None
    """dual-clip constant c > 1 for A < 0 (loss capped at -c*A); None = off"""
    cispo_cap: float = 5.0
    """CISPO (TRL form) absolute cap on the detached IS weight: w = min(r, cispo_cap)"""
    sapo_tau_pos: float = 1.0
    """SAPO gate temperature for A > 0: loss -(4/tau) sigmoid(tau (r - 1)) A (paper, TRL, verl: 1.0)"""
    sapo_tau_neg: float = 1.05
    """SAPO gate temperature for A <= 0 (paper, TRL, verl: 1.05; larger = faster decay off-policy)"""
    clip_cov_ratio: float = 2e-4
    """Clip-Cov: share of the valid tokens (at least one) whose gradient is detached, drawn among the candidates
    (verl 2e-4); in (0, 1]"""
    clip_cov_lb: float = 1.0
    """Clip-Cov: candidates have Cov_t = (logp_t - mean logp)(A_t - mean A) > clip_cov_lb (verl 1.0)"""
    clip_cov_ub: float = 5.0
    """Clip-Cov: candidates have Cov_t < clip_cov_ub (verl 5.0); > clip_cov_lb"""
    kl_cov_ratio: float = 2e-4
    """KL-Cov: share of the valid tokens (top Cov_t, at least one) that get the |log-ratio| penalty (verl 2e-4); in (0, 1]"""
    kl_cov_coef: float = 0.1
    """KL-Cov: penalty weight beta on |logp - old_logp| of the selected tokens (verl `ppo_kl_coef` 0.1); >= 0"""
    dppo_delta: float = 0.2
    """DPPO binary-TV trust region: a token's gradient is masked when p - p_old > delta (A > 0) or < -delta (A < 0)
    (prime-rl 0.2); in (0, 1]"""
    drift_coef: float = 0.01
    """CPGD policy-drift weight alpha (0 = off)"""
    drift_clip: float = 2.0
    """CPGD drift gradient cap c: gradient coefficient min(r - 1, c)"""
    kl_coef: float = 0.0
    """reference-KL weight beta (0 = no reference model is loaded)"""
    kl_estimator: str = "k3"
    """reference-KL estimator k1 | k2 | k3 (Schulman)"""
    aggregation: str = "group-token-mean"
    """token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm | group-token-mean"""

    # --- train-inference mismatch correction (rho = pi_old / mu per token; algos/mismatch.py) --------------
    correction: str = "none"
    """none | tis (truncated IS weight min(rho, cap)) | icepop (weight rho inside [low, high], else masked) |
    opsm (DeepSeek-V3.2 off-policy sequence mask) | m2po (second-moment token mask)"""
    correction_level: str = "token"
    """token | sequence (tis, icepop: the weight of a response is w = prod_t rho_t)"""
    correction_cap: float = 2.0
    """TIS cap C on the detached weight"""
    correction_low: float = 0.5
    """IcePop lower bound alpha (tokens with rho < alpha are masked)"""
    correction_high: float = 2.0
    """IcePop upper bound beta (tokens with rho > beta are masked)"""
    opsm_delta: float = 0.1
    """OPSM threshold on a response's mean log(mu / pi_theta) (masked when A < 0 and the mean exceeds it)"""
    m2po_tau: float = 0.04
    """M2PO bound on the kept tokens' mean squared log-ratio (paper: 0.04)"""

    # --- filters and reward shaping --------------------------------------------------------
    online_filter: bool = False
    """MM-EUREKA online accuracy filter: keep groups with filter_lower <= mean accuracy <= filter_upper"""
    filter_lower: float = 0.1
    """online filter lower bound (inclusive)"""
    filter_upper: float = 0.9
    """online filter upper bound (inclusive)"""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: keep groups with 0 < #correct < K, resample until the batch is full"""
    skip_zero_variance: int = 0
    """after a problem's group scores the same accuracy on every response (all right or all wrong: no signal
    under a group baseline), skip that problem at its next N draws (0 = never skip); a deterministic form of
    GRESO's selective rollout (arXiv 2506.02177): saves rollouts the filters would throw away"""
    overlong_buffer: int = 0
    """DAPO soft overlong punishment buffer L_cache in tokens (0 = off)"""
    overlong_penalty: float = 1.0
    """scale of the soft overlong punishment (penalty in [-overlong_penalty, 0])"""
    mask_truncated: bool = False
    """DAPO overlong filtering: truncated responses get zero loss mask"""

    # --- process signal (PRM inside RL, process_adv.py) ----------------------------------------
    process_mode: str = "none"
    """none | step_advantage (A = A_out + process_weight * (step P(Yes) - group mean), per token) |
    shaped_reward (r + process_weight * prm_aggregation(step scores), then the estimator); needs prm_path"""
    process_weight: float = 0.5
    """weight w of the process term (0 gives back the outcome-only run)"""
    prm_aggregation: str = "min"
    """step scores -> one score for shaped_reward: min | last | product | average | max | sum_logprob |
    sum_logit | mean_odd (bestofn.AGGREGATIONS)"""

    # --- task, model, reward ---------------------------------------------------------------
    model: str = "toy"
    """'toy', 'toy-vl', or a local folder with a transformers model (never a hub id)"""
    task: str = "toyworld"
    """'toyworld' or 'mmk12'"""
    data_path: str | None = None
    """local MMK12 folder (parquet or MM-EUREKA jsonl); required when task='mmk12'"""
    train_subject: str = "math"
    """toy world: subject of the training problems (math | physics | chemistry | biology); MMK12 trains on
    every subject of data_path"""
    train_levels: tuple[int, ...] = ()
    """toy world: difficulty levels of the training problems (() = all). Level 0 is always and the top level
    never solved by the base policy, so their groups carry no signal (MM-EUREKA filtered its data by difficulty
    offline, the online filter does it per step)"""
    train_per_level: int = 400
    """toy world: training problems per level (a larger pool keeps long runs from revisiting the same ones)"""
    multimodal: bool = False
    """use the image variant of the toy world (needs model='toy-vl' or a VLM)"""
    prompt_template: str = "none"
    """system prompt: cpgd_7b (CPGD report Table 3) | mmeureka_32b | none (toy default: a 500-char system
    prompt would swamp a char-level toy model; use cpgd_7b for real models)"""
    format_reward: bool = True
    """add the 0/0.5 format reward to the accuracy reward in the advantage (MM-EUREKA code)"""
    mmeureka_compat: bool = False
    """reproduce the released reward code's quirks (see rewards.py)"""
    reward_timeout: float = 5.0
    """seconds allowed per reward call; a timeout scores 0"""
    max_verifier_error_frac: float = 0.5
    """stop the run (train.VerifierFailure, before training on that step; the last checkpoint is kept) when the
    verifier raised on more than this share of one step's scored answers (reward/errors; such answers score 0).
    Time-outs do not count: hard answers time out and score 0 by design (reward/timeouts). 0 = stop at the first
    error, 1 = never stop"""
    trust_remote_code: bool = False
    """passed to transformers loaders; off unless you trust the model folder"""
    prm_path: str | None = None
    """local folder of a process reward model (`eureka-kit prm train`); required when process_mode != none"""

    # --- rollout ---------------------------------------------------------------------------
    rollout_backend: str = "hf"
    """hf (transformers generate) | vllm (offline engine, colocated)"""
    group_size: int = 8
    """K responses sampled per prompt"""
    rollout_batch_size: int = 16
    """prompts per rollout (each gives group_size responses)"""
    train_batch_size: int = 32
    """responses per optimizer step (OpenRLHF semantics); rollout responses / this = steps per rollout"""
    micro_batch_size: int = 32
    """responses per forward/backward (gradient accumulation up to train_batch_size)"""
    update_epochs: int = 1
    """passes over each rollout (>1 makes the ratio move away from 1 for real)"""
    temperature: float = 1.0
    """sampling temperature"""
    top_p: float = 1.0
    """nucleus sampling (the learner scores the untruncated distribution: < 1 is a train-inference mismatch)"""
    top_k: int = 0
    """top-k sampling, 0 = off (scored untruncated by the learner, like top_p)"""
    learner_temperature: float | None = None
    """temperature of the learner's log-probs; None = the sampling temperature (matched). Another value injects
    the mismatch of a learner that scores at a temperature the sampler did not use"""
    sampler_dtype: str = "same"
    """same | bfloat16 | float16: roll out from a copy of the policy in this precision (injected mismatch)"""
    sampler_lag: int = 0
    """roll out with the weights of this many RL steps ago (a stale sampler, the asynchronous case); 0 = current"""
    max_len: int = 64
    """max response tokens: generation cap, L of seq-mean-token-sum-norm, L_max of overlong shaping"""
    max_prompt_len: int = 512
    """prompts longer than this are an error"""

    # --- optimisation ----------------------------------------------------------------------
    lr: float = 1e-4
    """learning rate (CPGD on 7B: 1e-6)"""
    lr_schedule: str = "constant"
    """constant | cosine_with_min_lr (min = 0.1 lr) | linear"""
    warmup_steps: int = 0
    """linear warm-up optimizer steps"""
    weight_decay: float = 0.0
    """AdamW weight decay (CPGD: 1e-2)"""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas (CPGD: 0.9, 0.95)"""
    grad_clip: float = 1.0
    """max global grad norm"""
    num_steps: int = 50
    """rollouts (RL steps) to run"""
    freeze_vision: bool = True
    """freeze the vision tower (MM-EUREKA --freeze_prefix visual)"""
    bf16: bool = False
    """bf16 autocast on GPU (ignored on CPU)"""
    gradient_checkpointing: bool = False
    """recompute activations in backward"""
    logprob_chunk_size: int = 1024
    """rows per chunk in chunked log-probs (memory vs speed)"""
    zero_stage: int = 0
    """learner: 0 = plain torch (data parallel under torchrun) | 2 | 3 = DeepSpeed ZeRO stage (optimizer states
    and gradients partitioned over the processes; 3: parameters too). Needs deepspeed; see learner.py"""
    deepspeed_overrides: dict[str, Any] = field(default_factory=dict)
    """entries merged over the DeepSpeed config train() builds (learner.deepspeed_config), e.g.
    {"zero_optimization": {"stage3_param_persistence_threshold": 100000}}"""

    # --- stages and supervised fine-tuning ------------------------------------------------
    stages: tuple[dict[str, Any], ...] = ()
    """training stages run in order in one run directory, each a dict of overrides with its own num_steps
    (their sum = num_steps), e.g. ({"num_steps": 30}, {"num_steps": 20, "kl_coef": 1e-3, "train_subject":
    "physics"}); a stage may change the algorithm slots and the data (STAGE_FIELDS); () = one stage"""
    sft_target: str = "cot"
    """SFT target (sft.py): cot (the worked solution <think>steps</think><answer>n</answer>) | answer (the
    answer alone, <think>answer</think><answer>n</answer>, same format reward)"""

    # --- bookkeeping -----------------------------------------------------------------------
    seed: int = 0
    """seed of data order, sampling and init"""
    run_dir: str | None = None
    """where the run directory goes (None = runs/<preset>-seed<seed>, see `run_path`)"""
    save_every: int = 0
    """checkpoint every N steps (0 = only at the end)"""
    resume: bool = False
    """continue from the latest checkpoint in run_dir (same config); metrics after it are dropped and redone"""
    max_bad_steps: int = 5
    """stop after this many consecutive steps whose every update had a NaN/Inf loss or gradient"""
    sentinels: dict[str, float] = field(default_factory=dict)
    """overrides of the collapse-sentinel thresholds (algos.diagnostics.SENTINEL_DEFAULTS: ratio_max, entropy_slope,
    length_drop, format_gap, window) for warnings.jsonl and captures; {} = the defaults"""
    max_captures: int = 3
    """pre-collapse captures to keep (engine/capture.py): at a step where a collapse sentinel fires (ratio tail,
    entropy slope, length collapse, NaN/Inf steps) its whole batch and the policy weights at the start and end of
    the step go to <run>/captures/step_XXXXXX/, at most this many per run; 0 = off. Single-process runs only"""
    capture_max_bytes: int = 1 << 30
    """no capture (capture/skipped_bytes logged instead) when the policy's weights exceed this many bytes: while
    captures are left, the weights are copied to CPU before every step"""
    eval_every: int = 0
    """evaluate every N steps (0 = only at the end)"""

    # ------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        if isinstance(self.adam_betas, list):
            self.adam_betas = tuple(self.adam_betas)
        if isinstance(self.stages, list):  # from JSON
            self.stages = tuple(self.stages)
        if isinstance(self.train_levels, list):
            self.train_levels = tuple(self.train_levels)
        self.validate()

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> RunConfig:
        """The preset's algorithm choices, then `overrides` (any field). Unknown fields raise."""
        unknown = sorted(set(overrides) - set(field_names()))
        if unknown:
            raise ConfigError(f"unknown RunConfig field(s) {unknown}; allowed: {', '.join(field_names())}")
        return cls(**{**preset_choices(preset), "preset": preset, **overrides})

    def stage_starts(self) -> list[int]:
        """First step of each stage ([0] without stages)."""
        starts = [0]
        for stage in self.stages[:-1]:
            starts.append(starts[-1] + stage["num_steps"])
        return starts

    def stage_at(self, step: int) -> int:
        """Index of the stage that `step` belongs to."""
        return sum(start <= step for start in self.stage_starts()) - 1

    def stage_config(self, index: int) -> RunConfig:
        """The config stage `index` trains with: this one plus the stage's overrides (num_steps stays the
        run's total, so step numbering and the learning-rate schedule run on across stages)."""
        if not self.stages:
            return self
        overrides = {k: v for k, v in self.stages[index].items() if k != "num_steps"}
        return dataclasses.replace(self, stages=(), **overrides)

    def run_path(self) -> Path:
        """The run directory: `run_dir`, or runs/<preset>-seed<seed> when it is None."""
        return Path(self.run_dir or f"runs/{self.preset}-seed{self.seed}")

    def algorithm(self) -> dict[str, Any]:
        """The algorithm slots of this config (what `losses.policy_loss` takes as overrides)."""
        return {name: getattr(self, name) for name in ALGORITHM_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise ConfigError(f"unknown RunConfig field(s) {unknown}")
        return cls(**data)

    def validate(self) -> None:
        """Raise ConfigError naming the field and its allowed values."""
        _choice("preset", self.preset, (*PRESETS, *SFT_PRESETS))
        _choice("sft_target", self.sft_target, SFT_TARGETS)
        _choice("advantage_estimator", self.advantage_estimator, ESTIMATORS)
        _choice("adv_weight", self.adv_weight, ADV_WEIGHTS)
        _choice("surrogate", self.surrogate, SURROGATES)
        _choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _choice("aggregation", self.aggregation, AGGREGATIONS)
        _choice("rollout_backend", self.rollout_backend, ROLLOUT_BACKENDS)
        _choice("prompt_template", self.prompt_template, PROMPT_TEMPLATES)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("correction", self.correction, CORRECTIONS)
        _choice("correction_level", self.correction_level, CORRECTION_LEVELS)
        _choice("sampler_dtype", self.sampler_dtype, SAMPLER_DTYPES)
        if not 0 < self.correction_low <= 1 <= self.correction_high:
            raise ConfigError(f"correction_low/correction_high: need 0 < low <= 1 <= high, "
                              f"got {self.correction_low!r}, {self.correction_high!r}")
        for name in ("correction_cap", "opsm_delta", "m2po_tau"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)!r}")
        if self.learner_temperature is not None and not self.learner_temperature > 0:
            raise ConfigError(f"learner_temperature: must be None or > 0, got {self.learner_temperature!r}")
        for name in ("top_k", "sampler_lag"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name}: must be an integer >= 0, got {value!r}")
        if self.rollout_backend == "vllm" and (self.sampler_dtype != "same" or self.sampler_lag or self.top_k):
            raise ConfigError("sampler_dtype/sampler_lag/top_k: injected mismatch runs on the hf backend (vLLM is "
                              "its own mismatch: compare rollout_backend='vllm' with 'hf' instead)")
        _choice("task", self.task, ("toyworld", "mmk12"))
        _choice("zero_stage", self.zero_stage, (0, 2, 3))
        if self.train_per_level < 1:
            raise ConfigError(f"train_per_level: need at least 1 problem per level, got {self.train_per_level}")
        bad = [lv for lv in self.train_levels if not (isinstance(lv, int) and 0 <= lv < TOY_WORLD_LEVELS)]
        if bad:
            raise ConfigError(f"train_levels: unknown level(s) {bad}; the toy world has levels 0..{TOY_WORLD_LEVELS - 1}")
        self._validate_captures()
        if not isinstance(self.deepspeed_overrides, dict):
            raise ConfigError(f"deepspeed_overrides: expected a dict of DeepSpeed config entries, "
                              f"got {self.deepspeed_overrides!r}")
        if self.zero_stage == 3 and any(dict(st).get("kl_coef", self.kl_coef) > 0 for st in self.stages[1:]):
            # the reference is a copy of the policy made before DeepSpeed partitions it (learner.py)
            raise ConfigError("stages: a reference KL that starts after the first stage is not supported with "
                              "zero_stage=3; use zero_stage=2")
        _choice("process_mode", self.process_mode, PROCESS_MODES)
        _choice("prm_aggregation", self.prm_aggregation, PRM_AGGREGATIONS)
        for name in ("eps_low", "eps_high", "std_eps", "adv_weight_cap", "cispo_cap", "drift_clip",
                     "temperature", "reward_timeout", "sapo_tau_pos", "sapo_tau_neg"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)!r}")
        for name in ("clip_cov_ratio", "kl_cov_ratio", "dppo_delta"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name}: must be in (0, 1], got {getattr(self, name)!r}")
        if not self.clip_cov_lb < self.clip_cov_ub:
            raise ConfigError(f"clip_cov_lb/clip_cov_ub: need lb < ub, got {self.clip_cov_lb!r}, {self.clip_cov_ub!r}")
        if self.dual_clip is not None and not self.dual_clip > 1 + self.eps_high:
            raise ConfigError(f"dual_clip: must be None or > 1 + eps_high = {1 + self.eps_high}, "
                              f"got {self.dual_clip!r}")
        # lr 0 is the null run: the policy never moves, so every ratio pi_old / mu that is not 1 is mismatch
        for name in ("drift_coef", "kl_coef", "weight_decay", "overlong_penalty", "process_weight", "lr",
                     "kl_cov_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        if (not isinstance(self.skip_zero_variance, int) or isinstance(self.skip_zero_variance, bool)
                or self.skip_zero_variance < 0):
            raise ConfigError(f"skip_zero_variance: must be an integer >= 0 (draws to skip), "
                              f"got {self.skip_zero_variance!r}")
        if not 0 <= self.filter_lower <= self.filter_upper <= 1:
            raise ConfigError(f"filter_lower/filter_upper: need 0 <= lower <= upper <= 1, "
                              f"got {self.filter_lower!r}, {self.filter_upper!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: must be in (0, 1], got {self.top_p!r}")
        if not 0 <= self.max_verifier_error_frac <= 1:
            raise ConfigError(f"max_verifier_error_frac: must be a share in [0, 1] (1 = never stop), "
                              f"got {self.max_verifier_error_frac!r}")
        for name in ("group_size", "rollout_batch_size", "train_batch_size", "micro_batch_size",
                     "update_epochs", "max_len", "max_prompt_len", "num_steps", "logprob_chunk_size", "max_bad_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        needs_group = (self.advantage_estimator in GROUP_ESTIMATORS or self.adv_weight == "clip_filter_like"
                       or self.online_filter or self.dynamic_sampling)
        if needs_group and self.group_size < 2:
            raise ConfigError(f"group_size: must be >= 2 for advantage_estimator="
                              f"{self.advantage_estimator!r} (a group baseline needs K >= 2), got {self.group_size}")
        if self.aggregation == "group-token-mean" and (self.train_batch_size % self.group_size
                                                       or self.micro_batch_size % self.group_size):
            raise ConfigError(f"train_batch_size/micro_batch_size: must be multiples of group_size={self.group_size} "
                              f"for aggregation='group-token-mean', got {self.train_batch_size}/{self.micro_batch_size}")
        if self.overlong_buffer < 0 or self.overlong_buffer >= self.max_len:
            raise ConfigError(f"overlong_buffer: must be in [0, max_len={self.max_len}), got {self.overlong_buffer!r}")
        if self.task == "mmk12" and not self.data_path:
            raise ConfigError("data_path: required when task='mmk12' (a local folder; nothing is downloaded)")
        self._validate_stages()

    def _validate_captures(self) -> None:
        if not isinstance(self.sentinels, dict):
            raise ConfigError(f"sentinels: expected a dict of threshold overrides, got {self.sentinels!r}")
        for key, value in self.sentinels.items():
            if key not in SENTINEL_KEYS:
                raise ConfigError(f"sentinels: unknown threshold {key!r}; allowed: {', '.join(SENTINEL_KEYS)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"sentinels: {key} must be a number, got {value!r}")
        for name in ("max_captures", "capture_max_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name}: must be an integer >= 0, got {value!r}")

    def _validate_stages(self) -> None:
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, dict):
                raise ConfigError(f"stages[{i}]: must be a dict of RunConfig overrides, got {stage!r}")
            fixed = sorted(set(stage) - set(STAGE_FIELDS))
            if fixed:
                raise ConfigError(f"stages[{i}]: {fixed} cannot change between stages; a stage may set "
                                  f"{', '.join(STAGE_FIELDS)}")
            steps = stage.get("num_steps")
            if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
                raise ConfigError(f"stages[{i}]: needs its own num_steps (a positive integer), got {steps!r}")
            try:
                self.stage_config(i)
            except ConfigError as err:
                raise ConfigError(f"stages[{i}]: {err}") from None
        total = sum(stage["num_steps"] for stage in self.stages)
        if self.stages and total != self.num_steps:
            raise ConfigError(f"num_steps: must equal the sum of the stages' num_steps "
                              f"({' + '.join(str(s['num_steps']) for s in self.stages)} = {total}), got "
                              f"{self.num_steps}; set both")


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(RunConfig))


def field_docs() -> dict[str, str]:
    """Field name -> its docstring (parsed from the source, as tyro does), for --help and the docs."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(RunConfig))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: unknown value {value!r}; allowed: {', '.join(map(str, allowed))}")


__all__ = ["RunConfig", "PRESETS", "SFT_PRESETS", "ConfigError", "preset_choices", "field_names", "field_docs",
           "ALGORITHM_FIELDS", "STAGE_FIELDS", "ESTIMATORS", "SURROGATES", "AGGREGATIONS", "KL_ESTIMATORS"]
