"""Ratio explorer: pure functions and the ipywidgets callbacks, headless, on a hand-made run directory."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from eureka_kit.engine.runs import RunDir
from eureka_kit.workbench import explorer


def _row(sample, group, adv, reward, new, tokens, mu=None):
    """`new` and `mu` are offsets from old_logp = -1: log r = new, log rho = -mu."""
    n = len(tokens)
    mu = [0.0] * n if mu is None else mu
    return {"step": 0, "sample": sample, "group": group, "problem_id": f"p{group}", "subject": "math", "level": 0,
            "answer": "7", "completion": "".join(tokens), "finish_reason": "stop", "reward": reward,
            "accuracy": float(reward >= 1), "format": 0.5, "advantage": adv, "token_ids": list(range(n)),
            "tokens": tokens, "behavior_logp": [-1.0 + v for v in mu], "old_logp": [-1.0] * n,
            "new_logp": [-1.0 + v for v in new], "loss_mask": [1.0] * n}


@pytest.fixture()
def run(tmp_path):
    explorer.load_step.cache_clear()
    explorer._replayed.cache_clear()
    explorer._same_batch.cache_clear()
    r = RunDir(tmp_path / "runs" / "grpo-seed0").create({"preset": "grpo", "group_size": 2, "max_len": 8, "seed": 0})
    rows = [_row(0, 0, 1.0, 1.5, [math.log(1.5), 0.0, 0.0], ["<answer>", "7", "</answer>"], mu=[0.0, 0.0, 0.3]),
            _row(1, 0, -1.0, 0.0, [math.log(0.5), 0.0], ["<", "\n"]),
            _row(2, 1, 0.0, 1.5, [0.0], ["7"], mu=[-2.0]),
            _row(3, 1, 0.0, 1.5, [0.1], ["7"])]
    r.write_rollouts(0, rows)
    r.write_rollouts(4, rows)
    return str(r.path)


def test_saved_rollouts_read_back_as_pandas_would_have_written_them(tmp_path):
    """write_rollouts writes through pyarrow: a column per key of any row, missing keys null, same frame as
    DataFrame.to_parquet gives back."""
    import pandas as pd

    rows = [_row(0, 0, 1.0, 1.5, [0.1, 0.0], ["a", "b"]), {**_row(1, 0, 0.0, 0.5, [0.2], ["c"]), "level": None},
            {**_row(2, 1, 0.0, 1.5, [0.0, 0.3], ["d", "e"]), "epoch_logp": [[-1.0, -2.0], [-1.5, -2.5]]}]
    path = RunDir(tmp_path / "run").create({"preset": "grpo"}).write_rollouts(7, rows)
    pd.DataFrame(rows).to_parquet(tmp_path / "pandas.parquet", index=False)
    ours, theirs = pd.read_parquet(path), pd.read_parquet(tmp_path / "pandas.parquet")
    assert list(ours.columns) == list(theirs.columns) and "epoch_logp" in ours.columns
    assert ours["epoch_logp"].isna().tolist() == [True, True, False] and ours["level"].isna().tolist() == [False, True, False]
    pd.testing.assert_frame_equal(ours.drop(columns="epoch_logp"), theirs.drop(columns="epoch_logp"))
    assert [list(map(list, v)) for v in ours["epoch_logp"].iloc[2:]] == [[[-1.0, -2.0], [-1.5, -2.5]]]


def test_find_runs_and_steps(run, tmp_path):
    assert explorer.find_runs(tmp_path / "runs") == [run]
    assert explorer.find_runs(run) == [run]
    assert explorer.find_runs(tmp_path / "missing") == []
    assert explorer.steps_of(run) == [0, 4]
    assert explorer.sample_options(explorer.load_step(run, 0))[1] == ("#1 g0 reward 0.00 acc 0 A -1.00", 1)


def test_token_values_by_colour(run):
    tokens, values, _ = explorer.token_values(run, 0, 0, "log-ratio")
    assert tokens == ["<answer>", "7", "</answer>"]
    np.testing.assert_allclose(values, [math.log(1.5), 0, 0], atol=1e-12)
    _, values, _ = explorer.token_values(run, 0, 1, "advantage")
    np.testing.assert_allclose(values, [-1, -1])
    # grpo (ppo clip, eps 0.2): sample 0 token 0 clipped high (r = 1.5, A > 0); sample 1 token 0 low (r = 0.5, A < 0)
    _, values, legend = explorer.token_values(run, 0, 0, "clip")
    np.testing.assert_array_equal(values, [1, 0, 0])
    _, values, _ = explorer.token_values(run, 0, 1, "clip")
    np.testing.assert_array_equal(values, [-1, 0])
    assert "grpo" in legend
    _, values, legend = explorer.token_values(run, 0, 0, "entropy")
    np.testing.assert_allclose(values, [1, 1, 1])  # surprisal -old_logp, entropy was not saved
    assert "surprisal" in legend
    with pytest.raises(ValueError, match="color_by"):
        explorer.token_values(run, 0, 0, "ratio")
    with pytest.raises(ValueError, match="sample: 9"):
        explorer.token_values(run, 0, 9, "log-ratio")


def test_tokens_html_escapes_and_colours():
    out = explorer.tokens_html(["<a>", "\n"], np.array([1.0, -1.0]), "log-ratio")
    assert "&lt;a&gt;" in out and "⏎" in out
    assert "rgb(100,255,100)" in out and "rgb(255,100,100)" in out  # full green / full red at |value| = scale
    assert 'title="log-ratio = +1.0000"' in out
    clip = explorer.tokens_html(["a", "b", "c"], np.array([1.0, -1.0, 0.0]), "clip")
    assert "#9ecae1" in clip and "#fc9272" in clip and "transparent" in clip
    with pytest.raises(ValueError, match="differ in length"):
        explorer.tokens_html(["a"], np.array([1.0, 2.0]), "advantage")


def test_group_and_replay_tables(run):
    df = explorer.load_step(run, 0)
    g = explorer.group_table(df, 1)
    assert list(g["sample"]) == [0, 1] and list(g["tokens"]) == [3, 2]
    assert "1/2 correct" in explorer.group_html(df, 1)
    t = explorer.replay_table(run, 0, ["grpo", "pg"], sample=0).set_index("preset")
    # grpo: seq-mean-token-mean over 4 responses; response 0: (-1.2 - 1 - 1)/3, response 1: (0.8 - 1)/2 ... with A
    # of responses 2, 3 equal to 0 -> their loss is 0
    expected = ((-1.2 - 1 - 1) / 3 + (0.8 + 1.0) / 2 + 0 + 0) / 4
    assert t.loc["grpo", "loss"] == pytest.approx(expected)
    assert t.loc["grpo", "sample clip high"] == pytest.approx(1 / 3)
    assert t.loc["pg", "sample clip high"] == 0


def test_view_returns_all_panes(run):
    out = explorer.view(run, 4, 1, "clip", "cpgd")
    assert set(out) == {"header", "tokens", "tails", "group", "replay"}
    assert "step 4, sample 1" in out["header"] and "cpgd" in out["replay"]


def test_token_table_shows_pi_theta_pi_old_mu_and_flags(run):
    t = explorer.token_table(run, 0, 0)
    np.testing.assert_allclose(t.pi_old, math.exp(-1.0))
    np.testing.assert_allclose(t.pi_theta, np.exp([-1 + math.log(1.5), -1, -1]))
    np.testing.assert_allclose(t.mu, np.exp([-1.0, -1.0, -0.7]))
    np.testing.assert_allclose(t.log_rho, [0, 0, -0.3], atol=1e-12)
    assert list(t.clipped) == ["high", "", ""]  # grpo: r = 1.5 > 1.2 with A > 0
    assert not t.masked.any() and not t.truncated.any() and not t.corrected.any()  # the run has no correction
    _, values, legend = explorer.token_values(run, 0, 2, "mismatch")
    np.testing.assert_allclose(values, [2.0]) and "mu" in legend


def test_corrected_flag_follows_the_runs_correction(tmp_path):
    explorer.load_step.cache_clear()
    explorer._step_correction.cache_clear()
    r = RunDir(tmp_path / "icepop").create({"preset": "grpo", "group_size": 2, "max_len": 8, "seed": 0,
                                            "correction": "icepop", "correction_low": 0.5, "correction_high": 2.0})
    # log rho = 0, -1 (rho = 0.37 < 0.5: masked), 0.3 (rho 1.35: weighted)
    r.write_rollouts(0, [_row(0, 0, 1.0, 1.0, [0.0, 0.0, 0.0], ["a", "b", "c"], mu=[0.0, 1.0, -0.3]),
                         _row(1, 0, -1.0, 0.0, [0.0], ["d"])])
    t = explorer.token_table(str(r.path), 0, 0)
    assert list(t.corrected) == [False, True, True]


def test_token_chart_draws_the_three_distributions_and_both_ratios(run):
    fig = explorer.token_chart(run, 0, 0)
    names = [trace.name for trace in fig.data]
    assert len(names) == 5 and any("μ" in n for n in names) and any("ρ" in n for n in names)
    mu = next(trace for trace in fig.data if "μ" in trace.name and trace.type == "scatter")
    np.testing.assert_allclose(mu.y, [-1.0, -1.0, -0.7])
    assert list(fig.data[0].x) == ["0:<answer>", "1:7", "2:</answer>"]


def test_worst_tokens_rank_all_steps_by_either_ratio(run):
    worst = explorer.worst_tokens(run, "log_ratio", k=4)
    # |log 0.5| = 0.69 (sample 1, pos 0) beats |log 1.5| = 0.41 (sample 0, pos 0); both steps hold the same rows
    assert list(zip(worst["sample"], worst["position"], strict=True))[:2] == [(1, 0), (1, 0)]
    assert sorted(worst["step"][:2]) == [0, 4]
    assert worst["log_ratio"].abs().is_monotonic_decreasing
    rho = explorer.worst_tokens(run, "log_rho", k=1)
    assert (rho["sample"][0], rho["position"][0], rho["log_rho"][0]) == (2, 0, pytest.approx(2.0))
    label, target = explorer.worst_options(run, "log_rho", k=1)[0]
    assert target[1] == 2 and "log ρ +2.000" in label
    with pytest.raises(ValueError, match="by"):
        explorer.worst_tokens(run, "entropy")


def test_tail_table_reports_raw_quantiles(run):
    t = explorer.tail_table(run, 0).set_index("quantity")
    r = t.loc["log r (learner update)"]
    assert r["tokens"] == 7 and r["max |.|"] == pytest.approx(math.log(2))
    assert r["outside [½, 2]"] == 0  # |log 0.5| = log 2 is on the band's edge, not outside
    rho = t.loc["log ρ (sampler mismatch)"]
    assert rho["max |.|"] == pytest.approx(2.0) and rho["outside [½, 2]"] == pytest.approx(1 / 7)


def test_widget_callbacks_headless(run, tmp_path):
    pytest.importorskip("ipywidgets")
    ui = explorer.ExplorerWidget(tmp_path / "runs", replay_preset="pg")
    assert ui.step.value == 4 and ui.sample.value == 0
    assert "step 4, sample 0" in ui.header.value
    ui.sample.value = 1
    assert "sample 1" in ui.header.value and "&lt;" in ui.tokens.value
    ui.color_by.value = "clip"
    assert "#fc9272" in ui.tokens.value
    ui.step.value = 0
    assert "step 0, sample 0" in ui.header.value
    ui.replay_preset.value = "cpgd"
    assert "<b>cpgd</b>" in ui.replay.value
    assert "log ρ" in ui.tails.value and ui.figure.layout.title.text.startswith("step 0, sample 0")
    ui.worst_by.value = "log_rho"
    ui.worst.value = ui.worst.options[0][1]  # the largest |log rho|: step 0 or 4, sample 2
    assert ui.sample.value == 2 and f"step {ui.worst.value[0]}, sample 2" in ui.header.value
    # the same-batch pane follows the step and the chosen objectives (no capture here: saved log-probs only)
    assert "same batch" in ui.same.value and "per-token weights only" in ui.same.value and "gspo" in ui.same.value
    ui.compare.value = ("grpo", "pg")
    assert "gspo" not in ui.same.value and "cos with grpo" in ui.same.value
    assert [t.name for t in ui.same_figure.data if t.type == "scattergl"] == ["grpo", "pg"]
    ui.compare.value = ()
    assert "pick at least one" in ui.same.value and ui.same_figure is None
    with pytest.raises(FileNotFoundError):
        explorer.ExplorerWidget(tmp_path / "nothing")


def test_same_batch_pane_reads_the_saved_step_and_finds_captures(run):
    # step 4 of the fixture: grpo clips sample 0's first token (r = 1.5, A > 0) and sample 1's (r = 0.5, A < 0);
    # pg cuts nothing
    pane = explorer.same_batch_pane(run, 4, ["grpo", "pg"])
    sb = explorer._same_batch(run, 4, ("grpo", "pg"), "end")
    assert sb.objectives["grpo"].dropped.sum() == 2 and sb.objectives["pg"].dropped.sum() == 0
    assert "grpo" in pane and sb.param_cosine is None
    assert explorer.same_batch_chart(run, 4, ["grpo", "pg"]).data[0].type == "heatmap"
    assert explorer.step_capture(run, 4) is None
    (Path(run) / "captures" / "step_000004").mkdir(parents=True)
    assert explorer.step_capture(run, 4).name == "step_000004" and explorer.step_capture(run, 0) is None


def test_marimo_app_runs_headless(run, tmp_path, monkeypatch):
    """notebooks/ratio_explorer.py run in-process (as `python ratio_explorer.py --root DIR` would)."""
    pytest.importorskip("marimo")
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "notebooks" / "ratio_explorer.py"
    spec = importlib.util.spec_from_file_location("ratio_explorer_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [str(path), "--root", str(tmp_path / "runs")])
    _, defs = module.app.run()
    assert defs["runs"] == [run]
    assert "step 4, sample 0" in defs["panes"]["header"] and "<b>cpgd</b>" in defs["panes"]["replay"]
    assert all(p in defs["same_pane"] for p in explorer.SAME_BATCH_PRESETS)
