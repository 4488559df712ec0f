"""The toy-world report's runs: evaluate the toy base policy, train each preset, evaluate again, render.

The first part of the README's main job (`workbench.suite` runs the rest): an ablation on the CPU toy world.
Each preset trains from the same base (same seed, same prompts, same off-policy pressure: several optimizer
steps per rollout at a high learning rate), and is evaluated in-domain (`math`) and out-of-domain (`physics`,
`chemistry`, `biology`); `report.toy_page` renders the page from the run directories and evaluations.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from eureka_kit.config import RunConfig
from eureka_kit.engine import evaluate
from eureka_kit.engine.base_policy import load_policy
from eureka_kit.engine.loop import train
from eureka_kit.workbench.report import toy_page

# Off-policy pressure: 64 responses per rollout, 4 minibatches x 2 epochs = 8 optimizer
# steps per rollout. Calibrated on the 700-step toy base: at lr 1e-4 GRPO's max token ratio reached 72 where
# CPGD's stayed near 17; at lr 3e-4 and above every preset collapsed to ~0 accuracy within 20 steps.
TOY_PRESSURE = dict(rollout_batch_size=8, group_size=8, train_batch_size=16, micro_batch_size=16,
                    update_epochs=2, max_len=48, lr=1e-4, num_steps=40, reward_timeout=2.0)


def toy_report(out_dir: str | Path = "reports/toy_world", presets: tuple[str, ...] = ("grpo", "grpo_kl", "cpgd"),
               *, seed: int = 0, eval_samples: int = 8, progress: bool = True, **overrides) -> Path:
    """Run the toy-world ablation and write `out_dir/index.html`. Returns the page's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    settings = {**TOY_PRESSURE, **overrides}
    base_policy, tok = load_policy("toy", seed=seed)
    eval_cfg = RunConfig.from_preset(presets[0], seed=seed, **settings)

    print("evaluating the base policy ...", flush=True)
    base_problems, base_summary = evaluate.evaluate(base_policy, tok, eval_cfg, num_samples=eval_samples, progress=progress)
    runs, after_problems, after_summary = {}, {}, {}
    for preset in presets:
        cfg = RunConfig.from_preset(preset, seed=seed, run_dir=str(out_dir / "runs" / preset), **settings)
        run = train(cfg, policy=copy.deepcopy(base_policy), processor=tok, progress=progress)
        runs[preset] = run
        after_problems[preset], after_summary[preset] = evaluate.evaluate(run.policy, tok, cfg, num_samples=eval_samples,
                                                                          progress=progress)
    elapsed = time.perf_counter() - started
    return toy_page(out_dir, {name: run.dir for name, run in runs.items()}, (base_problems, base_summary),
                    {name: (after_problems[name], after_summary[name]) for name in runs},
                    settings=settings, presets=presets, seed=seed, eval_samples=eval_samples, elapsed=elapsed)
