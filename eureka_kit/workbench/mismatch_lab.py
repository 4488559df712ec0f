"""The mismatch lab: how far the sampler's mu is from the learner's pi_old, and what the corrections do about it.

    lab = run_lab("quick", out="reports/mismatch")   # -> the judged rows (a dict, also <out>/mismatch.json)

Two experiments on the toy world, every comparison per seed through the evidence engine (`evidence.judge`):

* Null runs (lr 0): the policy never moves, so pi_theta = pi_old and every rho = pi_old / mu that is not 1 is
  mismatch. One run per injected mismatch (INJECTIONS: bf16 sampler, top-p / top-k scored untruncated, a learner
  temperature the sampler did not use) and the fp32 control; effect = injected - control, per seed.
* RL under a stale sampler (`sampler_lag`, the asynchronous case): GRPO / CPGD with no correction, TIS and IcePop
  (ARMS), trained `rl_steps` steps; test accuracy and the raw mismatch tails. Effects: corrected - uncorrected
  (accuracy) and on-time - stale (accuracy).

Cells run in worker processes, are cached by a key of everything they depend on, and resume (as findings_run).
Settings were chosen on seed 100 (never a verdict seed): reports/LOG.md "mismatch lab calibration".
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eureka_kit.version import __version__
from eureka_kit.workbench import evidence
from eureka_kit.workbench.findings import PROFILES as FINDINGS_PROFILES
from eureka_kit.workbench.findings import RL_SETTINGS
from eureka_kit.workbench.findings_run import measure, run_cells

# Injected mismatches of the null runs (RunConfig overrides of the sampler or the learner's scoring).
INJECTIONS: dict[str, dict[str, Any]] = {
    "fp32 (control)": {},
    "bf16 sampler": dict(sampler_dtype="bfloat16"),
    "top-p 0.9": dict(top_p=0.9),
    "top-k 10": dict(top_k=10),
    "learner T 0.9": dict(learner_temperature=0.9),
}
CONTROL_INJECTION = "fp32 (control)"
NULL_METRICS = ("mismatch/kl_k3", "mismatch/abs_mean", "mismatch/rho_out_frac", "mismatch/rho_q01",
                "mismatch/rho_q50", "mismatch/rho_q99", "mismatch/seq_ess")
CORRECTIONS = ("none", "tis", "icepop")


@dataclass(frozen=True)
class LabArm:
    """One RL arm: a preset, a correction of mu and the sampler's lag in steps."""

    preset: str
    correction: str
    lag: int

    @property
    def name(self) -> str:
        return f"{self.preset}/{self.correction}/lag{self.lag}"


@dataclass(frozen=True)
class LabProfile:
    name: str
    seeds: tuple[int, ...]
    null_steps: int
    rl_steps: int
    presets: tuple[str, ...]
    lags: tuple[int, ...]  # the mismatch doses: sampler lags in RL steps (each with every correction)
    eval_profile: str  # the findings profile whose evaluation sizes the RL cells use

    def arms(self) -> list[LabArm]:
        return [LabArm(p, c, lag) for p in self.presets for lag in self.lags for c in CORRECTIONS] + \
               [LabArm(p, "none", 0) for p in self.presets]


PROFILES = {
    # smoke: the notebook's test and a first look (2 seeds, 2 RL steps: wide intervals, no calibrated dose)
    "smoke": LabProfile("smoke", seeds=(0, 1), null_steps=1, rl_steps=2, presets=("grpo",), lags=(1,),
                        eval_profile="quick"),
    "quick": LabProfile("quick", seeds=(0, 1, 2), null_steps=3, rl_steps=24, presets=("grpo",), lags=(4,),
                        eval_profile="quick"),
    # the dose-response: three lags, GRPO and CPGD, 5 seeds (~4,500 cell-seconds, ~40 min on 2 cores; by hand)
    "full": LabProfile("full", seeds=(0, 1, 2, 3, 4), null_steps=6, rl_steps=100, presets=("grpo", "cpgd"),
                       lags=(2, 4, 8), eval_profile="full"),
}


