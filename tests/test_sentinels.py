"""Collapse sentinels linked to the offending samples: which rows each warning points at (hand-built rollouts),
warnings.jsonl written by `train` as the run goes (and truncated on resume), and the report's warnings table."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from eureka_kit.algos import diagnostics
from eureka_kit.config import RunConfig
from eureka_kit.data import toyworld
from eureka_kit.engine.loop import train
from eureka_kit.engine.runs import RunDir, open_run
from eureka_kit.models import build_toy_model
from eureka_kit.workbench.pages import warnings_html

SMALL = dict(rollout_batch_size=4, group_size=4, train_batch_size=8, micro_batch_size=8, max_len=12, lr=1e-3)


def _row(sample, *, new, old, mask=None, entropy=None, reward=0.0, accuracy=0.0, fmt=0.0, advantage=0.0, text=""):
    n = len(new)
    return {"step": 7, "sample": sample, "completion": text or f"completion {sample}", "reward": reward,
            "accuracy": accuracy, "format": fmt, "advantage": advantage, "token_ids": list(range(n)),
            "tokens": [f"t{sample}_{j}" for j in range(n)], "old_logp": old, "new_logp": new,
            "loss_mask": mask or [1.0] * n, "entropy": entropy or [1.0] * n}


def _rows():
    """Four responses of one step. |log ratio| per loss token (new - old):
    sample 0: [0.1, -2.0] -> max -2.0 at t0_1;  sample 1: [0.0, 0.5, (masked 9.0)] -> 0.5 at t1_1;
    sample 2: [3.0] -> 3.0 at t2_0;              sample 3: [0.0, 0.0, 0.0, 0.0] -> 0.
    Lengths 2, 3, 1, 4. Mean entropy over loss tokens: 1.0, 0.3 (the masked 0.0 ignored), 0.6, 0.9.
    Formatted but wrong: samples 1 and 3 (sample 0 is right, sample 2 unformatted)."""
    return [
        _row(0, new=[-1.0, -3.0], old=[-1.1, -1.0], accuracy=1.0, fmt=1.0, reward=2.0),
        _row(1, new=[-1.0, -0.5, 8.0], old=[-1.0, -1.0, -1.0], mask=[1.0, 1.0, 0.0], entropy=[0.2, 0.4, 0.0], fmt=1.0,
             reward=1.0),
        _row(2, new=[-1.0], old=[-4.0], entropy=[0.6]),
        _row(3, new=[-1.0] * 4, old=[-1.0] * 4, entropy=[0.9] * 4, fmt=0.5, reward=0.5, text="x" * 5000),
    ]


def _picked(kind, rows=None, top_k=2):
    return [s["sample"] for s in diagnostics.offending_samples(kind, rows or _rows(), top_k)]


def test_each_kind_points_at_the_samples_that_show_it():
    assert _picked("ratio_tail") == [2, 0]  # |3.0| > |-2.0| > 0.5 (sample 1's masked 9.0 does not count)
    assert _picked("length_collapse") == [2, 0]  # 1 and 2 tokens
    assert _picked("entropy_slope") == [1, 2]  # 0.3 and 0.6
    assert _picked("format_divergence", top_k=3) == [1, 3]  # formatted, accuracy 0
    top = diagnostics.offending_samples("ratio_tail", _rows(), 2)
    assert top[0]["max_log_ratio"] == pytest.approx(3.0) and top[0]["token"] == "t2_0"
    assert top[1]["max_log_ratio"] == pytest.approx(-2.0) and top[1]["token"] == "t0_1"
    assert top[0]["length"] == 1 and top[0]["reward"] == 0.0
    low = diagnostics.offending_samples("entropy_slope", _rows(), 1)[0]
    assert low["entropy_mean"] == pytest.approx(0.3)
    quoted = diagnostics.offending_samples("length_collapse", _rows(), 4)[-1]
    assert quoted["sample"] == 3 and quoted["completion"] == "x" * diagnostics.COMPLETION_CHARS


def test_ratio_tail_sample_points_at_the_epoch_and_token_with_the_largest_log_ratio():
    """With per-epoch log-probs saved, the tail token is the largest |log ratio| over every epoch: here epoch 1's
    token 0 (+2.0) beats epoch 2's largest (token 1, -1.5), although epoch 2 is the saved new_logp."""
    row = dict(sample=0, reward=1.0, accuracy=1.0, format=0.5, token_ids=[5, 6, 7], tokens=["a", "b", "c"],
               loss_mask=[1.0, 1.0, 1.0], old_logp=[-1.0, -1.0, -1.0], entropy=[0.1, 0.2, 0.3],
               new_logp=[-1.2, -2.5, -1.0], epoch_logp=[[1.0, -1.1, -1.0], [-1.2, -2.5, -1.0]], completion="abc")
    (summary,) = diagnostics.offending_samples("ratio_tail", [row], top_k=1)
    assert (summary["epoch"], summary["token"], summary["max_log_ratio"]) == (1, "a", pytest.approx(2.0))
    del row["epoch_logp"]  # one epoch saved: the last epoch's largest, no epoch reported
    (summary,) = diagnostics.offending_samples("ratio_tail", [row], top_k=1)
    assert (summary["epoch"], summary["token"], summary["max_log_ratio"]) == (None, "b", pytest.approx(-1.5))


