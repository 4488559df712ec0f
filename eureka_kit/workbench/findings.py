"""The findings as data: claims, arms, pre-declared metrics, profiles; per-seed measurements in, verdicts out.

A finding is one claim of a seed paper, tested on the toy world as an instrument:

    FINDINGS    id, claim, source (paper section/table), the arms on each side, one pre-declared metric and the
                direction the paper claims; fixed before any verdict seed was run (reports/LOG.md, calibration)
    ARMS        what one (arm, seed) cell trains: the base policy, an RL preset at an off-policy dose, or SFT
    PROFILES    quick (the main job, >= 3 seeds) and full (>= 5 seeds, the committed reference)

Per seed, a cell measures its arm on that seed's problems (`findings_run.run_cell`); `effect_of` turns the
cells of one seed into the claim-oriented effect (positive = the paper's direction), and `judge_findings`
gives each finding its mean, 95% Student-t CI over seeds and verdict (`evidence.judge`). A finding whose
instrument requirement fails (`INSTRUMENT`) is reported as "not testable here" with the reason, not judged.
Settings were calibrated on seeds 100+ (never verdict seeds), see reports/LOG.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eureka_kit.workbench import evidence

# ---------------------------------------------------------------------------------------------
# The instrument's settings (calibrated on seeds 100-101; reports/LOG.md "findings calibration").

# 8 prompts x 8 responses per rollout, 48 new tokens, lr 1e-4 for every RL arm: the one lr at which on-policy RL
# neither collapsed (3e-4 did within 25 steps) nor stood still (5e-5 moved nothing in 60 steps).
RL_SETTINGS = dict(rollout_batch_size=8, group_size=8, max_len=48, lr=1e-4, reward_timeout=2.0)

# Off-policy dose = optimizer steps per rollout batch: (minibatches per rollout, passes over the rollout).
# Dose 1 is on-policy (the control arm); dose 8 is the pressure the stability and clipping findings test at.
DOSES: dict[int, tuple[int, int]] = {1: (1, 1), 2: (2, 1), 4: (4, 1), 8: (4, 2)}
PRESSURE = 8

# The SFT baseline, tuned on a validation split (math train-split problems of another draw than the SFT set):
# lr in {2e-5, 5e-5, 1e-4, 2e-4} x steps in {10, 20, 40}; every step of SFT lowered validation accuracy, the
# least harmful was lr 2e-5 for 10 steps (0.432 vs base 0.435).
SFT_SETTINGS = dict(lr=2e-5, num_steps=10, warmup_steps=2, max_len=48, reward_timeout=2.0)

# The control arm: on-policy CPGD with the recipe that lifted greedy accuracy by +10 to +17 points in 10 minutes
# (benchmarks/RESULTS.md, 2026-11-28/29): 32 prompts x 8 responses, groups that are all right or all wrong
# filtered out and refilled, one optimizer step of 256 responses per rollout, lr 2e-4, levels 0-4. With the
# pressure arms' 8 x 8 batches, on-policy RL did not lift in 60-400 steps at any lr tried (reports/LOG.md).
CONTROL = "control"
CONTROL_SETTINGS = dict(rollout_batch_size=32, group_size=8, online_filter=True, train_batch_size=256,
                        micro_batch_size=128, lr=2e-4, max_len=48, train_levels=(0, 1, 2, 3, 4), train_per_level=3000,
                        skip_zero_variance=3, reward_timeout=2.0)


@dataclass(frozen=True)
class Arm:
    """One arm: `kind` base | rl | sft; RL arms name a preset and a dose (key of DOSES), or the control recipe."""

    kind: str
    preset: str = ""
    dose: int = 1
    recipe: str = ""  # "control": CONTROL_SETTINGS for Profile.control_steps steps instead of a dose


def rl_arm(preset: str, dose: int) -> str:
    return f"{preset}@{dose}"


ARMS: dict[str, Arm] = {
    "base": Arm("base"),
    CONTROL: Arm("rl", "cpgd", 1, "control"),
    "sft": Arm("sft", "sft"),
    **{rl_arm(p, d): Arm("rl", p, d) for p in ("grpo", "cpgd") for d in DOSES},
    **{rl_arm(p, PRESSURE): Arm("rl", p, PRESSURE) for p in ("pg", "pgd", "cpg")},
}


@dataclass(frozen=True)
class Finding:
    """A claim, its arms and its pre-declared metric. `effect` is claim-oriented: positive = the paper's
    direction. Each side's value is the mean of its arms' per-seed values (a side may pool several arms)."""

    id: str
    claim: str
    source: str
    paper_number: str
    better: tuple[str, ...]
    worse: tuple[str, ...]
    metric: str
    higher_is_better: bool
    unit: str = ""
    requires: tuple[str, ...] = ()


FINDINGS: tuple[Finding, ...] = (
    Finding(
        id="stability",
        claim="Under off-policy pressure, GRPO without a KL term grows policy-ratio tails that CPGD keeps bounded",
        source="CPGD paper §4.2 (training stability) and Table 2",
        paper_number="qualitative: GRPO's ratio spikes, CPGD's stays bounded",
        better=(rl_arm("cpgd", PRESSURE),), worse=(rl_arm("grpo", PRESSURE),),
        metric="ratio_tail_share", higher_is_better=False, unit="pp"),
    Finding(
        id="clipping",
        claim="Clipping matters: PG and PGD (no clip) degrade where CPG and CPGD (clipped) hold",
        source="CPGD paper Table 2 (ablations)",
        paper_number="Overall 0.89 (PG) / 0.86 (PGD) vs 1.11 (CPG) / 1.11 (CPGD)",
        better=(rl_arm("cpg", PRESSURE), rl_arm("cpgd", PRESSURE)),
        worse=(rl_arm("pg", PRESSURE), rl_arm("pgd", PRESSURE)),
        metric="math_auc", higher_is_better=True, unit="pp"),
    Finding(
        id="solved_vs_never",
        claim="RL lifts problems the base policy sometimes solves, not those it never solves",
        source="MM-Eureka report (data filtering: problems the policy never or always solves carry no signal)",
        paper_number="qualitative",
        better=(CONTROL,), worse=("base",),
        metric="bucket_lift_gap", higher_is_better=True, unit="pp", requires=("control_lifts", "bucket_sizes")),
    Finding(
        id="rl_vs_sft",
        claim="RL transfers out of domain (physics, chemistry, biology) better than SFT on the same problems",
        source="MM-Eureka report Table 5 (MMK12 by subject: +RL vs +SFT / +CoT-SFT)",
        paper_number="avg 64.5 (+RL) vs 57.7 (+SFT) / 57.1 (+CoT-SFT), base 53.5",
        better=(CONTROL,), worse=("sft",),
        metric="ood_gain", higher_is_better=True, unit="pp", requires=("control_lifts", "ood_base_range")),
)
FINDINGS_BY_ID = {f.id: f for f in FINDINGS}


@dataclass(frozen=True)
class Profile:
    """Sizes of one profile. Evaluation: `eval_per_level` math test problems per level (all 6, the untaught
    top one included) x `eval_samples` samples at T=1; buckets from `bucket_samples` separate base samples;
    `ood_per_level` problems per level of each OOD subject. `curve_points` checkpoints are evaluated for the
    area under the test-accuracy curve."""

    name: str
    seeds: tuple[int, ...]
    num_steps: int
    doses: tuple[int, ...]
    eval_per_level: int = 16
    eval_samples: int = 4
    bucket_samples: int = 8
    ood_per_level: int = 8
    curve_points: int = 2
    arms: tuple[str, ...] = field(default=())
    control_steps: int = 40

    def cells(self) -> list[tuple[str, int]]:
        """(arm, seed) for every cell this profile runs, the costliest (the control, then the highest dose) first."""
        arms = self.arms or tuple(a for a, spec in ARMS.items()
                                  if spec.kind != "rl" or spec.recipe or spec.dose in self.doses)
        return sorted(((a, s) for a in arms for s in self.seeds),
                      key=lambda c: (c[0] != CONTROL, -ARMS[c[0]].dose, c[0], c[1]))


PROFILES: dict[str, Profile] = {
    # quick fits the 10-minute main job on 2 cores with a cold cache (the base build takes ~2 of them): the
    # pressure dose only, shorter runs; the dose-response and the longer control are the full profile's
    "quick": Profile("quick", seeds=(0, 1, 2), num_steps=24, doses=(PRESSURE,), control_steps=30),
    "full": Profile("full", seeds=(0, 1, 2, 3, 4), num_steps=100, doses=(1, 2, 4, 8), eval_per_level=32,
                    ood_per_level=16, curve_points=4, control_steps=120),
}

# ---------------------------------------------------------------------------------------------
# Instrument requirements: checked on the verdict seeds' own cells; a finding that needs a failed one is
# reported as not testable here.

OOD_BASE_RANGE = (0.10, 0.60)
MIN_BUCKET_PROBLEMS = 30


def load_cells(findings_dir: str | Path) -> dict[tuple[str, int], dict]:
    """Every cell under `findings_dir/cells` as {(arm, seed): cell} (a finished run, for pages and notebooks)."""
    cells = {}
    for path in sorted(Path(findings_dir).glob("cells/*/seed*.json")):
        cell = json.loads(path.read_text())
        cells[(cell["arm"], int(cell["seed"]))] = cell
    return cells


def _seed_values(cells: Mapping[tuple[str, int], dict], arm: str, key: str) -> dict[int, float]:
    return {s: float(c[key]) for (a, s), c in sorted(cells.items()) if a == arm and key in c}


def instrument_checks(cells: Mapping[tuple[str, int], dict]) -> dict[str, dict[str, Any]]:
    """{requirement: {"ok": bool, "detail": str, ...}} for control_lifts (on-policy control's in-domain lift
    over the base, paired by seed: CI above 0), ood_base_range (base OOD accuracy pooled over seeds in
    OOD_BASE_RANGE) and bucket_sizes (each solved/never bucket >= MIN_BUCKET_PROBLEMS problems pooled)."""
    out: dict[str, dict[str, Any]] = {}
    control, base = _seed_values(cells, CONTROL, "math_accuracy"), _seed_values(cells, "base", "math_accuracy")
    seeds = sorted(set(control) & set(base))
    if len(seeds) >= 2:
        j = evidence.judge({s: control[s] - base[s] for s in seeds})
        out["control_lifts"] = dict(ok=j.verdict == "supports", effect=j.effect, ci_low=j.ci_low, ci_high=j.ci_high,
                                    detail=f"on-policy {CONTROL} minus base, math test accuracy: "
                                           + evidence.sentence(_in_pp(j), "lift", "pp"))
    else:
        out["control_lifts"] = dict(ok=False, detail=f"needs {CONTROL} and base on >= 2 seeds")
    ood = [c["ood_accuracy"] for (a, _), c in cells.items() if a == "base" and "ood_accuracy" in c]
    mean_ood = float(np.mean(ood)) if ood else math.nan
    lo, hi = OOD_BASE_RANGE
    out["ood_base_range"] = dict(ok=bool(ood) and lo <= mean_ood <= hi, value=mean_ood,
                                 detail=f"base out-of-domain accuracy {mean_ood:.1%} (needs {lo:.0%}-{hi:.0%})")
    sizes = {"sometimes": 0, "never": 0}
    for (a, _), c in cells.items():
        if a == "base" and "buckets" in c:
            for name in sizes:
                sizes[name] += sum(1 for b in c["buckets"] if b == name)
    ok = min(sizes.values()) >= MIN_BUCKET_PROBLEMS
    out["bucket_sizes"] = dict(ok=ok, sizes=sizes, detail=f"problems pooled over seeds: sometimes-solved "
                                                          f"{sizes['sometimes']}, never-solved {sizes['never']} "
                                                          f"(needs >= {MIN_BUCKET_PROBLEMS} each)")
    return out


def _in_pp(j: evidence.Judgement) -> evidence.Judgement:
    """The same judgement with effects in percentage points (accuracies are stored as fractions)."""
    return evidence.Judgement(100 * j.effect, 100 * j.ci_low, 100 * j.ci_high, j.n, j.seeds,
                              tuple(100 * v for v in j.per_seed_effect), j.verdict, j.level)


# ---------------------------------------------------------------------------------------------
# Per-seed effects.


def bucket_lifts(base: dict, after_successes: list[int], after_samples: int) -> dict[str, float]:
    """Mean success-rate change per bucket, measured from the base's own bucket sample (K samples per problem:
    `sometimes` = solved in 1..K-1 of K, `never` = 0 of K, `always` = K of K; the base cell leaves the
    never-taught level out of the buckets, bucket "untaught"). Buckets picked by a noisy sample regress to the
    mean, so the never bucket "lifts" even with no training: compare with `after` = the base re-sampled."""
    out = {}
    for name in ("sometimes", "never", "always", "untaught"):
        idx = [i for i, b in enumerate(base["buckets"]) if b == name]
        if not idx:
            out[name] = math.nan
            continue
        before = np.array(base["bucket_successes"])[idx] / base["bucket_samples"]
        after = np.array(after_successes)[idx] / after_samples
        out[name] = float(np.mean(after - before))
    return out


def bucket_gap(base: dict, after_successes: list[int], after_samples: int) -> float:
    """Lift of sometimes-solved minus lift of never-solved problems."""
    lifts = bucket_lifts(base, after_successes, after_samples)
    return lifts["sometimes"] - lifts["never"]


def effect_of(finding: Finding, cells: Mapping[tuple[str, int], dict], seed: int) -> float | None:
    """The claim-oriented effect of `finding` on one seed (None when a cell is missing), in the metric's unit.

    - ratio_tail_share: share of response tokens with |log r| > log 2, averaged over steps and update epochs
      (`policy/ratio_tail_frac`), in percentage points; never a maximum over single tokens.
    - math_auc: mean math test accuracy over the evaluated checkpoints (base at step 0 included), in pp.
    - bucket_lift_gap: (lift of sometimes-solved - lift of never-solved) under RL, minus the same gap when the
      base is merely re-sampled (the no-training control: what regression to the mean alone gives), in pp.
    - ood_gain: out-of-domain accuracy after training minus the base's, in pp (the same base on both sides,
      so the effect is RL's OOD accuracy minus SFT's).
    """
    def cell(arm: str) -> dict | None:
        return cells.get((arm, seed))

    if finding.metric == "bucket_lift_gap":
        base, rl = cell("base"), cell(finding.better[0])
        if base is None or rl is None:
            return None
        trained = bucket_gap(base, rl["per_problem_successes"], rl["eval_samples"])
        control = bucket_gap(base, base["per_problem_successes"], base["eval_samples"])
        return 100 * (trained - control)
    key = {"ratio_tail_share": "ratio_tail_share", "math_auc": "math_auc", "ood_gain": "ood_accuracy"}[finding.metric]
    sides = []
    for arms in (finding.better, finding.worse):
        values = [cell(a)[key] for a in arms if cell(a) is not None and key in cell(a)]
        if len(values) != len(arms):
            return None
        sides.append(float(np.mean(values)))
    diff = sides[0] - sides[1]
    return 100 * (diff if finding.higher_is_better else -diff)


def judge_findings(cells: Mapping[tuple[str, int], dict], profile: str, seeds: tuple[int, ...]) -> list[dict[str, Any]]:
    """One record per finding, as findings.json holds it: id, claim, source, paper_number, metric, unit,
    seeds, per_seed_effect, effect, ci_low, ci_high, verdict ("supports" / "contradicts" / "inconclusive", or
    "not testable here" with `reason` when an instrument requirement failed), profile."""
    checks = instrument_checks(cells)
    out = []
    for f in FINDINGS:
        # a seed whose effect cannot be computed (a cell missing, or an empty bucket at tiny sizes) is left out
        per_seed = {s: e for s in seeds if (e := effect_of(f, cells, s)) is not None and math.isfinite(e)}
        rec: dict[str, Any] = dict(id=f.id, claim=f.claim, source=f.source, paper_number=f.paper_number,
                                   metric=f.metric, unit=f.unit, better=list(f.better), worse=list(f.worse),
                                   profile=profile, seeds=list(per_seed), per_seed_effect=list(per_seed.values()))
        if per_seed:
            j = evidence.judge(per_seed)
            rec.update(effect=j.effect, ci_low=j.ci_low, ci_high=j.ci_high, verdict=j.verdict,
                       sentence=evidence.sentence(j, f.claim, f.unit))
        else:
            rec.update(effect=math.nan, ci_low=math.nan, ci_high=math.nan, verdict="inconclusive",
                       sentence=f"{f.claim}: no seed was measured — inconclusive.")
        failed = [checks[r]["detail"].rstrip(".") for r in f.requires if not checks[r]["ok"]]
        if failed:
            rec.update(verdict="not testable here", reason="; ".join(failed))
        out.append(rec)
    return out


def dose_response(cells: Mapping[tuple[str, int], dict], key: str, presets=("grpo", "cpgd")) -> list[dict[str, Any]]:
    """Rows (preset, dose, mean, ci_low, ci_high, n) of a cell metric over seeds, for every dose run."""
    rows = []
    for preset in presets:
        for dose in DOSES:
            values = _seed_values(cells, rl_arm(preset, dose), key)
            if values:
                iv = evidence.mean_ci(list(values.values()))
                rows.append(dict(preset=preset, dose=dose, mean=iv.mean, ci_low=iv.low, ci_high=iv.high, n=iv.n))
    return rows


def profile_dict(profile: Profile) -> dict[str, Any]:
    return {**asdict(profile), "rl_settings": RL_SETTINGS, "doses": {d: DOSES[d] for d in profile.doses},
            "sft_settings": SFT_SETTINGS, "control": CONTROL, "control_settings": CONTROL_SETTINGS}
