"""`sft(cfg) -> Run`: the loss against hand-computed cross-entropy and against the model's own `labels` loss,
learning on the toy data, the run directory, resume, targets, and the CLI."""

from __future__ import annotations

import math

import pytest
import torch

from eureka_kit.algos import ops
from eureka_kit.cli import build_parser
from eureka_kit.config import RunConfig, field_docs
from eureka_kit.data import toyworld
from eureka_kit.data.prompts import prompt_text
from eureka_kit.engine.runs import open_run
from eureka_kit.engine.sft import reference_batch, sft, sft_completion, sft_loss
from eureka_kit.models import build_toy_model

SMALL = dict(train_batch_size=8, micro_batch_size=8, num_steps=6, lr=3e-3, warmup_steps=1)


@pytest.fixture(scope="module")
def problems():
    return toyworld.load("train", "math", seed=0, n_per_level=4)


def test_sft_loss_is_the_hand_computed_cross_entropy_on_two_tokens():
    # Vocabulary of 3. Token 1: logits (ln 2, 0, 0), target 0 -> p = 2/4, CE = ln 2.
    # Token 2: logits (0, ln 3, 0), target 1 -> p = 3/5, CE = ln 5/3. A third, padded position is masked out.
    logits = torch.tensor([[[math.log(2), 0.0, 0.0], [0.0, math.log(3), 0.0], [9.0, -9.0, 3.0]]],
                          dtype=torch.float64, requires_grad=True)
    targets, mask = torch.tensor([[0, 1, 2]]), torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    loss = sft_loss(ops.token_logprobs_from_logits(logits, targets), mask)
    assert loss.item() == pytest.approx((math.log(2) + math.log(5 / 3)) / 2, abs=1e-12)
    loss.backward()
    # d CE / d logits = (softmax - onehot) / N tokens; zero on the masked position.
    expected = torch.tensor([[[-1 / 2, 1 / 4, 1 / 4], [1 / 5, -2 / 5, 1 / 5], [0.0, 0.0, 0.0]]], dtype=torch.float64) / 2
    torch.testing.assert_close(logits.grad, expected)
    # Micro-batch shares with the batch's token count sum to the batch mean (exact gradient accumulation).
    logp = ops.token_logprobs_from_logits(logits.detach(), targets)
    halves = sft_loss(logp[:, :1], mask[:, :1], num_tokens=2) + sft_loss(logp[:, 1:], mask[:, 1:], num_tokens=2)
    assert halves.item() == pytest.approx(loss.item(), abs=1e-12)


