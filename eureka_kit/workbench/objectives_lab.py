"""The objectives lab: CPGD against the post-CPGD objectives under off-policy pressure, and on one captured batch.

    lab = run_lab("quick", out="reports/objectives")   # -> what it wrote to <out>/objectives.json

Two views of the same setting, the stability finding's pressure (findings.RL_SETTINGS at dose 8: 4 minibatches x 2
epochs per rollout), on the toy world:

* Trained arms (ARMS: cpgd, grpo, sapo, gmpo, cispo, gspo), one run per (arm, seed): test accuracy and the ratio tail
  share (tokens with |log r| > log 2, averaged over steps and update epochs). Every arm is compared with CPGD per
  seed through the evidence engine (`evidence.judge`): mean effect, 95% CI, verdict.
* The same-batch comparison (`same_batch.compare_capture`) of all six objectives on one captured step: the first
  capture of CAPTURE_ARM at the profile's first seed (else of the first arm with one there), with the weights at
  the start of the step (ratio 1: the objectives differ only in their weighting) and at its end (the step's drift).
  quick and full runs capture where the default ratio-tail sentinel fires (a token ratio above 10: GRPO's did at
  steps 6 and 11 on seeds 100 and 101); smoke, too short for that, captures its first step (`capture_sentinels`
  ratio_max 1: any off-policy step), a check of the mechanics. One batch of one seed: descriptive, no verdict.

Cells run in worker processes, are cached by a key of everything they depend on, and resume (as findings_run).
Settings were chosen on seeds 100+ (never a verdict seed): reports/LOG.md "objectives lab calibration".
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
from eureka_kit.workbench.findings import DOSES, PRESSURE, RL_SETTINGS, Profile
from eureka_kit.workbench.findings import PROFILES as FINDINGS_PROFILES
from eureka_kit.workbench.findings_run import measure, run_cells

ARMS = ("cpgd", "grpo", "sapo", "gmpo", "cispo", "gspo")
REFERENCE = "cpgd"
CAPTURE_ARM = "grpo"
CELL_METRICS = ("math_accuracy", "ratio_tail_share", "ratio_max_median", "clipfrac", "train_accuracy")


@dataclass(frozen=True)
class LabProfile:
    name: str
    seeds: tuple[int, ...]
    steps: int
    eval_profile: str  # the findings profile whose evaluation sizes the cells use ("smoke": 2 problems per level)
    capture_sentinels: tuple[tuple[str, float], ...] = ()  # RunConfig.sentinels of the runs; () = the defaults


PROFILES = {
    # smoke: the notebook's test and a first look (2 seeds, 2 steps, a tiny evaluation: wide intervals)
    "smoke": LabProfile("smoke", seeds=(0, 1), steps=2, eval_profile="smoke", capture_sentinels=(("ratio_max", 1.0),)),
    "quick": LabProfile("quick", seeds=(0, 1, 2), steps=24, eval_profile="quick"),
    "full": LabProfile("full", seeds=(0, 1, 2, 3, 4), steps=100, eval_profile="full"),
}
EVAL_PROFILES = {**FINDINGS_PROFILES,
                 "smoke": Profile("smoke", seeds=(0, 1), num_steps=2, doses=(PRESSURE,), eval_per_level=2,
                                  eval_samples=2)}


def pressure_settings() -> dict[str, Any]:
    """RL_SETTINGS at the pressure dose: minibatches of train_batch_size responses, update_epochs passes."""
    minibatches, epochs = DOSES[PRESSURE]
    batch = RL_SETTINGS["rollout_batch_size"] * RL_SETTINGS["group_size"]
    return dict(RL_SETTINGS, train_batch_size=batch // minibatches, micro_batch_size=batch // minibatches,
                update_epochs=epochs)


def _cell_key(arm: str, seed: int, prof: LabProfile) -> str:
    spec = dict(arm=arm, seed=seed, steps=prof.steps, settings=pressure_settings(), sentinels=prof.capture_sentinels,
                eval=asdict(EVAL_PROFILES[prof.eval_profile]), version=__version__)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cell_path(out: str | Path, arm: str, seed: int) -> Path:
    return Path(out) / "cells" / arm / f"seed{seed}.json"


def run_cell(arm: str, seed: int, prof: LabProfile, out: str, work: str, threads: int = 1) -> dict[str, Any]:
    """Train `arm` at the pressure dose for `prof.steps` steps (one seed), measure it, write its cell file."""
    import torch

    from eureka_kit.config import RunConfig
    from eureka_kit.engine.base_policy import load_policy
    from eureka_kit.engine.loop import train

    torch.set_num_threads(threads)
    started = time.perf_counter()
    policy, tok = load_policy("toy", seed=0)  # one base for every seed: the seeds vary data, sampling, training
    run_dir = Path(work) / prof.name / arm / f"seed{seed}"
    cfg = RunConfig.from_preset(arm, seed=seed, run_dir=str(run_dir), num_steps=prof.steps,
                                sentinels=dict(prof.capture_sentinels), max_captures=1, **pressure_settings())
    run = train(cfg, policy=copy.deepcopy(policy), processor=tok, progress=False)
    hist = run.dir.metrics()
    cell = measure(run.policy, tok, cfg, seed, EVAL_PROFILES[prof.eval_profile], ood=False)
    cell.update(arm=arm, seed=seed, key=_cell_key(arm, seed, prof), run_dir=str(run_dir),
                ratio_tail_share=float(hist["policy/ratio_tail_frac"].mean()),
                ratio_max_median=float(hist["policy/ratio_max"].median()),
                clipfrac=float(hist["policy/clipfrac"].mean()), train_accuracy=float(hist["reward/accuracy"].mean()),
                captures=[str(p) for p in run.dir.captures()], wall_s=time.perf_counter() - started)
    path = _cell_path(out, arm, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(cell))
    os.replace(path.with_suffix(".tmp"), path)
    return cell


def cells_of(prof: LabProfile) -> list[tuple[str, int]]:
    return [(a, s) for a in ARMS for s in prof.seeds]


def run_lab(profile: str | LabProfile = "quick", out: str | Path = "reports/objectives", *,
            work: str | Path = "runs/objectives", workers: int = 2, progress: bool = True) -> dict[str, Any]:
    """Run every missing cell of `profile`, judge, compare the objectives on the captured batch, write
    `<out>/objectives.json`; returns what it wrote."""
    from eureka_kit.engine.base_policy import build_base_policy

    prof = PROFILES[profile] if isinstance(profile, str) else profile
    out, work = Path(out), Path(work)
    started = time.perf_counter()
    build_base_policy(seed=0)  # built once here, not raced by the workers
    cells: dict[tuple[str, int], dict] = {}
    for arm, seed in cells_of(prof):
        path = _cell_path(out, arm, seed)
        if path.exists():
            cell = json.loads(path.read_text())
            if cell.get("key") == _cell_key(arm, seed, prof) and all(Path(c).exists() for c in cell["captures"]):
                cells[(arm, seed)] = cell
    todo = [c for c in cells_of(prof) if c not in cells]
    run_cells(run_cell, todo, (prof, str(out), str(work)), cells, workers=workers,
              desc=f"objectives lab ({prof.name})", progress=progress)
    result = summarize(cells, prof)
    result["same_batch"] = same_batch_summary(cells, prof)
    result["provenance"] = dict(version=__version__, elapsed_s=round(time.perf_counter() - started, 1),
                                cells_run=len(todo), workers=workers,
                                cells_wall_s=round(sum(c.get("wall_s", 0.0) for c in cells.values()), 1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "objectives.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def summarize(cells: dict[tuple[str, int], dict], prof: LabProfile) -> dict[str, Any]:
    """objectives.json's content (less the same-batch part): per-arm per-seed values and the judged rows."""
    values = {arm: {m: {s: cells[(arm, s)][m] for s in prof.seeds if (arm, s) in cells} for m in CELL_METRICS}
              for arm in ARMS}
    ref = values[REFERENCE]
    judged = []
    for arm in ARMS[1:]:
        both = [s for s in prof.seeds if s in values[arm]["math_accuracy"] and s in ref["math_accuracy"]]
        judged.append(evidence.judged_row(f"{arm} vs {REFERENCE}: ratio tail", f"{arm} keeps a smaller ratio tail share than CPGD",
                           "ratio tail share, pp (CPGD minus arm)",
                           {s: 100 * (ref["ratio_tail_share"][s] - values[arm]["ratio_tail_share"][s]) for s in both}))
        judged.append(evidence.judged_row(f"{arm} vs {REFERENCE}: accuracy", f"{arm} reaches a higher math test accuracy than CPGD",
                           "math test accuracy, pp (arm minus CPGD)",
                           {s: 100 * (values[arm]["math_accuracy"][s] - ref["math_accuracy"][s]) for s in both}))
    return dict(profile=asdict(prof), settings=pressure_settings(), capture_sentinels=dict(prof.capture_sentinels),
                values=values, judged=judged,
                run_dirs={f"{a}:{s}": c.get("run_dir") for (a, s), c in cells.items()})


