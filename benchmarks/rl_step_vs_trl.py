"""One RL step on CPU: eureka_kit `train()` vs TRL `GRPOTrainer`, same model, prompts, reward and config.

    .venv/bin/python benchmarks/rl_step_vs_trl.py [--rounds 3] [--steps 8] [--json out.json] [--with-baseline]

`--with-baseline` adds a third side, eureka_kit without the fast decode step (`sample_with_cache(...,
fast_decode=False)`: the model's own forward per token), alternated with the other two.
TRL is not a dependency of the package: run this with an interpreter that has `trl` (1.16 here) besides the
package's own environment.

Setup (both sides):
  * model: `eureka_kit.models.build_toy_model(seed=0)` -- the tiny Qwen2 (H128, L3, char vocab), *random init*
    (no SFT cache needed; a random-init model rarely picks EOS, and EOS is blocked anyway, see below);
  * prompts: toy-world `math` train problems rendered with `prompt_text(tok, p, "none")` (the chat template eureka
    uses), restricted to the most common prompt token length so both sides see the same shapes; TRL gets the same
    strings as a plain-text `prompt` column;
  * reward: `eureka_kit.data.rewards` (accuracy + format) on both sides (`make_reward_fn()` for TRL);
  * 8 prompts/step x 4 generations x 32 new tokens, *forced*: TRL via `generation_kwargs={"min_new_tokens": 32}`;
    eureka's `train` has no min-new-tokens knob, so the model's own `generation_config.min_new_tokens = 32`
    (transformers merges it into every `generate` call; eureka's lean sampling loop honours it the same way) --
    mean completion lengths are recorded on both sides;
  * one optimizer update per step (32 completions per optimizer batch and micro-batch), lr 1e-4, AdamW
    betas (0.9, 0.999), grad clip 1, beta (reference KL) 0, ppo-clip eps 0.2, token-mean aggregation
    (TRL `loss_type="dapo"`, eureka preset `grpo` with `aggregation="token-mean"`), temperature 1, top_p 1, top_k 0;
  * torch threads = 2 on both sides (and OMP/MKL_NUM_THREADS=2); `--threads 1` runs both sides on one thread
    (on a shared machine two threads stall at every barrier and the numbers then measure the neighbours).

Timing: each side runs in a fresh subprocess per round, alternated A/B/A/B (ours, TRL, ours, TRL, ...) in one
process tree. Per-step time = wall time between the starts of consecutive steps (eureka: entry of the step's
`collect_batch`; TRL: `on_step_begin`), so everything a step does is counted (generation, reward, log-prob passes,
backward, optimizer, metric logging, eureka's per-step parquet/problem bookkeeping, TRL's logging). Model/trainer
construction and step 0 (warm-up) are excluded; the run has one extra step so the last measured step has an end.
The per-step median over all rounds is reported; on a shared machine the numbers are noisy, hence A/B alternation.

Before it, the per-round ratios (TRL / ours round medians: the sides of a round ran back to back), their geometric
mean with a 95% interval over rounds and whether that interval clears 2.0 (met / not met / inconclusive).
Last line: `rl_step_speedup_vs_trl=<TRL median s/step / ours median s/step>`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = 2
SIDES = ("ours", "ours_no_fast_decode", "trl")
PROMPTS, GENS, NEW_TOKENS, LR = 8, 4, 32, 1e-4
TARGET = 2.0  # the speedup the throughput issue asks for
NUM_PROBLEMS = 2000


def _set_threads() -> None:
    import torch

    torch.set_num_threads(THREADS)


def _problems(tok) -> list[dict]:
    """Toy-world math train problems whose rendered prompt has the modal token length (cycled to NUM_PROBLEMS)."""
    from collections import Counter

    from eureka_kit.data import toyworld
    from eureka_kit.data.prompts import prompt_text

    pool = toyworld.load("train", "math", seed=0)
    lens = [len(tok(prompt_text(tok, p, "none"), add_special_tokens=False)["input_ids"]) for p in pool]
    modal = Counter(lens).most_common(1)[0][0]
    pool = [p for p, n in zip(pool, lens, strict=True) if n == modal]
    return [pool[i % len(pool)] for i in range(NUM_PROBLEMS)]


def _model():
    from eureka_kit.models import build_toy_model

    model, tok = build_toy_model(seed=0)
    return model, tok


# ---------------------------------------------------------------------------------------------
# Workers (one per subprocess).


def worker_ours(steps: int, profile: str | None, fast_decode: bool = True) -> dict:
    _set_threads()
    import torch

    from eureka_kit.config import RunConfig
    from eureka_kit.engine import loop as train_mod
    from eureka_kit.engine import rollout, runs

    if not fast_decode:  # the lean loop with the model's own forward per token
        lean_loop = rollout.sample_with_cache
        rollout.sample_with_cache = lambda *a, **k: lean_loop(*a, **{**k, "fast_decode": False})

    model, tok = _model()
    model.generation_config.min_new_tokens = NEW_TOKENS  # no min-length knob in train(): force via the model
    problems = _problems(tok)
    run_dir = tempfile.mkdtemp(prefix="rl_vs_trl_ours_")
    cfg = RunConfig.from_preset(
        "grpo", rollout_batch_size=PROMPTS, group_size=GENS, train_batch_size=PROMPTS * GENS,
        micro_batch_size=PROMPTS * GENS, update_epochs=1, max_len=NEW_TOKENS, lr=LR, kl_coef=0.0,
        aggregation="token-mean", eps_low=0.2, eps_high=0.2, adam_betas=(0.9, 0.999), weight_decay=0.0,
        grad_clip=1.0, temperature=1.0, top_p=1.0, prompt_template="none", num_steps=steps, run_dir=run_dir,
        seed=0, save_every=0)
    begins: list[float] = []
    lens: list[float] = []
    orig_collect = train_mod.collect_batch
    orig_log = runs.RunDir.log_metrics

    def collect_batch(*a, **k):
        begins.append(time.perf_counter())
        return orig_collect(*a, **k)

    def log_metrics(self, metrics):
        lens.append(metrics.get("rollout/len_mean"))
        return orig_log(self, metrics)

    train_mod.collect_batch = collect_batch
    runs.RunDir.log_metrics = log_metrics
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    train_mod.train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    wall = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    return {"side": "ours" if fast_decode else "ours_no_fast_decode", "begins": begins, "len_mean_per_step": lens, "train_wall_s": wall,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in model.parameters())}


def worker_trl(steps: int) -> dict:
    _set_threads()
    import dataclasses

    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from eureka_kit.data.prompts import prompt_text
    from eureka_kit.data.rewards import make_reward_fn

    model, tok = _model()
    problems = _problems(tok)
    ds = Dataset.from_list([{"prompt": prompt_text(tok, p, "none"), "answer": str(p["answer"])} for p in problems])
    wanted = dict(
        output_dir=tempfile.mkdtemp(prefix="rl_vs_trl_trl_"), per_device_train_batch_size=PROMPTS * GENS,
        gradient_accumulation_steps=1, num_generations=GENS, max_completion_length=NEW_TOKENS, num_iterations=1,
        steps_per_generation=1, learning_rate=LR, beta=0.0, epsilon=0.2, loss_type="dapo", temperature=1.0,
        top_p=1.0, top_k=0, max_steps=steps, logging_steps=1, report_to="none", use_cpu=True, bf16=False,
        save_strategy="no", use_vllm=False, seed=0, disable_tqdm=True, dataloader_num_workers=0,
        adam_beta1=0.9, adam_beta2=0.999, weight_decay=0.0, max_grad_norm=1.0,
        generation_kwargs={"min_new_tokens": NEW_TOKENS})
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    dropped = sorted(k for k in wanted if k not in fields)
    args = GRPOConfig(**{k: v for k, v in wanted.items() if k in fields})
    begins: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, a, s, c, **kw):
            begins.append(time.perf_counter())

    trainer = GRPOTrainer(model=model, reward_funcs=[make_reward_fn()], args=args, train_dataset=ds,
                          processing_class=tok, callbacks=[StepTimer()])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    lens = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {"side": "trl", "begins": begins, "len_mean_per_step": lens, "train_wall_s": wall,
            "dropped_config": dropped, "trl": trl.__version__, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------


def _loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return None


def run_side(side: str, steps: int, profile: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, __file__, "--worker", side, "--steps", str(steps), "--worker-out", str(out),
               "--threads", str(THREADS)]
        if profile:
            cmd += ["--profile", profile]
        env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS),
                   TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
        t0, load_before = time.perf_counter(), _loadavg()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"{side} worker failed (rc {proc.returncode})")
        res = json.loads(out.read_text())
        res["process_wall_s"] = time.perf_counter() - t0
        res["loadavg_1min"] = [load_before, _loadavg()]  # before and after the side's process
    b = res["begins"]
    res["step_s"] = [b[i + 1] - b[i] for i in range(len(b) - 1)]  # step i = begin(i) .. begin(i+1)
    res["measured_step_s"] = res["step_s"][1:]  # drop step 0 (warm-up)
    return res


def _per_round_speedup(trl_rounds: list[float], ours_rounds: list[float]) -> dict:
    """TRL / ours per round (the two sides ran back to back, so a round shares the host's state), their geometric
    mean and its 95% Student-t interval (on the log ratios; NaN with one round), and whether the interval clears
    TARGET: "met" (low >= TARGET), "not met" (high < TARGET) or "inconclusive"."""
    import math

    from eureka_kit.workbench.evidence import mean_ci

    ratios = [t / o for t, o in zip(trl_rounds, ours_rounds, strict=True)]
    iv = mean_ci([math.log(x) for x in ratios])
    low, high = math.exp(iv.low), math.exp(iv.high)
    verdict = "inconclusive" if math.isnan(low) else "met" if low >= TARGET else "not met" if high < TARGET \
        else "inconclusive"
    return {"ratios": ratios, "geomean": math.exp(iv.mean), "ci_low": low, "ci_high": high, "verdict": verdict}


def main() -> None:
    global THREADS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="A/B rounds (each side a fresh subprocess per round)")
    ap.add_argument("--steps", type=int, default=8, help="measured steps per side per round (+ warm-up + 1)")
    ap.add_argument("--threads", type=int, default=THREADS, help="torch/OMP threads of each side")
    ap.add_argument("--only", choices=SIDES, help="run one side only (debugging)")
    ap.add_argument("--with-baseline", action="store_true",
                    help="also run eureka_kit without the fast decode step (a third alternated side)")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--profile", help=argparse.SUPPRESS)
    args = ap.parse_args()
    THREADS = args.threads

    if args.worker:
        res = worker_trl(args.steps) if args.worker == "trl" else \
            worker_ours(args.steps, args.profile, fast_decode=args.worker == "ours")
        Path(args.worker_out).write_text(json.dumps(res))
        return

    total_steps = args.steps + 2  # warm-up step 0, measured steps, one more so the last measured step has an end
    sides = [args.only] if args.only else ["ours", "ours_no_fast_decode", "trl"] if args.with_baseline else \
        ["ours", "trl"]
    results: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(args.rounds):
        for side in sides:  # A/B/A/B
            res = run_side(side, total_steps)
            results[side].append(res)
            ms = res["measured_step_s"]
            print(f"round {r} {side:12s}: median {statistics.median(ms):.3f} s/step over {len(ms)} steps "
                  f"(min {min(ms):.3f}, max {max(ms):.3f}); warm-up {res['step_s'][0]:.3f} s; "
                  f"len_mean {statistics.mean(x for x in res['len_mean_per_step'] if x is not None):.1f}; "
                  f"process {res['process_wall_s']:.1f} s; load avg {res['loadavg_1min']}", flush=True)

    summary = {}
    for side in sides:
        all_steps = [x for res in results[side] for x in res["measured_step_s"]]
        per_round = [statistics.median(res["measured_step_s"]) for res in results[side]]
        lens = [x for res in results[side] for x in res["len_mean_per_step"] if x is not None]
        summary[side] = {"median_s": statistics.median(all_steps), "mean_s": statistics.mean(all_steps),
                         "min_s": min(all_steps), "round_medians_s": per_round, "n_steps": len(all_steps),
                         "len_mean": statistics.mean(lens)}
    params = next((res[0].get("params") for res in results.values() if res[0].get("params")), "?")
    print()
    print(f"config: {PROMPTS} prompts x {GENS} generations x {NEW_TOKENS} new tokens (forced), 1 update/step, "
          f"lr {LR}, beta 0, token-mean/dapo, {THREADS} threads; random-init toy Qwen2 ({params} params); "
          f"{args.rounds} rounds x {args.steps} steps, sides alternated in each round")
    print("| side | median s/step | mean s/step | min s/step | round medians | mean completion length |")
    print("|---|---:|---:|---:|---|---:|")
    names = {"ours": "eureka_kit train()", "ours_no_fast_decode": "eureka_kit train(), no fast decode step",
             "trl": "TRL GRPOTrainer"}
    for side in sides:
        s = summary[side]
        print(f"| {names[side]} | {s['median_s']:.3f} | {s['mean_s']:.3f} | {s['min_s']:.3f} | "
              f"{', '.join(f'{x:.3f}' for x in s['round_medians_s'])} | {s['len_mean']:.1f} |")
    out = {"summary": summary, "rounds": results, "config": {
        "prompts": PROMPTS, "generations": GENS, "new_tokens_forced": NEW_TOKENS, "lr": LR, "threads": THREADS,
        "rounds": args.rounds, "steps": args.steps,
        "model": "build_toy_model(seed=0), random init"}}
    if "ours" in summary and "trl" in summary:
        out["rl_step_speedup_vs_trl"] = summary["trl"]["median_s"] / summary["ours"]["median_s"]
        out["per_round_speedup"] = _per_round_speedup(summary["trl"]["round_medians_s"],
                                                      summary["ours"]["round_medians_s"])
    if "ours" in summary and "ours_no_fast_decode" in summary:
        out["fast_decode_step_speedup"] = summary["ours_no_fast_decode"]["median_s"] / summary["ours"]["median_s"]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if "fast_decode_step_speedup" in out:
        print(f"fast_decode_step_speedup={out['fast_decode_step_speedup']:.3f}")
    if "per_round_speedup" in out:
        r = out["per_round_speedup"]
        print(f"per-round speedup (TRL / ours, round medians, paired by round): "
              f"{', '.join(f'{x:.3f}' for x in r['ratios'])}; geometric mean {r['geomean']:.3f}, 95% CI "
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] over {len(r['ratios'])} rounds; >= {TARGET}: {r['verdict']}")
    if "rl_step_speedup_vs_trl" in out:
        print(f"rl_step_speedup_vs_trl={out['rl_step_speedup_vs_trl']:.3f}")


if __name__ == "__main__":
    main()
