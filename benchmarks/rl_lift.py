"""Issue target: does RL raise greedy `math` test accuracy over the toy base policy, within a wall-clock budget?

For each seed: greedy accuracy of the base policy on the math test split (what `eureka-kit eval` scores), then
`train(RunConfig.from_preset(PRESET, **overrides))` -- the same call as `eureka-kit train --preset PRESET
--field value ...` -- then greedy accuracy of every checkpoint, timed by the run's own `perf/elapsed_s` (wall
seconds since train() started, checkpoint writes included; evaluating the checkpoints afterwards is not). Prints
one line per checkpoint and a summary table: base, last, best, and the lift of the last checkpoint written within
`--budget-s` seconds of training.

    python benchmarks/rl_lift.py --preset cpgd --seeds 0,1,2 --set num_steps=300 lr=3e-5 save_every=50

Results go into benchmarks/RESULTS.md (machine, date, numbers).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from eureka_kit.config import RunConfig
from eureka_kit.data import toyworld
from eureka_kit.engine import evaluate
from eureka_kit.engine.base_policy import load_policy
from eureka_kit.engine.checkpoints import load_weights
from eureka_kit.engine.loop import train
from eureka_kit.engine.runs import RunDir


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def greedy_accuracy(policy, processor, cfg: RunConfig, n_per_level: int) -> tuple[float, list[float]]:
    problems = toyworld.generate("test", "math", n_per_level, seed=cfg.seed)
    df = evaluate.sample_problems(policy, processor, problems, cfg, greedy=True)
    return float(df.successes.mean()), df.groupby("level").successes.mean().round(2).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpgd")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="RunConfig overrides")
    ap.add_argument("--eval-per-level", type=int, default=32, help="math test problems per level (32 = eval's split)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=600.0, help="training wall-clock budget for the lift column")
    ap.add_argument("--out", default="", help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        run_dir = Path(tempfile.mkdtemp(prefix=f"rl_lift_seed{seed}_"))
        cfg = RunConfig.from_preset(args.preset, **{**overrides, "seed": seed, "run_dir": str(run_dir)})
        policy, processor = load_policy(cfg.model, seed=seed)
        base, base_levels = greedy_accuracy(policy, processor, cfg, args.eval_per_level)
        print(f"seed {seed} base {base:.3f} {base_levels}", flush=True)
        t0 = time.perf_counter()
        train(cfg, policy=policy, processor=processor, progress=False)
        wall = time.perf_counter() - t0
        elapsed = RunDir(run_dir).metrics()["perf/elapsed_s"]  # training wall seconds up to each step
        curve = []
        for ckpt in (run_dir / "checkpoints").iterdir():
            step = int(ckpt.name.split("_")[1])
            load_weights(policy, ckpt)
            acc, levels = greedy_accuracy(policy, processor, cfg, args.eval_per_level)
            curve.append((step + 1, acc, levels, float(elapsed.iloc[step])))
        curve.sort()
        for step, acc, levels, t in curve:
            print(f"seed {seed} step {step} ({t:.0f} s of training) greedy {acc:.3f} {levels}", flush=True)
        in_budget = [c for c in curve if c[3] <= args.budget_s]
        results.append(dict(seed=seed, base=base, best=max(c[1] for c in curve), last=curve[-1][1], wall_s=wall,
                            budget=in_budget[-1] if in_budget else None, curve=curve))
    print(f"\n{args.preset} {' '.join(args.set)}  (torch threads {args.threads})")
    print(f"| seed | base greedy | last | best | training wall s | last checkpoint within {args.budget_s:.0f} s: "
          "step, s, greedy, lift |\n|---|---|---|---|---|---|")
    for r in results:
        b = r["budget"]
        within = f"{b[0]}, {b[3]:.0f} s, {b[1]:.3f}, {100 * (b[1] - r['base']):+.1f} pts" if b else "none"
        print(f"| {r['seed']} | {r['base']:.3f} | {r['last']:.3f} | {r['best']:.3f} | {r['wall_s']:.0f} | {within} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
