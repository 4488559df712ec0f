"""The toy base policy: a short SFT warm start of the tiny Qwen2 on worked toy-world solutions, cached on disk.

`build_base_policy(seed)` trains on `<think>steps</think><answer>n</answer>` solutions of the math train split
until greedy accuracy on a probe of train problems reaches a set level or a step cap (checked by step count,
never by a time budget, so it is deterministic) and saves the model+tokenizer
under `$EUREKA_KIT_CACHE` (default `~/.cache/eureka_kit`) keyed by (SFT config, model dims, seed,
package version, CPU vector unit). `sft` / `sft_step` are reusable by the RL loop's SFT baseline. `sample_pass_counts`
measures the base policy as the issue's targets state them (T=1, K samples per problem).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from eureka_kit.config import RunConfig
from eureka_kit.data import toyworld
from eureka_kit.data.prompts import prompt_text
from eureka_kit.engine.evaluate import sample_problems
from eureka_kit.models import TEXT_DIMS, build_toy_model, load
from eureka_kit.version import __version__


@dataclass(frozen=True)
class SFTConfig:
    """Warm-start recipe (AdamW 2e-3, batch 64, stop by step count)."""

    # Tuned: 600 steps sat on the edge of the arithmetic phase change (46% math accuracy on one machine, 18%
    # on another); 700 steps on the 2-core CPU: T=1, 16 samples, math test 37.7% per-sample accuracy, 30.7%
    # never solved, 31.3% solved in 1..7 of 16; OOD physics/chemistry/biology 1.7/3.2/5.5%.
    steps: int = 700
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    n_per_level: int = 1500
    levels: tuple[int, ...] = (0, 1, 2, 3, 4)  # the top level is never taught
    prompt_template: str = "none"
    num_threads: int = 2
    # Seeds cross the arithmetic phase change at different steps: after all 700 steps seed 2's base scored 59%
    # greedy on the math test, seeds 0 and 1 46% and 42%, which left RL very different headroom. So the build
    # stops once the policy is as skilled as the reference seed-0 base: every `check_every` steps from
    # `first_check` on, greedy accuracy on `probe_per_level` math *train* problems per level (all levels, the
    # untaught top one included) is measured, and the first check at or above `stop_at_accuracy` ends the
    # build. `steps` stays the cap and the schedule's length; 0 turns the stop off. Probe accuracy on CPU-2:
    # seed 0 0.47 at 650 steps, 0.54 at 700; seed 1 0.46, 0.51; seed 2 0.53 at 550 steps (0.66 at 700). So
    # 0.5 leaves the seed-0 and seed-1 bases as they were and stops seed 2 at 550 steps (math test 50%).
    stop_at_accuracy: float = 0.5
    first_check: int = 400
    check_every: int = 50
    probe_per_level: int = 32


def cache_dir() -> Path:
    return Path(os.environ.get("EUREKA_KIT_CACHE", "~/.cache/eureka_kit")).expanduser()


def encode_examples(tokenizer, examples: list[dict]) -> list[tuple[list[int], int]]:
    """(token ids of prompt + completion + eos, number of prompt tokens) per {"prompt", "completion"} dict."""
    out = []
    for ex in examples:
        p = tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
        c = tokenizer(ex["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((p + c, len(p)))
    return out


def collate(encoded: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are -100 on prompt and padding so only the completion is learned.

    Returns input_ids, attention_mask, labels: (B, T) int64.
    """
    T = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), T), pad_id)
    labels = torch.full((len(encoded), T), -100)
    mask = torch.zeros((len(encoded), T), dtype=torch.long)
    for i, (seq, n_prompt) in enumerate(encoded):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        labels[i, n_prompt:len(seq)] = torch.tensor(seq[n_prompt:])
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def sft_step(model, optimizer, batch: dict[str, torch.Tensor], grad_clip: float = 1.0) -> float:
    """One optimizer step of next-token cross-entropy on the labelled tokens; returns the loss."""
    model.train()
    loss = model(**batch).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


def sft(model, tokenizer, examples: list[dict], cfg: SFTConfig = SFTConfig(), *, seed: int = 0,
        progress: bool = True, should_stop: Callable[[int], bool] | None = None) -> list[float]:
    """SFT `model` in place on {"prompt", "completion"} examples for `cfg.steps` steps; returns the losses.

    Batches are drawn without replacement (reshuffled each epoch) from a generator seeded by `seed`.
    `should_stop(steps_done)`, if given, is asked after every step; True ends training there (so
    `len(losses)` is the number of steps run).
    """
    encoded = encode_examples(tokenizer, examples)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    # linear warm-up then cosine to 10% (a cool-down makes the stopping step less of a coin toss)
    def lr_mult(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_mult)
    order, pos, losses = torch.randperm(len(encoded), generator=gen), 0, []
    bar = tqdm(range(cfg.steps), desc="sft", disable=not progress)
    for _ in bar:
        if pos + cfg.batch_size > len(order):
            order, pos = torch.randperm(len(encoded), generator=gen), 0
        idx = order[pos:pos + cfg.batch_size].tolist()
        pos += cfg.batch_size
        losses.append(sft_step(model, opt, collate([encoded[i] for i in idx], tokenizer.pad_token_id),
                               cfg.grad_clip))
        sched.step()
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        if should_stop is not None and should_stop(len(losses)):
            break
    bar.close()
    model.eval()
    return losses


