"""The findings engine on hand-made cells: claim-oriented effects by hand, each verdict from synthetic per-seed
effects, instrument requirements that turn a finding into "not testable here", the cell cache, the page and
findings.json; and one real (tiny) profile run through the worker processes."""

import json
import math
import re

import pytest
from scipy import stats
from synthetic_findings import PROFILE, SEEDS, cells

from eureka_kit.workbench import findings as F
from eureka_kit.workbench import findings_run as R
from eureka_kit.workbench.findings_page import findings_page, findings_table_html


def by_id(records):
    return {r["id"]: r for r in records}


def test_stability_effect_is_grpo_minus_cpgd_tail_share_in_pp():
    c = cells(tail={"grpo@8": [0.03, 0.02, 0.05], "cpgd@8": [0.01, 0.01, 0.01]})
    f = F.FINDINGS_BY_ID["stability"]
    assert [F.effect_of(f, c, s) for s in SEEDS] == pytest.approx([2.0, 1.0, 4.0])


def test_clipping_effect_pools_the_clipped_and_the_unclipped_arms():
    auc = {"cpg@8": [0.5] * 3, "cpgd@8": [0.3] * 3, "pg@8": [0.2] * 3, "pgd@8": [0.1] * 3}
    f = F.FINDINGS_BY_ID["clipping"]
    assert F.effect_of(f, cells(auc=auc), 0) == pytest.approx(100 * ((0.5 + 0.3) / 2 - (0.2 + 0.1) / 2))


def test_rl_vs_sft_effect_is_the_ood_accuracy_difference():
    c = cells(ood={F.CONTROL: [0.30, 0.25, 0.2], "sft": [0.2, 0.25, 0.3]})
    f = F.FINDINGS_BY_ID["rl_vs_sft"]
    assert [F.effect_of(f, c, s) for s in SEEDS] == pytest.approx([10.0, 0.0, -10.0])


def test_bucket_gap_subtracts_what_re_sampling_the_base_gives():
    # by hand (tests/synthetic_findings.py): RL lifts sometimes-solved by +0.25, never-solved by +1/12;
    # the re-sampled base: sometimes 0, never +1/6 (regression to the mean). (0.25 - 1/12) - (0 - 1/6) = 1/3.
    c = cells()
    base = c[("base", 0)]
    lifts = F.bucket_lifts(base, c[(F.CONTROL, 0)]["per_problem_successes"], 4)
    assert lifts["sometimes"] == pytest.approx(0.25) and lifts["never"] == pytest.approx(1 / 12)
    assert F.bucket_lifts(base, base["per_problem_successes"], 4)["never"] == pytest.approx(1 / 6)
    assert F.effect_of(F.FINDINGS_BY_ID["solved_vs_never"], c, 0) == pytest.approx(100 / 3)


@pytest.mark.parametrize("grpo, verdict", [([0.03, 0.04, 0.05], "supports"), ([0.001, 0.002, 0.0], "contradicts"),
                                           ([0.03, 0.0, 0.01], "inconclusive")])
def test_each_verdict_from_synthetic_per_seed_effects(grpo, verdict):
    c = cells(tail={"grpo@8": grpo, "cpgd@8": [0.01, 0.01, 0.01]})
    rec = by_id(F.judge_findings(c, "synthetic", SEEDS))["stability"]
    effects = [100 * (g - 0.01) for g in grpo]
    mean, sd = sum(effects) / 3, stats.tstd(effects)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert rec["verdict"] == verdict and rec["seeds"] == list(SEEDS)
    assert rec["per_seed_effect"] == pytest.approx(effects)
    assert (rec["effect"], rec["ci_low"], rec["ci_high"]) == pytest.approx((mean, mean - half, mean + half))
    assert f"3 seeds) — {verdict}." in rec["sentence"]


def test_one_seed_never_gives_a_verdict():
    c = {k: v for k, v in cells(tail={"grpo@8": [0.5] * 3}).items() if k[1] == 0}
    rec = by_id(F.judge_findings(c, "synthetic", SEEDS))["stability"]
    assert rec["seeds"] == [0] and rec["verdict"] == "inconclusive" and "one seed: no verdict" in rec["sentence"]


def test_failed_instrument_requirements_make_a_finding_not_testable_with_the_reason():
    # the control arm does not lift math accuracy and the base's OOD accuracy is 2%: both RL findings that need
    # them are reported as not testable, the others are judged as usual
    c = cells(math={"base": [0.4] * 3, F.CONTROL: [0.38, 0.41, 0.39]}, ood={"base": [0.02] * 3})
    checks = F.instrument_checks(c)
    assert not checks["control_lifts"]["ok"] and not checks["ood_base_range"]["ok"]
    recs = by_id(F.judge_findings(c, "synthetic", SEEDS))
    assert recs["rl_vs_sft"]["verdict"] == "not testable here"
    assert "base out-of-domain accuracy 2.0%" in recs["rl_vs_sft"]["reason"]
    assert "lift" in recs["solved_vs_never"]["reason"]
    assert recs["stability"]["verdict"] != "not testable here"