def test_first_logged_loss_and_token_accuracy_equal_the_models_own_labels_loss(tmp_path, problems):
    """Prompt masking, left padding and the shift agree with HF's `labels` loss (token mean over the batch),
    with uneven micro-batches (3 + 3 + 2)."""
    model, tok = build_toy_model(seed=3)
    batch_problems = problems[:8]
    nll, hits, count = 0.0, 0.0, 0
    with torch.no_grad():
        for p in batch_problems:
            prompt = tok(prompt_text(tok, p, "none"), add_special_tokens=False)["input_ids"]
            completion = tok(p["solution"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids = torch.tensor([prompt + completion])
            labels = ids.clone()
            labels[0, :len(prompt)] = -100
            out = model(input_ids=ids, labels=labels)
            n = len(completion)
            nll, count = nll + out.loss.item() * n, count + n
            hits += (out.logits[0, len(prompt) - 1:-1].argmax(-1) == ids[0, len(prompt):]).sum().item()
    cfg = RunConfig.from_preset("sft", run_dir=str(tmp_path / "s"), **{**SMALL, "num_steps": 1, "micro_batch_size": 3})
    run = sft(cfg, policy=model, processor=tok, problems=batch_problems, progress=False)
    first = run.history[0]
    assert first["sft/num_tokens"] == count
    assert first["loss/sft"] == pytest.approx(nll / count, rel=1e-5)
    assert first["sft/token_accuracy"] == pytest.approx(hits / count)


def test_sft_lowers_the_loss_on_toy_data_and_writes_the_run_directory(tmp_path, problems):
    model, tok = build_toy_model(seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = RunConfig.from_preset("sft", run_dir=str(tmp_path / "run"), **SMALL)
    run = sft(cfg, policy=model, processor=tok, problems=problems, progress=False)

    losses = [h["loss/sft"] for h in run.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    rd = open_run(tmp_path / "run")
    assert rd.config()["config"]["preset"] == "sft" and rd.config()["config"]["sft_target"] == "cot"
    metrics = rd.metrics()
    assert list(metrics.step) == list(range(SMALL["num_steps"]))
    for key in ("loss/sft", "sft/token_accuracy", "optim/lr", "optim/grad_norm"):
        assert metrics[key].notna().all(), key
    assert metrics["sft/token_accuracy"].between(0, 1).all()
    # warm-up to lr then cosine towards 0.1 lr (the preset's schedule)
    assert metrics["optim/lr"].iloc[0] == pytest.approx(SMALL["lr"])
    assert metrics["optim/lr"].iloc[-1] < metrics["optim/lr"].iloc[1]
    final = rd.checkpoints()[-1]
    assert final.name == f"step_{SMALL['num_steps'] - 1:06d}" and (final / "model.safetensors").exists()


def test_sft_resume_equals_the_uninterrupted_run(tmp_path, problems, crash_on_call):
    import eureka_kit.engine.sft as sft_module

    settings = {**SMALL, "num_steps": 4, "save_every": 2}
    model, tok = build_toy_model(seed=5)
    full = sft(RunConfig.from_preset("sft", run_dir=str(tmp_path / "a"), **settings), policy=model, processor=tok,
               problems=problems, progress=False)

    restore = crash_on_call(sft_module, "reference_batch", 4)  # a kill during step 3
    model, tok = build_toy_model(seed=5)
    with pytest.raises(KeyboardInterrupt):
        sft(RunConfig.from_preset("sft", run_dir=str(tmp_path / "b"), **settings), policy=model, processor=tok,
            problems=problems, progress=False)
    restore()

    model, tok = build_toy_model(seed=99)  # another init: the checkpoint must overwrite it
    resumed = sft(RunConfig.from_preset("sft", run_dir=str(tmp_path / "b"), resume=True, **settings), policy=model,
                  processor=tok, problems=problems, progress=False)
    a, b = full.dir.metrics(), resumed.dir.metrics()
    assert list(b.step) == [0, 1, 2, 3]
    for key in [k for k in a.columns if not k.startswith("perf/")]:
        assert a[key].tolist() == pytest.approx(b[key].tolist(), rel=1e-5, abs=1e-6), key


def test_targets_cot_and_answer(problems):
    _, tok = build_toy_model(seed=0)
    p = problems[0]
    assert sft_completion(p, "cot") == p["solution"]
    assert sft_completion(p, "answer") == f"<think>answer</think><answer>{p['answer']}</answer>"
    with pytest.raises(ValueError, match="sft_target='answer'"):
        sft_completion({"id": "x", "answer": "1"}, "cot")
    batch = reference_batch(tok, problems[:3], RunConfig.from_preset("sft", sft_target="answer"))
    assert batch.texts[0] == sft_completion(p, "answer")
    # completion mask covers the target and its EOS, nothing else
    n = len(tok(batch.texts[0], add_special_tokens=False)["input_ids"]) + 1
    assert int(batch.completion_mask[0].sum()) == n and int(batch.completion_ids[0, n - 1]) == tok.eos_token_id


def test_cli_sft_help_lists_the_field_docs(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sft", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--preset {sft}" in out
    for name in ("sft_target", "lr", "num_steps", "train_batch_size", "train_subject"):
        assert "--" + name.replace("_", "-") in out, name
        assert " ".join(field_docs()[name].split()[:3]) in out, name
    assert "--surrogate" not in out  # SFT has no RL algorithm slots


def test_cli_eval_writes_greedy_accuracy_and_pass_at_k_into_the_run_directory(tmp_path, problems):
    from eureka_kit.cli import main
    from eureka_kit.engine import evaluate

    model, tok = build_toy_model(seed=0)
    sft(RunConfig.from_preset("sft", run_dir=str(tmp_path / "run"), **{**SMALL, "num_steps": 1}), policy=model,
        processor=tok, problems=problems, progress=False)
    assert main(["eval", str(tmp_path / "run"), "--subjects", "math,physics", "--samples", "2", "--max-len", "8"]) == 0
    per_problem, summary = evaluate.read_from_run_dir(tmp_path / "run", "step_000000")  # named by the checkpoint
    assert set(per_problem.subject) == {"math", "physics"}
    assert {"problem_id", "samples", "successes", "greedy_correct"} <= set(per_problem.columns)
    assert per_problem.greedy_correct.isin([0, 1]).all() and (per_problem.samples == 2).all()
    assert list(summary.subject) == ["math", "physics"]
    for _, row in summary.iterrows():
        rows = per_problem[per_problem.subject == row.subject]
        assert row.greedy_accuracy == pytest.approx(rows.greedy_correct.mean())
        assert row["pass@1"] == pytest.approx((rows.successes / 2).mean())