def pick_capture(cells: dict[tuple[str, int], dict], prof: LabProfile) -> tuple[str, int, str] | None:
    """(arm, seed, capture folder) the same-batch comparison runs on: CAPTURE_ARM's first capture at the first seed,
    else the first arm (in ARMS order) with one at that seed; None when no sentinel fired there."""
    seed = prof.seeds[0]
    for arm in (CAPTURE_ARM, *[a for a in ARMS if a != CAPTURE_ARM]):
        captures = cells.get((arm, seed), {}).get("captures", [])
        if captures:
            return arm, seed, captures[0]
    return None


def same_batch_summary(cells: dict[tuple[str, int], dict], prof: LabProfile) -> dict[str, Any]:
    """The six objectives on the picked capture, with the weights at the start and at the end of the step: per preset
    loss, gradient norms, dropped / capped shares and the cosine matrix of the parameter gradients."""
    from eureka_kit.engine.capture import load_capture
    from eureka_kit.workbench.same_batch import compare_capture, same_batch_table

    picked = pick_capture(cells, prof)
    if picked is None:
        return dict(capture=None, reason=f"no sentinel fired at seed {prof.seeds[0]}: nothing was captured")
    arm, seed, path = picked
    cap = load_capture(path)
    out: dict[str, Any] = dict(capture=path, arm=arm, seed=seed, step=cap.step,
                               fired=[w["message"] for w in cap.meta["warnings"]],
                               tokens=int(cap.tensors["loss_mask"].sum()))
    for at in ("start", "end"):
        sb = compare_capture(cap, list(ARMS), at=at)
        out[at] = dict(table=same_batch_table(sb).to_dict("records"), cosine=sb.param_cosine.to_dict())
    return out