def test_instrument_requirements_met():
    c = cells(math={"base": [0.4] * 3, F.CONTROL: [0.45, 0.47, 0.46]}, ood={"base": [0.2, 0.25, 0.3]})
    checks = F.instrument_checks(c)
    assert checks["control_lifts"]["ok"] and checks["ood_base_range"]["ok"]
    assert checks["ood_base_range"]["value"] == pytest.approx(0.25)
    # 3 seeds x 2 sometimes-solved and 3 never-solved problems: below the 30 each the finding needs
    assert checks["bucket_sizes"]["sizes"] == {"sometimes": 6, "never": 9} and not checks["bucket_sizes"]["ok"]


def test_profiles_meet_the_seed_counts_and_cells_run_costliest_first():
    assert len(F.PROFILES["quick"].seeds) >= 3 and len(F.PROFILES["full"].seeds) >= 5
    assert set(F.PROFILES["full"].doses) == set(F.DOSES)
    quick = F.PROFILES["quick"].cells()
    assert {a for a, _ in quick} >= {f for rec in F.FINDINGS for f in rec.better + rec.worse}
    assert [a for a, _ in quick[:3]] == [F.CONTROL] * 3  # the longest cells first, so no worker idles at the end
    doses = [F.ARMS[a].dose for a, _ in quick[3:]]
    assert doses == sorted(doses, reverse=True)


def test_cells_with_a_stale_key_are_run_again(tmp_path):
    cell = dict(arm="base", seed=0, key=R.cell_key("base", 0, PROFILE), math_accuracy=0.4)
    (tmp_path / "cells" / "base").mkdir(parents=True)
    (tmp_path / "cells" / "base" / "seed0.json").write_text(json.dumps(cell))
    (tmp_path / "cells" / "base" / "seed1.json").write_text(json.dumps({**cell, "seed": 1, "key": "stale"}))
    assert set(R.read_cells(tmp_path, PROFILE)) == {("base", 0)}
    assert R.cell_key("base", 0, PROFILE) != R.cell_key("base", 1, PROFILE)


def test_summary_page_and_table(tmp_path):
    c = cells(tail={"grpo@8": [0.03, 0.04, 0.05]})
    result = R.summarize(c, PROFILE)
    assert [r["id"] for r in result["findings"]] == [f.id for f in F.FINDINGS]
    rows = {(r["preset"], r["dose"]): r for r in result["dose_response"]["ratio_tail_share"]}
    assert rows[("grpo", 8)]["mean"] == pytest.approx(0.04) and rows[("grpo", 8)]["n"] == 3
    (tmp_path / "findings.json").write_text(json.dumps(result, default=float))
    page = findings_page(tmp_path, reference=tmp_path / "none.json").read_text()
    assert "supports" in page and not re.search(r"\bnan\b", page, re.I)
    assert "plotly.min.js" in page and (tmp_path / "plotly.min.js").exists()
    small = findings_page(tmp_path / "ref", result, charts=False, reference=tmp_path / "none.json")
    assert "plotly-graph-div" not in small.read_text() and small.stat().st_size < 100_000
    table = findings_table_html(result["findings"], result["findings"])
    assert table.count("<tr>") == 1 + len(F.FINDINGS) and "reference (full profile)" in table


@pytest.mark.slow
def test_a_tiny_profile_runs_in_two_worker_processes_and_resumes(tmp_path):
    prof = F.Profile("tiny", seeds=(0, 1), num_steps=2, doses=(1, 8), eval_per_level=1, ood_per_level=1,
                     bucket_samples=2, eval_samples=2, curve_points=1, control_steps=2)
    result = R.run_profile(prof, tmp_path / "f", work=tmp_path / "w", workers=2, progress=False)
    assert result["provenance"]["cells_run"] == len(prof.cells()) == 20
    assert (tmp_path / "f" / "findings.json").exists()
    for rec in result["findings"]:
        # at these sizes a seed can hold no never-solved problem: its bucket gap is not a number and it is left out
        expected = [0, 1] if rec["id"] != "solved_vs_never" else [s for s in (0, 1) if s in rec["seeds"]]
        assert rec["seeds"] == expected and len(rec["per_seed_effect"]) == len(expected)
    cell = json.loads((tmp_path / "f" / "cells" / "grpo@8" / "seed0.json").read_text())
    assert cell["steps"] == 2 and 0 <= cell["ratio_tail_share"] <= 1 and cell["curve"][0][0] == 0
    assert not list((tmp_path / "w").rglob("model.safetensors"))  # checkpoints dropped once evaluated
    again = R.run_profile(prof, tmp_path / "f", work=tmp_path / "w", workers=2, progress=False)
    assert again["provenance"]["cells_run"] == 0
    assert [r["per_seed_effect"] for r in again["findings"]] == [r["per_seed_effect"] for r in result["findings"]]


def test_a_seed_with_an_empty_bucket_is_left_out_not_averaged():
    c = cells()
    c[("base", 1)] = {**c[("base", 1)], "buckets": ["always"] * 7 + ["untaught"]}  # no sometimes/never problems
    rec = by_id(F.judge_findings(c, "synthetic", SEEDS))["solved_vs_never"]
    assert rec["seeds"] == [0, 2] and all(math.isfinite(e) for e in rec["per_seed_effect"])
    assert ".;" not in rec.get("reason", "")
