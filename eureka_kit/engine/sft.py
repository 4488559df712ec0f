"""`sft(cfg) -> Run`: supervised fine-tuning on reference completions, on the RL loop's plumbing.

The SFT arm of the RL-vs-SFT comparison (notebook 13) shares everything with `loop.train` but the update:
the same `RunConfig` (`sft_target`, `train_batch_size` examples per optimizer step, `micro_batch_size` per
forward, lr schedule, AdamW), the same seeding, problem stream, prompts (`batch.encode_prompts`), learner
(`learner.make_learner`: plain torch, or DeepSpeed ZeRO-2/3 by `zero_stage`), run directory, checkpoints and
`resume` (`checkpoints.py`), and the same start, bad-step guard and progress bar (`session.py`). Under torchrun it runs data-parallel as `train` does
(`distributed.py`): each rank takes its contiguous share of a step's examples, rank 0 writes. The loss is the
masked next-token cross-entropy of the completion tokens, averaged over the optimizer batch's tokens (HF's
`labels` loss; under several processes, over the tokens of every rank's share), with log-probs from the
chunked, fused head of `ops` (never a [B, T, V] fp32 tensor) at temperature 1.

Targets (`sft_target`): `cot` = the row's worked solution `<think>steps</think><answer>n</answer>` (toy
world rows have one; MMK12 rows do not), `answer` = `<think>answer</think><answer>n</answer>`, the answer
alone in the same tags so the format reward sees no difference. The toy base policy's warm start
(`base_policy.build_base_policy`) keeps its own loop: its cached weights are keyed by that loop's recipe.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from eureka_kit.algos import ops
from eureka_kit.config import RunConfig
from eureka_kit.data.problems import ProblemStream, load_problems
from eureka_kit.engine.batch import Rollouts, encode_prompts
from eureka_kit.engine.checkpoints import open_run_dir, save_checkpoint
from eureka_kit.engine.distributed import init_world
from eureka_kit.engine.learner import make_learner
from eureka_kit.engine.logprobs import completion_hidden
from eureka_kit.engine.runs import Run
from eureka_kit.engine.session import BadSteps, finish, progress_bar, start_policy
from eureka_kit.models import tokenizer_of


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
    prompt_ids, prompt_mask, mm = encode_prompts(processor, problems, cfg.prompt_template, cfg.multimodal,
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
                    completion_mask=completion_mask, behavior_logp=torch.zeros(completion_ids.shape),
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
    if hasattr(weight, "ds_id"):  # DeepSpeed ZeRO-3: the head's weight is whole only inside its module's call
        logits = policy.get_output_embeddings()(hidden.to(weight.dtype))
        logp = ops.token_logprobs_from_logits(logits, targets, chunk_size=cfg.logprob_chunk_size)
        return logp, logits.detach().argmax(-1) == targets
    logp = ops.token_logprobs_from_hidden(hidden, weight, targets, chunk_size=cfg.logprob_chunk_size, bias=bias)
    with torch.no_grad():  # greedy predictions, chunked like the log-probs
        flat = hidden.detach().reshape(-1, hidden.shape[-1])
        preds = torch.cat([torch.nn.functional.linear(h, weight, bias).argmax(-1)
                           for h in flat.split(cfg.logprob_chunk_size)])
    return logp, preds.view(targets.shape) == targets


def sft(cfg: RunConfig, *, policy=None, processor=None, problems: list[dict] | None = None,
        progress: bool = True) -> Run:
    """Fine-tune on the reference completions of `problems` (default: the config's training problems) for
    `cfg.num_steps` optimizer steps of `cfg.train_batch_size` examples; returns the `Run`.

    Under torchrun each rank takes its contiguous share of every step's examples and divides its loss by the
    token count summed over the ranks, so the summed gradient is the one-process gradient (`distributed.py`);
    `zero_stage` 2/3 puts the optimizer in DeepSpeed ZeRO (`learner.py`)."""
    world, device = init_world(cfg, rollouts=False)  # one process unless launched by torchrun/deepspeed
    gen, policy, processor = start_policy(cfg, world, device, policy, processor)  # as in train
    stream = ProblemStream(problems if problems is not None else load_problems(cfg, subject=cfg.train_subject),
                           cfg.seed)
    learner = make_learner(policy, cfg, world, cfg.num_steps, device)  # AdamW + the lr schedule: torch or ZeRO
    run_dir, start, history = open_run_dir(cfg, world, learner, stream, gen)  # fresh, or resumed
    run = Run(cfg=cfg, path=cfg.run_path(), history=history, policy=policy, processor=processor)

    bad_steps = BadSteps(cfg.max_bad_steps, lambda count, step: (
        f"{count} consecutive SFT steps had a NaN/Inf gradient (last: step {step}); the run stopped. Lower lr; "
        f"checkpoints are in {run_dir.path / 'checkpoints'}."))
    bar = progress_bar(cfg, start, world, progress)
    for step in bar:
        t0 = time.perf_counter()
        batch = reference_batch(processor, world.shard(stream.take(cfg.train_batch_size)), cfg)  # this rank's share
        mask = batch.completion_mask.float()  # (b, T)
        num_tokens = world.sum(mask.sum().item())  # the whole batch's: the ranks' losses sum to its token mean
        loss_sum, hits, nonfinite = 0.0, 0.0, 0
        micros = torch.arange(len(batch.texts)).split(cfg.micro_batch_size)
        for i, micro in enumerate(micros):
            logp, greedy = _teacher_forced(policy, batch, micro, cfg)
            micro_mask = mask[micro].to(logp.device)
            loss = sft_loss(logp, micro_mask, num_tokens)  # micro-batch share of the batch's token mean
            nonfinite += not learner.backward(loss, last=i == len(micros) - 1)
            loss_sum += loss.item()
            hits += (greedy.float() * micro_mask).sum().item()
        grad_norm = learner.step(nonfinite)  # gradients summed over ranks; None: a NaN/Inf on some rank, skipped
        skipped = grad_norm is None
        dt = time.perf_counter() - t0
        # Each rank's loss is its share of the global token mean, so the sum over ranks is the batch's loss.
        metrics = {"step": step, "loss/sft": world.sum(loss_sum),
                   "sft/token_accuracy": world.sum(hits) / max(num_tokens, 1.0), "sft/num_tokens": num_tokens,
                   "optim/grad_norm": float("nan") if skipped else grad_norm, "optim/skipped_steps": float(skipped),
                   "optim/lr": learner.lr, "perf/step_s": dt,
                   "perf/tokens_per_s": (batch.prompt_mask.sum().item() + mask.sum().item()) / dt}
        metrics = world.reduce_metrics(metrics, num_responses=len(batch.texts))  # perf: slowest rank, summed rates
        run_dir.log_metrics(metrics)
        run.history.append(metrics)
        bar.set_postfix(loss=f"{metrics['loss/sft']:.3f}", token_acc=f"{metrics['sft/token_accuracy']:.2f}")
        bad_steps.record(skipped, step)
        if cfg.save_every and (step + 1) % cfg.save_every == 0:
            save_checkpoint(run_dir, step, policy, processor, learner, stream, gen)
    finish(run_dir, cfg, start, policy, processor, learner, stream, gen, world)
    policy.eval()
    return run