def test_nonfinite_steps_point_at_samples_holding_nan_first():
    rows = _rows()
    rows[3]["new_logp"] = [-1.0, math.nan, -1.0, -1.0]
    assert _picked("nonfinite_steps", rows) == [3, 2]  # the NaN row, then the largest |log ratio|
    assert _picked("nonfinite_steps") == [2, 0]  # no NaN anywhere: the ratio tail is the best lead


def _history(n=14):
    h = [{"step": i, "policy/ratio_max": 1.5, "policy/entropy": 1.0, "rollout/len_mean": 10.0,
          "reward/format_frac": 0.5, "reward/accuracy": 0.5, "optim/skipped_steps": 0.0} for i in range(n)]
    h[3]["policy/ratio_max"] = 40.0
    h[5]["optim/skipped_steps"] = 2.0
    for i in range(11, 14):
        h[i]["rollout/len_mean"] = 2.0
    return h


def test_step_warnings_equal_the_history_scan_at_each_step_and_read_rollouts_only_when_one_fires():
    history, reads = _history(), []

    def rollouts_of(step):
        reads.append(step)
        return pd.DataFrame(_rows())

    logged = [w for i in range(len(history)) for w in diagnostics.step_warnings(history[: i + 1], rollouts_of)]
    scanned = diagnostics.collapse_warnings(history)
    assert [(w["kind"], w["step"]) for w in logged] == [(w["kind"], w["step"]) for w in scanned] == [
        ("ratio_tail", 3), ("nonfinite_steps", 5), ("length_collapse", 11), ("length_collapse", 12),
        ("length_collapse", 13)]
    assert reads == [3, 5, 11, 12, 13]
    assert [s["sample"] for s in logged[0]["samples"]] == [2, 0, 1]
    assert logged[1]["value"] == 2.0 and "2 optimizer step(s) skipped" in logged[1]["message"]
    assert diagnostics.step_warnings([], rollouts_of) == []


def test_windowed_warnings_name_the_window_they_span():
    h = [{"step": i, "policy/entropy": 1.0 - (0.05 * i if i >= 5 else 0.0)} for i in range(15)]
    w = diagnostics.collapse_warnings(h, window=5)
    assert {x["kind"] for x in w} == {"entropy_slope"}
    assert all(x["since_step"] == x["step"] - 4 for x in w)


def test_warnings_jsonl_round_trip_and_resume_truncation(tmp_path):
    run = RunDir(tmp_path / "run").create({"seed": 0})
    rows = _rows()
    for step in (1, 2, 3):
        run.log_metrics({"step": step})
        run.log_warnings([{"step": step, "since_step": step, "kind": "ratio_tail", "value": 11.0 + step,
                           "message": "m", "samples": diagnostics.offending_samples("ratio_tail", rows, 1)}])
    run.log_warnings([])
    read = open_run(run.path).warnings()
    assert read.step.tolist() == [1, 2, 3] and read.samples[0][0]["sample"] == 2
    run.truncate_after(2)
    assert open_run(run.path).warnings().step.tolist() == [1, 2]
    assert RunDir(tmp_path / "empty").warnings().empty


@pytest.fixture(scope="module")
def problems():
    return toyworld.load("train", "math", seed=0, n_per_level=4)


def test_train_logs_each_warning_with_the_rows_of_its_step_that_hold_the_tail(tmp_path, problems, parity_reward,
                                                                              monkeypatch):
    monkeypatch.setitem(diagnostics.SENTINEL_DEFAULTS, "ratio_max", 1.0)  # any off-policy step fires
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "r"), update_epochs=2, num_steps=2, **SMALL)
    model, tok = build_toy_model(seed=0)
    run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    warnings = run.dir.warnings()
    fired = [h["step"] for h in run.history if h["policy/ratio_max"] > 1.0]
    assert fired and warnings[warnings.kind == "ratio_tail"].step.tolist() == fired
    for w in warnings[warnings.kind == "ratio_tail"].itertuples():
        ro = run.dir.rollouts(w.step)
        tails = [max(abs(n - o) for n, o, m in zip(r.new_logp, r.old_logp, r.loss_mask, strict=True) if m > 0)
                 for r in ro.itertuples()]
        picked = [s["sample"] for s in w.samples]
        assert len(picked) == 3 and picked[0] == max(range(len(tails)), key=tails.__getitem__)
        assert abs(w.samples[0]["max_log_ratio"]) == pytest.approx(max(tails))
        assert w.samples[0]["completion"] == ro.completion[picked[0]][: diagnostics.COMPLETION_CHARS]