def sft_examples(tokenizer, problems: list[dict], template: str = "none") -> list[dict]:
    """{"prompt", "completion"} pairs from toy-world rows (their worked `solution`)."""
    return [dict(prompt=prompt_text(tokenizer, p, template), completion=p["solution"]) for p in problems]


def cache_key(cfg: SFTConfig, seed: int) -> str:
    """Hash of what determines the base policy's weights. The CPU's vector unit is part of it: float reductions
    differ between AVX2 and AVX512 kernels, so the accuracy-probe stop can end the build at another step (and
    `ATEN_CPU_CAPABILITY=avx2` on an AVX512 machine must not reuse that machine's own base)."""
    blob = json.dumps(dict(sft=asdict(cfg), model=TEXT_DIMS, seed=seed, version=__version__,
                           cpu=torch.backends.cpu.get_cpu_capability()), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _AccuracyStop:
    """`should_stop` for the base build: greedy accuracy on the train-split probe at each check (SFTConfig)."""

    def __init__(self, model, tokenizer, cfg: SFTConfig, seed: int):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.probe = toyworld.generate("train", "math", cfg.probe_per_level, seed=seed)
        self.history: dict[int, float] = {}  # steps done -> probe accuracy

    def __call__(self, steps_done: int) -> bool:
        cfg = self.cfg
        if (cfg.stop_at_accuracy <= 0 or steps_done < cfg.first_check or steps_done >= cfg.steps
                or steps_done % cfg.check_every):
            return False
        run_cfg = RunConfig.from_preset("grpo", prompt_template=cfg.prompt_template, max_len=48)
        self.model.eval()
        accuracy = float(sample_problems(self.model, self.tokenizer, self.probe, run_cfg, greedy=True)
                         .successes.mean())
        self.history[steps_done] = accuracy
        return accuracy >= cfg.stop_at_accuracy


def build_base_policy(seed: int = 0, cfg: SFTConfig = SFTConfig(), *, force: bool = False,
                      progress: bool = True, root: Path | None = None) -> Path:
    """Folder of the SFT'd toy base policy (model.safetensors + tokenizer); built once, then cached.

    Deterministic: same (cfg, seed, version) -> same problems and bit-identical weights (on one machine).
    """
    out = (root or cache_dir()) / "base_policy" / f"seed{seed}-{cache_key(cfg, seed)}"
    if out.exists() and not force:
        return out
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        model, tok = build_toy_model(seed=seed)
        problems = toyworld.generate("train", "math", cfg.n_per_level, seed=seed, levels=cfg.levels)
        stop = _AccuracyStop(model, tok, cfg, seed)
        losses = sft(model, tok, sft_examples(tok, problems, cfg.prompt_template), cfg, seed=seed,
                     progress=progress, should_stop=stop)
    finally:
        torch.set_num_threads(threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent))  # write then rename: a crash never leaves half a model
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "sft.json").write_text(json.dumps(dict(config=asdict(cfg), seed=seed, version=__version__,
                                                  final_loss=losses[-1], steps_run=len(losses),
                                                  probe_accuracy=stop.history), indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def load_policy(name: str, *, trust_remote_code: bool = False, seed: int = 0, dtype: torch.dtype | None = None):
    """`models.load` that also knows "toy": the SFT'd toy base policy of `seed`, built on first use."""
    if name == "toy":
        return load(str(build_base_policy(seed=seed)), dtype=dtype)
    return load(name, trust_remote_code=trust_remote_code, seed=seed, dtype=dtype)


def sample_pass_counts(model, tokenizer, problems: list[dict], k: int = 16, *, template: str = "none",
                       max_new_tokens: int = 48, seed: int = 0) -> list[int]:
    """Number of correct samples (accuracy reward) out of k at temperature 1, per problem.

    Samples through the package's rollout and evaluation path (`evaluate.sample_problems`), so these
    numbers are the ones training and the reports see.
    """
    cfg = RunConfig.from_preset("grpo", prompt_template=template, max_len=max_new_tokens, seed=seed)
    return sample_problems(model, tokenizer, problems, cfg, num_samples=k, seed=seed).successes.tolist()


def pass_stats(counts: list[int], k: int) -> dict[str, float]:
    """mean per-sample accuracy, fraction never solved, fraction solved in 1..k/2-1 of k samples."""
    n = len(counts)
    return dict(accuracy=sum(counts) / (n * k), never=sum(c == 0 for c in counts) / n,
                rare=sum(0 < c < k / 2 for c in counts) / n, always=sum(c == k for c in counts) / n)