def _key(kind: str, spec: dict[str, Any]) -> str:
    blob = json.dumps(dict(kind=kind, rl=RL_SETTINGS, version=__version__, **spec), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def null_cell(injection: str, seed: int, steps: int, work: str) -> dict[str, Any]:
    """Mean raw mismatch metrics over `steps` lr-0 steps of `injection` (one seed)."""
    from eureka_kit.config import RunConfig
    from eureka_kit.engine.base_policy import load_policy
    from eureka_kit.engine.loop import train

    policy, tok = load_policy("toy", seed=0)
    run_dir = Path(work) / "null" / injection.replace(" ", "_") / f"seed{seed}"
    cfg = RunConfig.from_preset("grpo", seed=seed, run_dir=str(run_dir), num_steps=steps, **{**RL_SETTINGS, "lr": 0.0},
                                **INJECTIONS[injection])
    hist = train(cfg, policy=policy, processor=tok, progress=False).dir.metrics()
    return {m: float(hist[m].mean()) for m in NULL_METRICS} | {"run_dir": str(run_dir)}


def rl_cell(arm: LabArm, seed: int, profile: LabProfile, work: str) -> dict[str, Any]:
    """Train `arm` for `profile.rl_steps` steps (one seed); test accuracy and the step means of the raw tails."""
    from eureka_kit.config import RunConfig
    from eureka_kit.engine.base_policy import load_policy
    from eureka_kit.engine.loop import train

    policy, tok = load_policy("toy", seed=0)
    run_dir = Path(work) / "rl" / arm.name.replace("/", "_") / f"seed{seed}"
    cfg = RunConfig.from_preset(arm.preset, seed=seed, run_dir=str(run_dir), num_steps=profile.rl_steps,
                                correction=arm.correction, sampler_lag=arm.lag, **RL_SETTINGS)
    run = train(cfg, policy=copy.deepcopy(policy), processor=tok, progress=False)
    hist = run.dir.metrics()
    out = measure(run.policy, tok, cfg, seed, FINDINGS_PROFILES[profile.eval_profile], ood=False)
    means = {k: float(hist[k].mean()) for k in ("mismatch/kl_k3", "mismatch/rho_out_frac", "policy/ratio_tail_frac",
                                                 "reward/accuracy") if k in hist}
    if "correction/masked_frac" in hist:
        means["correction/masked_frac"] = float(hist["correction/masked_frac"].mean())
    return dict(math_accuracy=out["math_accuracy"], run_dir=str(run_dir), **means)


def _run_cell(kind: str, name: str, seed: int, profile: LabProfile, out: str, work: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()
    if kind == "null":
        cell = null_cell(name, seed, profile.null_steps, work)
    else:
        cell = rl_cell(next(a for a in profile.arms() if a.name == name), seed, profile, work)
    cell.update(kind=kind, name=name, seed=seed, key=_cell_key(kind, name, seed, profile),
                wall_s=time.perf_counter() - started)
    path = _cell_path(out, kind, name, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(cell))
    os.replace(path.with_suffix(".tmp"), path)
    return cell


def _cell_key(kind: str, name: str, seed: int, profile: LabProfile) -> str:
    if kind == "null":
        return _key("null", dict(injection=INJECTIONS[name], seed=seed, steps=profile.null_steps))
    arm = next(a for a in profile.arms() if a.name == name)
    return _key("rl", dict(arm=asdict(arm), seed=seed, steps=profile.rl_steps,
                           eval=asdict(FINDINGS_PROFILES[profile.eval_profile])))


def _cell_path(out: str | Path, kind: str, name: str, seed: int) -> Path:
    return Path(out) / "cells" / kind / name.replace(" ", "_").replace("/", "_") / f"seed{seed}.json"


def cells_of(profile: LabProfile) -> list[tuple[str, str, int]]:
    """(kind, name, seed) of every cell, the costly RL ones first."""
    rl = [("rl", a.name, s) for a in profile.arms() for s in profile.seeds]
    return rl + [("null", i, s) for i in INJECTIONS for s in profile.seeds]


def run_lab(profile: str | LabProfile = "quick", out: str | Path = "reports/mismatch", *,
            work: str | Path = "runs/mismatch", workers: int = 2, progress: bool = True) -> dict[str, Any]:
    """Run every missing cell of `profile`, judge, write `<out>/mismatch.json`; returns what it wrote."""
    from eureka_kit.engine.base_policy import build_base_policy

    prof = PROFILES[profile] if isinstance(profile, str) else profile
    out, work = Path(out), Path(work)
    started = time.perf_counter()
    build_base_policy(seed=0)  # built once here, not raced by the workers
    cells: dict[tuple[str, str, int], dict] = {}
    for kind, name, seed in cells_of(prof):
        path = _cell_path(out, kind, name, seed)
        if path.exists():
            cell = json.loads(path.read_text())
            if cell.get("key") == _cell_key(kind, name, seed, prof):
                cells[(kind, name, seed)] = cell
    todo = [c for c in cells_of(prof) if c not in cells]
    run_cells(_run_cell, todo, (prof, str(out), str(work)), cells, workers=workers,
              desc=f"mismatch lab ({prof.name})", progress=progress)
    result = summarize(cells, prof)
    result["provenance"] = dict(version=__version__, elapsed_s=round(time.perf_counter() - started, 1),
                                cells_run=len(todo), workers=workers,
                                cells_wall_s=round(sum(c.get("wall_s", 0.0) for c in cells.values()), 1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "mismatch.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def _per_seed(cells, kind: str, name: str, metric: str, seeds) -> dict[int, float]:
    return {s: cells[(kind, name, s)][metric] for s in seeds if (kind, name, s) in cells
            and metric in cells[(kind, name, s)]}


def _row(comparison: str, better: dict[int, float], worse: dict[int, float], claim: str, metric: str,
         scale: float) -> dict[str, Any]:
    """A judged row (`evidence.judged_row`) of the per-seed effect scale * (better - worse), seeds paired."""
    seeds = sorted(set(better) & set(worse))
    return evidence.judged_row(comparison, claim, metric, {s: scale * (better[s] - worse[s]) for s in seeds},
                               reason="fewer than 2 paired seeds")


def summarize(cells: dict[tuple[str, str, int], dict], prof: LabProfile) -> dict[str, Any]:
    """mismatch.json's content: per-arm per-seed values and the judged comparisons."""
    seeds = prof.seeds
    control = {m: _per_seed(cells, "null", CONTROL_INJECTION, m, seeds) for m in NULL_METRICS}
    null_rows = [_row(f"{name} vs fp32", _per_seed(cells, "null", name, "mismatch/kl_k3", seeds),
                      control["mismatch/kl_k3"], f"{name} makes mu differ from pi_old with no learning (lr 0)",
                      "KL(mu || pi_old) k3, x1e3", 1e3)
                 for name in INJECTIONS if name != CONTROL_INJECTION]
    rl_rows = []
    for preset in prof.presets:
        on_time = _per_seed(cells, "rl", LabArm(preset, "none", 0).name, "math_accuracy", seeds)
        for lag in prof.lags:
            plain = _per_seed(cells, "rl", LabArm(preset, "none", lag).name, "math_accuracy", seeds)
            for corr in CORRECTIONS[1:]:
                rl_rows.append(_row(f"{preset}, lag {lag}: {corr} vs no correction",
                                    _per_seed(cells, "rl", LabArm(preset, corr, lag).name, "math_accuracy", seeds),
                                    plain, f"{corr.upper()} recovers accuracy under a sampler {lag} steps stale",
                                    "math test accuracy, pp", 100.0))
            rl_rows.append(_row(f"{preset}, lag {lag}: on-time vs stale sampler", on_time, plain,
                                f"A sampler {lag} steps stale costs accuracy", "math test accuracy, pp", 100.0))
    null_values = {name: {m: _per_seed(cells, "null", name, m, seeds) for m in NULL_METRICS} for name in INJECTIONS}
    rl_values = {a.name: {m: _per_seed(cells, "rl", a.name, m, seeds)
                          for m in ("math_accuracy", "mismatch/kl_k3", "mismatch/rho_out_frac",
                                    "policy/ratio_tail_frac", "correction/masked_frac")}
                 for a in prof.arms()}
    return dict(profile=asdict(prof), null=null_values, rl=rl_values, judged_null=null_rows, judged_rl=rl_rows,
                run_dirs={f"{k}:{n}:{s}": c.get("run_dir") for (k, n, s), c in cells.items()})