def test_a_resumed_run_logs_each_warning_once_and_the_same_as_before(tmp_path, problems, parity_reward, monkeypatch):
    import shutil

    monkeypatch.setitem(diagnostics.SENTINEL_DEFAULTS, "ratio_max", 1.0)
    cfg = dict(run_dir=str(tmp_path / "r"), update_epochs=2, num_steps=3, save_every=1, **SMALL)
    model, tok = build_toy_model(seed=0)
    train(RunConfig.from_preset("grpo", **cfg), policy=model, processor=tok, problems=problems, progress=False)
    before = open_run(tmp_path / "r").warnings()
    assert before.step.tolist() == [0, 1, 2]
    shutil.rmtree(tmp_path / "r" / "checkpoints" / "step_000002")  # as if killed before step 2's checkpoint
    model, tok = build_toy_model(seed=99)
    train(RunConfig.from_preset("grpo", resume=True, **cfg), policy=model, processor=tok, problems=problems,
          progress=False)
    after = open_run(tmp_path / "r").warnings()
    assert after.step.tolist() == [0, 1, 2]  # step 2's warning dropped by the resume, then logged again
    assert after.value.tolist() == pytest.approx(before.value.tolist(), rel=1e-5)
    assert [[s["sample"] for s in w] for w in after.samples] == [[s["sample"] for s in w] for w in before.samples]


def test_nan_steps_are_logged_as_warnings_before_the_run_stops(tmp_path, problems, parity_reward, monkeypatch):
    import eureka_kit.algos.losses as losses_module

    real = losses_module.policy_loss

    def nan_loss(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * math.nan, stats

    monkeypatch.setattr(losses_module, "policy_loss", nan_loss)
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "n"), max_bad_steps=2, num_steps=5, **SMALL)
    model, tok = build_toy_model(seed=5)
    with pytest.raises(FloatingPointError):
        train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    warnings = open_run(tmp_path / "n").warnings()
    assert warnings.kind.tolist() == ["nonfinite_steps", "nonfinite_steps"] and warnings.step.tolist() == [0, 1]
    assert (warnings.value == 2.0).all()  # two minibatches per step, both skipped
    assert all(len(s) == 3 for s in warnings.samples)


def test_report_lists_each_warning_with_its_step_and_quotes_the_samples(tmp_path):
    run = RunDir(tmp_path / "report" / "runs" / "grpo").create({"seed": 0})
    rows = _rows()
    rows[2]["completion"] = "<think>3 < 4</think>"
    run.write_rollouts(7, rows)
    for step, skipped in ((6, 0.0), (7, 2.0)):
        run.log_metrics({"step": step, "optim/skipped_steps": skipped})
    history = [{"step": 7, "policy/ratio_max": 20.0, "optim/skipped_steps": 2.0}]
    run.log_warnings(diagnostics.step_warnings(history, run.rollouts))
    for step in range(8, 13):  # five more ratio-tail warnings: three shown in full, the rest counted
        run.log_warnings([{"step": step, "since_step": step, "kind": "ratio_tail", "value": 12.0, "message": "m",
                           "samples": []}])
    calm = RunDir(tmp_path / "report" / "runs" / "cpgd").create({"seed": 0})
    calm.log_metrics({"step": 0, "optim/skipped_steps": 0.0})
    page = warnings_html({"grpo": run, "cpgd": calm}, tmp_path / "report")

    grpo, cpgd = page.split("<h3>cpgd</h3>")
    assert "2 optimizer step(s) skipped for a NaN/Inf loss or gradient (at RL steps 7)" in grpo
    assert "<td>ratio_tail</td><td>7</td><td>20</td>" in grpo and "<td>nonfinite_steps</td><td>7</td>" in grpo
    # samples as table rows (row, reward, token, log-ratio, ...), the rollouts file named but not a download link
    assert "<tr><td>2</td><td>0</td><td><code>&#x27;t2_0&#x27;</code></td><td>+3</td>" in grpo
    assert "<code>runs/grpo/rollouts/step_000007.parquet</code>" in grpo and ".parquet\">" not in grpo
    assert "<q>&lt;think&gt;3 &lt; 4&lt;/think&gt;</q>" in grpo  # completions are quoted, escaped
    assert grpo.count("<td>ratio_tail</td>") == 4 and "3 more at steps 10, 11, 12" in grpo
    assert "0 optimizer step(s) skipped" in cpgd and "No collapse sentinel fired" in cpgd
