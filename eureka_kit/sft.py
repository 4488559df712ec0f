"""`sft(cfg) -> Run`: supervised fine-tuning on reference completions, on the RL loop's plumbing.

The SFT arm of the RL-vs-SFT comparison (notebook 13) shares everything with `train.train` but the update:
the same `RunConfig` (`sft_target`, `train_batch_size` examples per optimizer step, `micro_batch_size` per
forward, lr schedule, AdamW), the same seeding, problem stream, prompts (`rollout.encode_prompts`), run
directory, checkpoints and `resume`, and the same progress bar. The loss is the masked next-token
cross-entropy of the completion tokens, averaged over the optimizer batch's tokens (HF's `labels` loss),
with log-probs from the chunked, fused head of `ops` (never a [B, T, V] fp32 tensor) at temperature 1.

Targets (`sft_target`): `cot` = the row's worked solution `<think>steps</think><answer>n</answer>` (toy
world rows have one; MMK12 rows do not), `answer` = `<think>answer</think><answer>n</answer>`, the answer
alone in the same tags so the format reward sees no difference. The toy base policy's warm start
(`toy.build_base_policy`) keeps its own loop: its cached weights are keyed by that loop's recipe.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor
from tqdm import tqdm

from eureka_kit import ops, rollout
from eureka_kit.config import RunConfig
from eureka_kit.distributed import SINGLE_PROCESS
from eureka_kit.learner import TorchLearner
from eureka_kit.models import tokenizer_of
from eureka_kit.rollout import Rollouts
from eureka_kit.runs import RunDir
from eureka_kit.train import (
    ProblemStream,
    Run,
    _restore,
    _trainer_state,
    completion_hidden,
    load_problems,
    seed_everything,
)


def sft_completion(problem: dict, target: str) -> str:
    """The reference completion of one problem row for `sft_target` = cot | answer."""
    if target == "answer":
        return f"<think>answer</think><answer>{problem['answer']}</answer>"
    if not problem.get("solution"):
        raise ValueError(f"sft_target='cot': problem {problem.get('id')!r} has no worked `solution` (toy-world rows "
                         "have one, MMK12 rows do not); use sft_target='answer'")
    return problem["solution"]


def reference_batch(processor, problems: list[dict], cfg: RunConfig) -> Rollouts:
    """Teacher-forcing batch in the `Rollouts` layout: the problems' prompts (left-padded, as the rollouts
    encode them) with their reference completions + EOS (right-padded, completion_mask 1 up to EOS)."""
    prompt_ids, prompt_mask, mm = rollout.encode_prompts(processor, problems, cfg.prompt_template, cfg.multimodal,
                                                         cfg.max_prompt_len)
    tok = tokenizer_of(processor)
    texts = [sft_completion(p, cfg.sft_target) for p in problems]
    encoded = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    T = max(len(ids) for ids in encoded)
    completion_ids = torch.full((len(encoded), T), tok.pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((len(encoded), T), dtype=torch.long)
    for i, ids in enumerate(encoded):
        completion_ids[i, :len(ids)] = torch.tensor(ids)
        completion_mask[i, :len(ids)] = 1
    return Rollouts(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                    completion_mask=completion_mask, rollout_logp=torch.zeros(completion_ids.shape),
                    texts=texts, finish_reasons=["stop"] * len(texts), problem_index=torch.arange(len(texts)),
                    problems=problems, mm_inputs=mm)


def sft_loss(logp: Tensor, mask: Tensor, num_tokens: float | None = None) -> Tensor:
    """Masked next-token cross-entropy: -sum(mask * logp) / num_tokens.

    Args:
        logp: (B, T) log-probs of the target tokens (differentiable).
        mask: (B, T) 1 on completion tokens, 0 on padding.
        num_tokens: the optimizer batch's completion-token count (default: mask.sum()), so the losses of its
            micro-batches sum to the batch's token mean and gradient accumulation is exact.
    Returns:
        scalar loss.

    Example:
        sft_loss(torch.log(torch.tensor([[0.5, 0.25]])), torch.ones(1, 2))  # (ln 2 + ln 4) / 2
    """
    count = mask.sum() if num_tokens is None else num_tokens
    return -ops.masked_sum(logp, mask) / max(float(count), 1.0)


def _teacher_forced(policy, batch: Rollouts, rows: Tensor, cfg: RunConfig) -> tuple[Tensor, Tensor]:
    """(logp, hits) of completion rows `rows`: log-probs (b, T) of the reference tokens at temperature 1 and
    whether each is the greedy choice (b, T) bool. One backbone pass over prompt + completion."""
    hidden, weight, bias, targets = completion_hidden(policy, batch, rows, cfg)
    logp = ops.token_logprobs_from_hidden(hidden, weight, targets, chunk_size=cfg.logprob_chunk_size, bias=bias)
    with torch.no_grad():  # greedy predictions, chunked like the log-probs
        flat = hidden.detach().reshape(-1, hidden.shape[-1])
        preds = torch.cat([torch.nn.functional.linear(h, weight, bias).argmax(-1)
                           for h in flat.split(cfg.logprob_chunk_size)])
    return logp, preds.view(targets.shape) == targets


def sft(cfg: RunConfig, *, policy=None, processor=None, problems: list[dict] | None = None,
        progress: bool = True) -> Run:
    """Fine-tune on the reference completions of `problems` (default: the config's training problems) for
    `cfg.num_steps` optimizer steps of `cfg.train_batch_size` examples; returns the `Run`."""
    from eureka_kit import models

    gen = seed_everything(cfg.seed)
    if policy is None:
        policy, processor = models.load(cfg.model, trust_remote_code=cfg.trust_remote_code, seed=cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    policy.to(device).train()
    if cfg.freeze_vision:
        models.freeze_vision(policy)
    if cfg.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    stream = ProblemStream(problems if problems is not None else load_problems(cfg, subject=cfg.train_subject),
                           cfg.seed)

    learner = TorchLearner(policy, cfg, SINGLE_PROCESS, cfg.num_steps, device)  # AdamW + the lr schedule

    run_path = cfg.run_path()
    run = Run(cfg=cfg, path=run_path, policy=policy, processor=processor)
    start = 0
    if cfg.resume and RunDir(run_path).checkpoints():
        run_dir = RunDir(run_path)
        start = _restore(run_dir, learner, stream, gen) + 1
        run.history = run_dir.metrics().to_dict("records")
    else:
        run_dir = RunDir(run_path).create(cfg.to_dict())

    def checkpoint(step: int) -> None:
        run_dir.save_checkpoint(step, policy, state={**learner.state(), **_trainer_state(stream, gen)},
                                processor=processor)

    bad_steps = 0
    bar = tqdm(range(start, cfg.num_steps), desc=f"{cfg.preset}", disable=not progress, dynamic_ncols=False,
               ncols=120, initial=start, total=cfg.num_steps)
    for step in bar:
        t0 = time.perf_counter()
        batch = reference_batch(processor, stream.take(cfg.train_batch_size), cfg)
        mask = batch.completion_mask.float()  # (B, T)
        num_tokens = mask.sum().item()
        loss_sum, hits, nonfinite = 0.0, 0.0, 0
        for micro in torch.arange(len(batch.texts)).split(cfg.micro_batch_size):
            logp, greedy = _teacher_forced(policy, batch, micro, cfg)
            micro_mask = mask[micro].to(logp.device)
            loss = sft_loss(logp, micro_mask, num_tokens)  # micro-batch share of the batch's token mean
            nonfinite += not learner.backward(loss)
            loss_sum += loss.item()
            hits += (greedy.float() * micro_mask).sum().item()
        grad_norm = learner.step(nonfinite)  # None: a NaN/Inf gradient, the step was skipped
        skipped = grad_norm is None
        dt = time.perf_counter() - t0
        metrics = {"step": step, "loss/sft": loss_sum, "sft/token_accuracy": hits / max(num_tokens, 1.0),
                   "sft/num_tokens": num_tokens, "optim/grad_norm": float("nan") if skipped else grad_norm, "optim/skipped_steps": float(skipped),
                   "optim/lr": learner.lr, "perf/step_s": dt,
                   "perf/tokens_per_s": (batch.prompt_mask.sum().item() + num_tokens) / dt}
        run_dir.log_metrics(metrics)
        run.history.append(metrics)
        bar.set_postfix(loss=f"{loss_sum:.3f}", token_acc=f"{metrics['sft/token_accuracy']:.2f}")
        bad_steps = bad_steps + 1 if skipped else 0
        if bad_steps >= cfg.max_bad_steps:
            raise FloatingPointError(f"{bad_steps} consecutive SFT steps had a NaN/Inf gradient (last: step {step}); "
                                     f"the run stopped. Lower lr; checkpoints are in {run_dir.path / 'checkpoints'}.")
        if cfg.save_every and (step + 1) % cfg.save_every == 0:
            checkpoint(step)
    if start < cfg.num_steps:
        checkpoint(cfg.num_steps - 1)
    policy.eval()
    return run
