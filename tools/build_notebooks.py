"""Write notebooks/*.ipynb (outputs stripped) from the cell lists below: the notebooks' source of truth.

    .venv/bin/python tools/build_notebooks.py

Each notebook: a title, one cell tagged `parameters` (papermill), a validation cell, package calls,
plotly figures, and a final "what this shows" cell whose sentences are computed from the results.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "notebooks"

RL_PARAMS = '''model: str = "toy"  # 'toy' or a local transformers model folder
data_path: str = ""  # local MMK12 folder; empty: the toy world
num_steps: int = {num_steps}  # RL steps per arm
rollout_batch_size: int = {rollout_batch_size}  # prompts per step
group_size: int = {group_size}  # responses per prompt
minibatches: int = {minibatches}  # optimizer steps per rollout and epoch (off-policy pressure)
update_epochs: int = {update_epochs}  # passes over each rollout
lr: float = {lr}  # learning rate
max_len: int = {max_len}  # max response tokens
run_root: str = "runs/notebooks"  # where run directories go
progress: bool = False  # console progress bars'''

RL_RULES = '''model=P.model_name, data_path=P.optional_dir, num_steps=P.positive_int,
    rollout_batch_size=P.positive_int, group_size=P.positive_int, minibatches=P.positive_int,
    update_epochs=P.positive_int, lr=P.positive_float, max_len=P.positive_int, run_root=P.output_dir,
    progress=P.boolean'''

RL_DICT = '''model=model, data_path=data_path, num_steps=num_steps, rollout_batch_size=rollout_batch_size,
         group_size=group_size, minibatches=minibatches, update_epochs=update_epochs, lr=lr, max_len=max_len,
         run_root=run_root, progress=progress'''

SETTINGS = '''settings = W.rl_settings(**{k: params[k] for k in ("num_steps", "rollout_batch_size", "group_size",
                                                  "minibatches", "update_epochs", "lr", "max_len", "model",
                                                  "data_path")})'''

# Calibrated on the 700-step toy base (2026-11-27): at lr 1e-4, 4 minibatches x 2 epochs GRPO grows a ratio
# tail (max 72) that CPGD keeps near 17; at 3e-4 and above every arm collapses within 20 steps.
DEFAULTS = dict(num_steps=40, rollout_batch_size=8, group_size=8, minibatches=4, update_epochs=2, lr=1e-4, max_len=48)

IMPORTS = '''import pandas as pd

from eureka_kit.workbench import notebook_params as P
from eureka_kit.workbench import viz
from eureka_kit.workbench import arms as W
from eureka_kit.config import RunConfig'''


def params(extra: str = "", **defaults) -> str:
    return RL_PARAMS.format(**{**DEFAULTS, **defaults}) + ("\n" + extra if extra else "")


def validate(extra_dict: str = "", extra_rules: str = "") -> str:
    d = RL_DICT + (",\n         " + extra_dict if extra_dict else "")
    r = RL_RULES + (",\n    " + extra_rules if extra_rules else "")
    return f"params = P.validate(\n    dict({d}),\n    {r})\n{SETTINGS}\nsettings"


def nb(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    out = []
    for kind, text in cells:
        text = text.strip("\n")
        if kind == "md":
            out.append(new_markdown_cell(text))
        else:
            cell = new_code_cell(text)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            out.append(cell)
    for i, cell in enumerate(out):
        cell["id"] = f"cell-{i:02d}"  # stable ids: rebuilding leaves unchanged notebooks byte-identical
    book = new_notebook(cells=out)
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book.metadata["language_info"] = {"name": "python"}
    return book


# =============================================================================================
TOUR = [
    ("md", r"""
# 00 — A tour: REINFORCE → group baseline → PPO clip → CPGD

One rung per step, each a single change of the previous rung's configuration (the table below is computed
from the configs, not written by hand). Every rung trains the same SFT'd toy base policy with the same seed
and off-policy pressure (several optimizer steps per rollout), then you check your understanding in an
exercise cell that asserts.
"""),
    ("params", params('seed: int = 0  # one seed per rung')),
    ("code", IMPORTS + "\nfrom eureka_kit.algos import advantages, losses\nimport torch\n\n"
     + validate("seed=seed", "seed=P.non_negative_int")),
    ("code", '''
# The ladder: each rung overrides one slot of the previous one.
root = W.run_root(run_root, "00_tour")
def rung(name, preset, **change):
    return RunConfig.from_preset(preset, seed=seed, run_dir=str(root / name), **settings, **change)
rungs = {
    "reinforce": rung("reinforce", "pg", advantage_estimator="none"),
    "group_baseline": rung("group_baseline", "pg"),
    "ppo_clip": rung("ppo_clip", "pg", surrogate="ppo_clip"),
    "cpgd": rung("cpgd", "cpgd"),
}
W.config_diff(rungs)
'''),
    ("code", '''
base, tok = W.load_base(model, seed=seed)
runs = {}
'''),
    ("md", r"""
## Rung 1 — REINFORCE: $A_i = R_i$

$$\nabla J = \mathbb{E}\Big[\sum_t R\,\nabla_\theta \log \pi_\theta(y_t \mid x, y_{<t})\Big], \qquad
\mathcal{L} = -\frac{1}{N}\sum_{i,t} R_i \,\log\frac{\pi_\theta}{\pi_{\text{old}}}(y_{i,t})$$

No baseline: every sampled response with a positive reward is pushed up, so the gradient's variance is large
and even a group where all answers are correct (nothing to learn) produces a push.
"""),
    ("code", '''
runs["reinforce"] = W.train_arm(rungs["reinforce"], base, tok, progress=progress)
viz.training_curves(W.histories(runs), {"reward/accuracy": "accuracy", "adv/abs_max": "max |advantage|"})
'''),
    ("code", '''
# Exercise 1: with advantage_estimator="none", what is the advantage of each response? Fill in, then run.
rewards = torch.tensor([1.5, 0.0, 0.5, 1.5])
my_answer = rewards.clone()  # YOUR ANSWER
assert torch.equal(advantages.compute(rewards, 4, "none"), my_answer), "REINFORCE uses the reward itself"
print("exercise 1 ok")
'''),
    ("md", r"""
## Rung 2 — group baseline (GRPO's advantage): $A_i = \dfrac{R_i - \operatorname{mean}(R_{\text{group}})}{\operatorname{std}(R_{\text{group}}) + \varepsilon}$

Sample $K$ responses per prompt and compare each reward to its group's: the advantages of a group sum to zero,
and a group where every response got the same reward contributes nothing.
"""),
    ("code", '''
runs["group_baseline"] = W.train_arm(rungs["group_baseline"], base, tok, progress=progress)
viz.training_curves(W.histories(runs), {"reward/accuracy": "accuracy", "adv/abs_max": "max |advantage|",
                                        "reward/frac_zero_std": "groups with zero reward spread"})
'''),
    ("code", '''
# Exercise 2: a group of 4 with rewards [1, 0, 0, 1] and one with [1, 1, 1, 1].
A = advantages.compute(torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1]), 4, "grpo")
my_group_sums = torch.tensor([0.0, 0.0])  # YOUR ANSWER: the sum of advantages in each group
my_second_group = torch.zeros(4)  # YOUR ANSWER: the advantages of the all-correct group
assert torch.allclose(A.view(2, 4).sum(1), my_group_sums, atol=1e-6)
assert torch.allclose(A[4:], my_second_group)
print("exercise 2 ok")
'''),
    ("md", r"""
## Rung 3 — PPO clip: $\mathcal{L}_t = -\min\big(r_t A,\ \operatorname{clip}(r_t, 1-\epsilon, 1+\epsilon) A\big)$, $r_t = \pi_\theta/\pi_{\text{old}}$

With several optimizer steps per rollout the policy moves away from the one that sampled the data. The clip
stops the gradient of a token once its ratio has moved past $1\pm\epsilon$ in the direction the advantage wants.
"""),
    ("code", '''
runs["ppo_clip"] = W.train_arm(rungs["ppo_clip"], base, tok, progress=progress)
viz.training_curves(W.histories(runs), {"reward/accuracy": "accuracy", "policy/ratio_max": "max token ratio",
                                        "policy/clipfrac": "clip fraction"})
'''),
    ("code", '''
# Exercise 3: a token with A = +1 whose ratio is already 1.5 (eps = 0.2). Does it still get a gradient?
log_ratio = torch.tensor([[0.4054651]], requires_grad=True)  # ln 1.5
loss, info = losses.ppo_clip_loss(log_ratio, torch.tensor([[1.0]]), 0.2, 0.2)
loss.sum().backward()
my_gradient = 0.0  # YOUR ANSWER
my_clipped_high = True  # YOUR ANSWER
assert abs(log_ratio.grad.item() - my_gradient) < 1e-9 and bool(info["clipped_high"].item()) == my_clipped_high
print("exercise 3 ok")
'''),
    ("md", r"""
## Rung 4 — CPGD: clip the log-ratio, and pull the policy back with a drift term

$$\mathcal{L} = -\min\big(\delta_t A,\ \operatorname{clip}(\delta_t, \ln(1-\epsilon), \ln(1+\epsilon))A\big)
+ \alpha\,\min(\operatorname{sg}(r_t) - 1,\ c)\,\log\pi_\theta(y_t), \qquad \delta_t = \log r_t$$

The surrogate is linear in the log-ratio (no $r_t$ factor that can explode when $A<0$), and the drift term's
gradient is that of the forward KL$(\pi_{\text{old}}\Vert\pi_\theta)$, capped at $c$.
"""),
    ("code", '''
runs["cpgd"] = W.train_arm(rungs["cpgd"], base, tok, progress=progress)
hist = W.histories(runs)
viz.training_curves(hist, {"reward/accuracy": "accuracy", "policy/ratio_max": "max token ratio",
                           "policy/clipfrac": "clip fraction", "policy/entropy": "entropy"})
'''),
    ("code", '''
# Exercise 4: replay CPGD's last step. Which tokens does CPG clip? Derive the mask yourself from the
# saved log-ratios, advantages and the clip bounds ln(1 - eps_low), ln(1 + eps_high).
import math
import numpy as np
from eureka_kit.workbench.replay import replay_step

step = runs["cpgd"].dir.rollout_steps()[-1]
r = replay_step(runs["cpgd"].dir, step)
A = np.broadcast_to(runs["cpgd"].dir.rollouts(step).sort_values("sample").advantage.to_numpy()[:, None], r.mask.shape)
my_high = (A > 0) & (r.log_ratio > math.log(1.2)) & (r.mask > 0)  # YOUR ANSWER
my_low = (A < 0) & (r.log_ratio < math.log(0.8)) & (r.mask > 0)  # YOUR ANSWER
assert (my_high == r.clipped_high).all() and (my_low == r.clipped_low).all()
print(f"exercise 4 ok: {int(my_high.sum())} tokens clipped high, {int(my_low.sum())} low at step {step}")
'''),
    ("code", '''
W.log_ratio_histograms({name: W.token_log_ratios(run.dir) for name, run in runs.items()})
'''),
    ("code", '''
table = W.arm_table(hist, {"reward/accuracy": "accuracy", "policy/ratio_max": "peak ratio",
                           "policy/clipfrac": "clip frac", "policy/entropy": "entropy"})
table
'''),
    ("code", '''
# What this shows (computed from the table above)
t = table.set_index("arm")
first, last = hist["reinforce"]["reward/accuracy"], hist["cpgd"]["reward/accuracy"]
lines = ["**What this shows** (one seed, {} steps per rung; differences this small can be noise):".format(settings["num_steps"])]
for a, b in zip(t.index, t.index[1:]):
    lines.append("- " + W.compare(b, t.loc[b, "accuracy"], a, t.loc[a, "accuracy"], what=f"{a} → {b}, training accuracy (last half)"))
lines.append("- Largest token ratio: " + ", ".join(f"{a} {t.loc[a, 'peak ratio']:.3g}" for a in t.index)
             + f"; the smallest is **{t['peak ratio'].idxmin()}**.")
lines.append("- Clip fraction: " + ", ".join(f"{a} {t.loc[a, 'clip frac']:.2%}" for a in t.index)
             + " (REINFORCE and the group baseline never clip, by construction).")
W.show_markdown("\\n".join(lines))
'''),
]

# =============================================================================================
KL = [
    ("md", r"""
# 10 — Removing the reference KL: GRPO vs GRPO + KL vs CPGD

Question: when the reference-KL term is removed (as most recent recipes do), does GRPO drift — growing
ratio tails, collapsing entropy, changing response length — and does CPGD's drift term hold it? Each arm
runs for several seeds; curves show the mean and a min–max band over seeds.
"""),
    ("params", params('arms: str = "grpo,grpo_kl,cpgd"  # presets to compare\nseeds: str = "0,1"  # RL seeds per arm (sampling, data order)\nbase_seed: int = 0  # seed of the base policy every arm starts from\n'
                      'eval_per_level: int = 4  # test problems per level (math) for the final accuracy\n'
                      'eval_samples: int = 4  # samples per test problem')),
    ("code", IMPORTS + "\nfrom eureka_kit.config import PRESETS\n\n"
     + validate("arms=arms, seeds=seeds, base_seed=base_seed, eval_per_level=eval_per_level, eval_samples=eval_samples",
                "arms=P.choices(PRESETS), seeds=P.int_list, base_seed=P.non_negative_int, eval_per_level=P.positive_int, "
                "eval_samples=P.positive_int")),
    ("code", '''
arms, seeds = params["arms"], params["seeds"]
root = W.run_root(run_root, "10_kl_removal")
base, tok = W.load_base(model, seed=base_seed)
tests = W.problems_by_subject("test", ["math"], per_level=eval_per_level, seed=base_seed)
runs, evals = {}, {}
for seed in seeds:
    for arm in arms:
        cfg = RunConfig.from_preset(arm, seed=seed, run_dir=str(root / f"{arm}-seed{seed}"), **settings)
        run = W.train_arm(cfg, base, tok, progress=progress)
        runs[f"{arm}/{seed}"] = run
        evals[f"{arm}/{seed}"] = W.evaluate_on(run.policy, tok, cfg, tests, num_samples=eval_samples, seed=seed)[1]
        run.policy = None  # free memory; everything else is in the run directory
hist = W.histories(runs)
'''),
    ("code", '''
viz.training_curves(hist, {"reward/accuracy": "accuracy (train samples)", "reward/mean": "reward",
                           "policy/ratio_max": "max token ratio (log)", "policy/ratio_p99_9": "99.9% ratio quantile",
                           "rollout/len_mean": "response length", "policy/entropy": "entropy",
                           "kl/ref_k3": "KL to reference (k3, grpo_kl only)", "policy/approx_kl": "drift KL(old||new)"})
'''),
    ("code", '''
for name, summary in evals.items():
    hist[name]["eval/accuracy"] = float(summary.set_index("subject").loc["math", "accuracy"])
keys = {"eval/accuracy": "test accuracy", "reward/accuracy": "train accuracy", "policy/ratio_max": "peak ratio",
        "policy/entropy": "entropy", "rollout/len_mean": "length"}
table = W.arm_table(hist, keys)
table
'''),
    ("code", '''
W.bar_with_errors(table, "test accuracy", title="final test accuracy on math (mean ± sd over seeds)", percent=True)
'''),
    ("code", '''
# What this shows (computed)
t = table.set_index("arm")
lines = [f"**What this shows** ({len(seeds)} seed(s), {settings['num_steps']} steps, "
         f"{settings['update_epochs']} epoch(s) x {params['minibatches']} minibatch(es) per rollout):"]
def sd(a, b, col):
    vals = [t.loc[x, col + " sd"] for x in (a, b) if x in t.index]
    vals = [v for v in vals if v == v]
    return max(vals) if vals else None
pairs = [("grpo", "grpo_kl"), ("cpgd", "grpo")]
for a, b in pairs:
    if a in t.index and b in t.index:
        for col in ("test accuracy", "peak ratio", "entropy"):
            lines.append("- " + W.compare(a, t.loc[a, col], b, t.loc[b, col], sd=sd(a, b, col), what=col))
if len(seeds) < 2:
    lines.append("- Only one seed: no error bars, so no difference above can be called significant.")
W.show_markdown("\\n".join(lines))
'''),
]

# =============================================================================================
CLIP = [
    ("md", r"""
# 11 — Clipping: none vs ratio clip vs dual-clip vs log-ratio clip

Arms: `pg` (no clip), `cpg` (CPGD's log-ratio clip), `grpo` (PPO ratio clip), `grpo_dual_clip` (PPO clip plus a
cap for $A<0$), `cpgd` (log-ratio clip + drift), `pgd` (no clip + drift). Same seed, same base policy, same
off-policy pressure. We look at the distribution of per-token ratios the learner actually saw, clip
fractions by side, stability and accuracy.

The first two figures pool every token at the *last* update epoch of each step; the third splits the tokens by
update epoch (the run directory keeps the learner's log-probs of every epoch), so one sees how far each further
pass over the same rollout drifts from the sampling policy.
"""),
    ("params", params('arms: str = "pg,cpg,grpo,grpo_dual_clip,cpgd,pgd"  # presets\nseed: int = 0\n'
                      'eval_per_level: int = 4  # test problems per level (math)\neval_samples: int = 4',
                      update_epochs=3)),
    ("code", IMPORTS + "\nfrom eureka_kit.config import PRESETS\n\n"
     + validate("arms=arms, seed=seed, eval_per_level=eval_per_level, eval_samples=eval_samples",
                "arms=P.choices(PRESETS), seed=P.non_negative_int, eval_per_level=P.positive_int, eval_samples=P.positive_int")),
    ("code", '''
arms = params["arms"]
root = W.run_root(run_root, "11_clipping")
base, tok = W.load_base(model, seed=seed)
tests = W.problems_by_subject("test", ["math"], per_level=eval_per_level, seed=seed)
runs, evals = {}, {}
for arm in arms:
    cfg = RunConfig.from_preset(arm, seed=seed, run_dir=str(root / arm), **settings)
    runs[arm] = W.train_arm(cfg, base, tok, progress=progress)
    evals[arm] = W.evaluate_on(runs[arm].policy, tok, cfg, tests, num_samples=eval_samples, seed=seed)[1]
    runs[arm].policy = None
hist = W.histories(runs)
ratios = {arm: W.token_log_ratios(run.dir) for arm, run in runs.items()}
'''),
    ("code", '''
W.log_ratio_histograms(ratios)
'''),
    ("code", '''
W.log_ratio_histograms(ratios, ratio=True)
'''),
    ("code", '''
W.log_ratio_by_epoch({arm: W.token_log_ratios(run.dir, by_epoch=True) for arm, run in runs.items()})
'''),
    ("code", '''
for arm, s in evals.items():
    hist[arm]["eval/accuracy"] = float(s.set_index("subject").loc["math", "accuracy"])
table = W.arm_table(hist, {"policy/clipfrac_low": "clip low", "policy/clipfrac_high": "clip high",
                           "policy/ratio_max": "peak ratio", "policy/ratio_tail_frac": "tail frac (r>2 or r<1/2)",
                           "optim/grad_norm": "grad norm", "reward/accuracy": "train accuracy",
                           "eval/accuracy": "test accuracy"})
table["|log-ratio| p99"] = [ratios[a].log_ratio.abs().quantile(0.99) if len(ratios[a]) else float("nan") for a in table.arm]
table
'''),
    ("code", '''
W.clip_sides_figure(table)
'''),
    ("code", '''
viz.training_curves(hist, {"policy/ratio_max": "max token ratio (log)", "policy/clipfrac_low": "clip frac, low side",
                           "policy/clipfrac_high": "clip frac, high side", "optim/grad_norm": "grad norm",
                           "reward/accuracy": "accuracy (train samples)", "policy/entropy": "entropy"})
'''),
    ("code", '''
# What this shows (computed)
t = table.set_index("arm")
lines = [f"**What this shows** (seed {seed}, {settings['num_steps']} steps, {settings['update_epochs']} epochs):"]
lines.append(f"- Widest ratio tail (peak ratio): **{t['peak ratio'].idxmax()}** ({t['peak ratio'].max():.3g}); "
             f"narrowest: **{t['peak ratio'].idxmin()}** ({t['peak ratio'].min():.3g}).")
for arm in t.index:
    lines.append(f"- {arm}: clipped {t.loc[arm, 'clip low']:.2%} of tokens on the low side and "
                 f"{t.loc[arm, 'clip high']:.2%} on the high side; test accuracy {W.fmt_pct(t.loc[arm, 'test accuracy'])}.")
if {"pg", "cpg"} <= set(t.index):
    lines.append("- " + W.compare("cpg", t.loc["cpg", "peak ratio"], "pg", t.loc["pg", "peak ratio"],
                                   what="adding the log-ratio clip, peak ratio", higher_is="higher"))
if {"grpo", "cpg"} <= set(t.index):
    lines.append("- " + W.compare("cpg", t.loc["cpg", "test accuracy"], "grpo", t.loc["grpo", "test accuracy"],
                                   what="log-ratio clip vs ratio clip, test accuracy"))
drift = {arm: W.token_log_ratios(run.dir, by_epoch=True).assign(a=lambda d: d.log_ratio.abs()).groupby("epoch").a.mean()
         for arm, run in runs.items()}
lines.append("- Mean |log-ratio| per update epoch (drift from the sampling policy): " + "; ".join(
    f"{arm} " + " -> ".join(f"{v:.3f}" for v in d.tolist()) for arm, d in drift.items()) + ".")
lines.append("- One seed only: treat differences of a few points as noise.")
W.show_markdown("\\n".join(lines))
'''),
]

# =============================================================================================
SOLVED = [
    ("md", r"""
# 12 — Which problems does RL lift? Solved vs never-solved

We measure the base policy's pass@k on a fixed set of math training problems, RL-train on exactly those
problems, and measure again. If RL mostly sharpens what the base model can already sample, the lift
concentrates on problems the base *sometimes* solved, and problems it *never* solved stay unsolved.
"""),
    ("params", params('preset: str = "cpgd"  # RL algorithm\nseed: int = 0\n'
                      'train_per_level: int = 8  # training problems per difficulty level\n'
                      'eval_samples: int = 8  # samples per problem for pass@k', num_steps=30,
                      lr=1e-4, update_epochs=1, minibatches=1)),  # on-policy: the toy base collapses under pressure
    ("code", IMPORTS + "\nfrom eureka_kit.config import PRESETS\nfrom eureka_kit.engine import evaluate\n\n"
     + validate("preset=preset, seed=seed, train_per_level=train_per_level, eval_samples=eval_samples",
                "preset=P.choice(PRESETS), seed=P.non_negative_int, train_per_level=P.positive_int, eval_samples=P.positive_int")),
    ("code", '''
root = W.run_root(run_root, "12_solved_vs_never_solved")
base, tok = W.load_base(model, seed=seed)
cfg = RunConfig.from_preset(preset, seed=seed, run_dir=str(root / preset), **settings)
train_problems = W.problems_by_subject("train", ["math"], per_level=train_per_level, seed=seed, cfg=cfg)
base_pp, base_summary = W.evaluate_on(base, tok, cfg, train_problems, num_samples=eval_samples, seed=seed)
run = W.train_arm(cfg, base, tok, problems=train_problems["math"], progress=progress)
after_pp, after_summary = W.evaluate_on(run.policy, tok, cfg, train_problems, num_samples=eval_samples, seed=seed)
pd.concat([base_summary.assign(model="base"), after_summary.assign(model=preset)])
'''),
    ("code", '''
viz.solved_vs_never(base_pp, {preset: after_pp})
'''),
    ("code", '''
buckets = W.pass_buckets(base_pp, after_pp)
buckets
'''),
    ("code", '''
viz.problem_matrix(run.dir.problems())
'''),
    ("code", '''
events = W.learning_events(run.dir.problems())
by_level = base_pp[["problem_id", "level"]].merge(events, on="problem_id", how="left")
by_level.groupby("level").agg(problems=("problem_id", "size"), solved_in_training=("first_solved", "count"),
                              forgotten=("forgotten", "sum"), first_solved_step=("first_solved", "mean"))
'''),
    ("code", '''
# What this shows (computed)
b = buckets.set_index("bucket")
k = eval_samples
lines = [f"**What this shows** ({preset}, {settings['num_steps']} steps, pass@{k} from {k} samples per problem):"]
for name in b.index:
    if b.loc[name, "problems"]:
        lines.append(f"- {name} by the base ({int(b.loc[name, 'problems'])} problems): success rate "
                     f"{b.loc[name, 'base']:.1%} → {b.loc[name, 'after']:.1%} (lift {b.loc[name, 'lift']:+.1%}); "
                     f"{int(b.loc[name, 'learned'])} learned, {int(b.loc[name, 'forgotten'])} forgotten.")
never = b.loc["never solved"]
some = b.loc["sometimes (<50%)"]
if never["problems"] and some["problems"]:
    if some["lift"] > never["lift"]:
        lines.append(f"- The lift is larger on problems the base sometimes solved ({some['lift']:+.1%}) than on "
                     f"never-solved ones ({never['lift']:+.1%}): consistent with RL sharpening what the base can sample.")
    else:
        lines.append(f"- The never-solved problems gained at least as much ({never['lift']:+.1%}) as the sometimes-solved "
                     f"ones ({some['lift']:+.1%}): the seed's finding does **not** reproduce in this run.")
pk = f"pass@{k}" if f"pass@{k}" in base_summary else None
if pk:
    lines.append(f"- {pk}: base {base_summary[pk].iloc[0]:.1%} → after RL {after_summary[pk].iloc[0]:.1%}; "
                 f"pass@1: {base_summary['pass@1'].iloc[0]:.1%} → {after_summary['pass@1'].iloc[0]:.1%}.")
W.show_markdown("\\n".join(lines))
'''),
]

# =============================================================================================
GEN = [
    ("md", r"""
# 13 — RL vs SFT: in-domain and out-of-domain

Three ways to spend the same math training problems on the same base policy: RL (the chosen preset), CoT-SFT
(supervised on the worked solutions) and answer-only SFT. All are evaluated on held-out math (in-domain)
and on physics / chemistry / biology questions that ask the same arithmetic in other words (out-of-domain).
"""),
    ("params", params('preset: str = "cpgd"  # RL algorithm\nseed: int = 0\n'
                      'train_per_level: int = 16  # math training problems per level (shared by RL and SFT)\n'
                      'sft_steps: int = 60  # SFT optimizer steps\nsft_batch_size: int = 32\nsft_lr: float = 5e-4\n'
                      'eval_per_level: int = 4  # test problems per level and subject\neval_samples: int = 4',
                      lr=1e-4, update_epochs=1, minibatches=1)),
    ("code", IMPORTS + "\nfrom eureka_kit.config import PRESETS\nfrom eureka_kit.data.toyworld import SUBJECTS\n\n"
     + validate("preset=preset, seed=seed, train_per_level=train_per_level, sft_steps=sft_steps, "
                "sft_batch_size=sft_batch_size, sft_lr=sft_lr, eval_per_level=eval_per_level, eval_samples=eval_samples",
                "preset=P.choice(PRESETS), seed=P.non_negative_int, train_per_level=P.positive_int, "
                "sft_steps=P.positive_int, sft_batch_size=P.positive_int, sft_lr=P.positive_float, "
                "eval_per_level=P.positive_int, eval_samples=P.positive_int")),
    ("code", '''
root = W.run_root(run_root, "13_rl_vs_sft_generalization")
base, tok = W.load_base(model, seed=seed)
cfg = RunConfig.from_preset(preset, seed=seed, run_dir=str(root / preset), **settings)
train_problems = W.problems_by_subject("train", ["math"], per_level=train_per_level, seed=seed, cfg=cfg)["math"]
tests = W.problems_by_subject("test", SUBJECTS, per_level=eval_per_level, seed=seed, cfg=cfg)
models = {"base": base}
models["rl"] = W.train_arm(cfg, base, tok, problems=train_problems, progress=progress).policy
for target in ("cot", "answer"):  # CoT-SFT on the worked solutions; answer-only SFT
    sft_cfg = RunConfig.from_preset("sft", sft_target=target, seed=seed, model=model, num_steps=sft_steps, lr=sft_lr,
                                    warmup_steps=max(1, sft_steps // 10), train_batch_size=sft_batch_size,
                                    micro_batch_size=sft_batch_size, run_dir=str(root / f"{target}_sft"))
    models[f"{target}_sft"] = W.sft_arm(sft_cfg, base, tok, problems=train_problems, progress=progress).policy
summaries = {name: W.evaluate_on(m, tok, cfg, tests, num_samples=eval_samples, seed=seed)[1] for name, m in models.items()}
'''),
    ("code", '''
viz.subject_accuracy(summaries)
'''),
    ("code", '''
rows = []
for name, s in summaries.items():
    acc = s.set_index("subject")["accuracy"]
    rows.append({"model": name, "math (in-domain)": acc["math"], "OOD mean": acc.drop("math").mean(),
                 **{f"{sub}": acc[sub] for sub in acc.index if sub != "math"}})
table = pd.DataFrame(rows).set_index("model")
delta = table - table.loc["base"]
delta
'''),
    ("code", '''
# What this shows (computed): gains over the base policy, in-domain vs out-of-domain
lines = [f"**What this shows** ({len(train_problems)} math training problems; {eval_per_level * 6} test problems per subject, "
         f"{eval_samples} samples each):"]
for name in ("rl", "cot_sft", "answer_sft"):
    lines.append(f"- {name}: math {delta.loc[name, 'math (in-domain)']:+.1%}, out-of-domain {delta.loc[name, 'OOD mean']:+.1%} "
                 f"(vs base {table.loc['base', 'math (in-domain)']:.1%} / {table.loc['base', 'OOD mean']:.1%}).")
best_ood = delta["OOD mean"].drop("base").idxmax()
lines.append(f"- Largest out-of-domain gain: **{best_ood}**.")
rl_transfer = delta.loc["rl", "OOD mean"] - max(delta.loc["cot_sft", "OOD mean"], delta.loc["answer_sft", "OOD mean"])
lines.append("- " + ("RL transfers out of domain better than both SFT variants here, as the seed reported."
                     if rl_transfer > 0 else
                     "RL does **not** transfer out of domain better than SFT in this run: the seed's finding does not reproduce here."))
noise = (0.25 / (eval_per_level * 6 * eval_samples)) ** 0.5
lines.append(f"- Sampling noise of one accuracy here is about ±{noise:.1%} (1 sd, binomial worst case).")
W.show_markdown("\\n".join(lines))
'''),
]

# =============================================================================================
EXPLORER = [
    ("md", r"""
# 20 — Ratio explorer

Pick a run directory, a step and a sample: the completion's tokens are coloured by log-ratio (new vs old
policy), advantage, clip events or entropy, beside the sample's group and rewards; the replay panel recomputes
the step's loss under another preset on exactly the same saved batch. If `run_dir` is empty, a small demo run
is trained first. Every callback is a thin wrapper over `eureka_kit.workbench.explorer` (tested without a browser).
"""),
    ("params", '''run_dir: str = ""  # a run directory or a folder of runs; empty: train a small demo run
preset: str = "grpo"  # preset of the demo run
replay_preset: str = "cpgd"  # preset the replay panel compares with
num_steps: int = 6  # demo run steps
rollout_batch_size: int = 4
group_size: int = 8
update_epochs: int = 3
lr: float = 2e-3
run_root: str = "runs/notebooks"
seed: int = 0
progress: bool = False'''),
    ("code", '''
from pathlib import Path

from eureka_kit.workbench import explorer
from eureka_kit.workbench import notebook_params as P
from eureka_kit.workbench import viz
from eureka_kit.workbench import arms as W
from eureka_kit.config import PRESETS, RunConfig

params = P.validate(dict(run_dir=run_dir, preset=preset, replay_preset=replay_preset, num_steps=num_steps,
                         rollout_batch_size=rollout_batch_size, group_size=group_size, update_epochs=update_epochs,
                         lr=lr, run_root=run_root, seed=seed, progress=progress),
                    run_dir=P.optional_dir, preset=P.choice(PRESETS), replay_preset=P.choice(PRESETS),
                    num_steps=P.positive_int, rollout_batch_size=P.positive_int, group_size=P.positive_int,
                    update_epochs=P.positive_int, lr=P.positive_float, run_root=P.output_dir, seed=P.non_negative_int,
                    progress=P.boolean)
if run_dir and not explorer.find_runs(run_dir):
    raise P.NotebookParameterError(f"parameter 'run_dir': no run directories with saved rollouts under {run_dir!r}")
'''),
    ("code", '''
if not run_dir:
    settings = W.rl_settings(num_steps=num_steps, rollout_batch_size=rollout_batch_size, group_size=group_size,
                             minibatches=rollout_batch_size, update_epochs=update_epochs, lr=lr, max_len=48)
    run_dir = str(W.run_root(run_root, "20_ratio_explorer") / f"{preset}-seed{seed}")
    base, tok = W.load_base(seed=seed)
    W.train_arm(RunConfig.from_preset(preset, seed=seed, run_dir=run_dir, **settings), base, tok, progress=progress)
runs = explorer.find_runs(run_dir)
runs
'''),
    ("code", '''
ui = explorer.ExplorerWidget(run_dir, replay_preset=replay_preset)
ui
'''),
    ("md", "A static snapshot of the same views (for the HTML report): the step where the policy moved most "
           "(largest |log-ratio|), and that step's sample with the largest |log-ratio|."),
    ("code", '''
from IPython.display import HTML
from eureka_kit.engine.runs import open_run
run = runs[0]
metrics = open_run(run).metrics()
saved = explorer.steps_of(run)
moved = metrics[metrics.step.isin(saved)] if "policy/log_ratio_abs_max" in metrics else metrics.iloc[0:0]
step = int(moved.sort_values("policy/log_ratio_abs_max").iloc[-1]["step"]) if len(moved) else saved[-1]
df = explorer.load_step(run, step)
worst = int(df.assign(m=[max(abs(a - b) for a, b in zip(n, o)) if len(n) else 0
                         for n, o in zip(df.new_logp, df.old_logp)]).sort_values("m").iloc[-1]["sample"])
views = {c: explorer.view(run, step, worst, c, replay_preset) for c in explorer.COLOR_BY}
HTML(views["log-ratio"]["header"] + "".join(f"<h4>{c}</h4>" + v["tokens"] for c, v in views.items())
     + "<h4>group</h4>" + views["log-ratio"]["group"] + "<h4>replay</h4>" + views["log-ratio"]["replay"])
'''),
    ("code", '''
viz.ratio_histogram(df)
'''),
    ("code", '''
# What this shows (computed)
from eureka_kit.workbench.replay import compare_presets
cmp = compare_presets(run, step, [explorer.run_preset(run), replay_preset]).set_index("preset")
own = explorer.run_preset(run)
zero = int((df.groupby("group").reward.std().fillna(0) == 0).sum())
lines = [f"**What this shows**: step {step} of `{Path(run).name}` is where the policy moved most; its sample with the "
         f"largest |log-ratio| is #{worst}. {zero} of its {df.group.nunique()} groups had identical rewards "
         "(zero advantage: no gradient from them under any group-baseline preset)."]
for p in cmp.index:
    lines.append(f"- replayed as **{p}**: loss {cmp.loc[p, 'loss/total']:+.4f}, clipped {cmp.loc[p, 'policy/clipfrac_low']:.2%} "
                 f"low / {cmp.loc[p, 'policy/clipfrac_high']:.2%} high, mean |d loss/d logp| {cmp.loc[p, 'grad_abs_mean']:.3g}.")
W.show_markdown("\\n".join(lines))
'''),
]

# =============================================================================================
PRM = [
    ("md", r"""
# 14 — Process rewards: automatic step labels, a PRM, best-of-N, and the PRM inside RL

MM-PRM's pipeline on the toy world. A step-form policy (`<step>…</step>…<answer>…</answer>`) is rolled out
from prefixes of its own solutions; the fraction of correct continuations is a step's Monte-Carlo value
(OmegaPRM search, `prm_data.py`). A PRM (the policy's architecture reading P("Yes") at a `<prm>` marker,
`prm.py`) is trained on those soft labels, then reranks 16 sampled solutions per test problem
(`bestofn.py`) against random pick, majority vote and an outcome reward model. Last, the PRM's step scores
enter CPGD as per-token advantages (`process_mode="step_advantage"`, `process_adv.py`).
"""),
    ("params", '''seed: int = 0
policy_steps: int = 700  # step-form SFT steps of the labelled policy (StepPolicyConfig; cached)
label_levels: str = "1,2,3,4"  # toy-world levels of the math train problems to label
label_per_level: int = 60  # math train problems per level to label
num_rollouts: int = 16  # continuations per Monte-Carlo value
max_searches: int = 20  # binary searches per problem
rollout_budget: int = 160  # rollouts per problem (never exceeded)
max_len: int = 128  # max tokens of a continuation / candidate
prm_epochs: int = 5  # PRM training epochs
test_per_level: int = 16  # math test problems per level for best-of-N
bon_n: int = 16  # candidates per test problem: best-of-N for N in 1, 2, 4, ... up to this
rl_steps: int = 20  # RL steps per arm (with and without process signal)
rl_batch: int = 8  # prompts per RL step (8 responses each)
process_weight: float = 0.5  # w of the step advantage
lr: float = 5e-5  # RL learning rate (on-policy)
run_root: str = "runs/notebooks"  # where trees, the PRM and run directories go
progress: bool = False  # console progress bars'''),
    ("code", '''import numpy as np
import pandas as pd
import plotly.express as px

from eureka_kit.prm import bestofn, data as prm_data, model as prm
from eureka_kit.workbench import notebook_params as P
from eureka_kit.workbench import arms as W
from eureka_kit.config import RunConfig
from eureka_kit.models import load
from eureka_kit.prm.steps import StepPolicyConfig, build_step_policy
from eureka_kit.data import toyworld

params = P.validate(
    dict(seed=seed, policy_steps=policy_steps, label_levels=label_levels, label_per_level=label_per_level,
         num_rollouts=num_rollouts, max_searches=max_searches, rollout_budget=rollout_budget, max_len=max_len,
         prm_epochs=prm_epochs, test_per_level=test_per_level, bon_n=bon_n, rl_steps=rl_steps, rl_batch=rl_batch,
         process_weight=process_weight, lr=lr, run_root=run_root, progress=progress),
    seed=P.non_negative_int, policy_steps=P.positive_int, label_levels=P.int_list, label_per_level=P.positive_int,
    num_rollouts=P.positive_int, max_searches=P.positive_int, rollout_budget=P.positive_int, max_len=P.positive_int,
    prm_epochs=P.positive_int, test_per_level=P.positive_int, bon_n=P.positive_int, rl_steps=P.positive_int,
    rl_batch=P.positive_int, process_weight=P.positive_float, lr=P.positive_float, run_root=P.output_dir,
    progress=P.boolean)
if params["bon_n"] & (params["bon_n"] - 1) or params["rollout_budget"] < params["num_rollouts"]:
    raise P.NotebookParameterError(f"parameter 'bon_n'/'rollout_budget': bon_n must be a power of two and "
                                   f"rollout_budget >= num_rollouts, got {bon_n!r}/{rollout_budget!r}")
root = W.run_root(run_root, "14_process_rewards") / f"seed{seed}-policy{policy_steps}"
policy_path = build_step_policy(seed, StepPolicyConfig(steps=policy_steps), progress=progress)
policy, tok = load(str(policy_path))
run_cfg = RunConfig(max_len=max_len, seed=seed)
params
'''),
    ("md", "## 1. Step labels (OmegaPRM search on the math training problems)"),
    ("code", '''
import time

train_problems = toyworld.generate("train", "math", label_per_level, seed=seed, levels=tuple(params["label_levels"]))
search = prm_data.SearchConfig(num_rollouts=num_rollouts, max_search_count=max_searches, rollout_budget=rollout_budget)
t0 = time.perf_counter()
prm_data.label_problems(policy, tok, train_problems, root / "trees", run_cfg, search, seed=seed, progress=progress)
label_s = time.perf_counter() - t0  # 0 when every tree was already on disk (resumed)
trees = [t for t in prm_data.load_trees(root / "trees") if t["id"] in {p["id"] for p in train_problems}]
examples = [ex for t in trees for ex in prm_data.build_examples(t, min_words=0, seed=seed)]
train_ex, held_ex = prm_data.split_by_problem(examples, 0.2, seed=seed)
nodes = pd.DataFrame(prm_data.tree_nodes(trees), columns=["id", "level", "start", "num_steps", "mc_value", "judged",
                                                          "first_error", "leaf"])
roots = pd.DataFrame([dict(id=t["id"], level=t["level"], root_mc=t["mc_value"]) for t in trees])
pd.DataFrame([dict(**prm_data.tree_stats(trees), examples=len(examples), train_examples=len(train_ex),
                   held_out_examples=len(held_ex), label_seconds=round(label_s, 1))])
'''),
    ("code", '''
summary = roots.groupby("level").agg(problems=("id", "size"), root_mc=("root_mc", "mean"),
                                     usable=("root_mc", lambda v: ((v > 0) & (v < 1)).sum()))
summary.join(nodes.groupby("level").agg(nodes=("id", "size"), first_errors=("first_error", "sum")))
'''),
    ("code", '''
px.histogram(nodes, x="mc_value", color="judged", nbins=17, barmode="stack",
             title="MC values of the tree nodes (judged = a final answer, scored without rollouts)")
'''),
    ("code", '''
steps_per_example = pd.DataFrame([dict(markers=len(ex["labels"]), negative=ex["labels"][-1] == 0.0) for ex in examples],
                                 columns=["markers", "negative"])
first = nodes[nodes.first_error]
fig = px.histogram(first, x="start", color="level", barmode="group",
                   title="first-error positions: steps before the node that holds the first wrong step")
fig.add_annotation(text=f"{len(steps_per_example)} examples, {int(steps_per_example.negative.sum())} negatives, "
                        f"{steps_per_example.markers.mean() if len(steps_per_example) else float('nan'):.2f} labels each",
                   xref="paper", yref="paper", x=0, y=1.08, showarrow=False)
fig
'''),
    ("md", "## 2. The PRM: soft-label training and calibration on held-out problems"),
    ("code", '''
prm_model, prm_tok = load(str(policy_path))
t0 = time.perf_counter()
if train_ex:
    prm_losses = prm.train_prm(prm_model, prm_tok, train_ex, prm.PRMTrainConfig(**{**prm.TOY_PRM, "epochs": prm_epochs}),
                               seed=seed, progress=progress)
else:  # no problem had 0 < root MC < 1: an untrained PRM, and the cells below say so
    prm.init_prm(prm_model, prm_tok)
    prm_losses = []
prm_s = time.perf_counter() - t0
prm_model.save_pretrained(root / "prm")
prm_tok.save_pretrained(root / "prm")
px.line(y=prm_losses, labels=dict(x="optimizer step", y="soft-label CE"),
        title=f"PRM training: {len(train_ex)} examples, {prm_s:.0f} s (labels {label_s:.0f} s)")
'''),
    ("code", '''
cal = pd.DataFrame(prm.calibration(prm_model, prm_tok, held_ex), columns=["id", "position", "label", "p_yes"])
cal["bin"] = pd.cut(cal.label, [-0.01, 0.0, 0.25, 0.5, 0.75, 0.999, 1.0],
                    labels=["0", "(0,.25]", "(.25,.5]", "(.5,.75]", "(.75,1)", "1"])
calib = cal.groupby("bin", observed=True).agg(markers=("label", "size"), mc_value=("label", "mean"),
                                              p_yes=("p_yes", "mean")).reset_index()
fig = px.scatter(cal, x="label", y="p_yes", opacity=0.4, title="held-out calibration: predicted P(Yes) vs MC value")
fig.add_scatter(x=calib.mc_value, y=calib.p_yes, mode="lines+markers", name="bin means")
fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot"), name="perfect")
fig
'''),
    ("md", "## 3. Best-of-N on the math test split"),
    ("code", '''
test = toyworld.load("test", "math", seed=seed, n_per_level=test_per_level)
# sep="\\n\\n": score in the layout the PRM was trained in (MM-PRM scores without it)
records = bestofn.collect_candidates(policy, tok, prm_model, prm_tok, test, run_cfg, n=bon_n, seed=seed + 1,
                                     sep="\\n\\n")
ns = tuple(2 ** k for k in range(bon_n.bit_length()) if 2 ** k <= bon_n)
bon = bestofn.bon_table(records, ns)
bestofn.plot_bon(bon)
'''),
    ("code", '''
by_level = pd.concat([bestofn.bon_table([r for r in records if r["level"] == lvl], (bon_n,)).assign(level=lvl)
                      for lvl in sorted({r["level"] for r in records})])
by_level.pivot_table(index="method", columns="level", values="accuracy").round(3)
'''),
    ("md", "## 4. RL with and without the process signal (CPGD vs `cpgd_prm`, same seed and problems)"),
    ("code", '''
rl = dict(num_steps=rl_steps, rollout_batch_size=rl_batch, group_size=8, train_batch_size=rl_batch * 8,
          micro_batch_size=rl_batch * 8, update_epochs=1, lr=lr, max_len=max_len, seed=seed)  # on-policy
rl_problems = toyworld.generate("train", "math", max(2, label_per_level), seed=seed + 1,
                                levels=tuple(params["label_levels"]))
runs = {
    "cpgd": W.train_arm(RunConfig.from_preset("cpgd", run_dir=str(root / "rl_cpgd"), **rl), policy, tok,
                        problems=rl_problems, progress=progress),
    "cpgd_prm": W.train_arm(RunConfig.from_preset("cpgd_prm", prm_path=str(root / "prm"), process_weight=process_weight,
                                                  run_dir=str(root / "rl_cpgd_prm"), **rl), policy, tok,
                            problems=rl_problems, progress=progress),
}
hist = pd.concat([h.assign(arm=name) for name, h in W.histories(runs).items()])
px.line(hist, x="step", y="reward/accuracy", color="arm", title="sampled training accuracy per step")
'''),
    ("code", '''
eval_problems = {"math": toyworld.load("test", "math", seed=seed, n_per_level=max(1, test_per_level // 2))}
rows = []
for name, model in [("step policy", policy)] + [(n, r.policy) for n, r in runs.items()]:
    _, s = W.evaluate_on(model, tok, run_cfg, eval_problems, num_samples=4, seed=seed)
    rows.append(s.assign(model=name))
rl_eval = pd.concat(rows)
prm_cols = [c for c in hist.columns if c.startswith("process/")]
rl_eval[["model", "pass@1"] + [c for c in rl_eval.columns if c.startswith("pass@") and c != "pass@1"]]
'''),
    ("code", '''
# What this shows (computed)
acc = bon.pivot_table(index="method", columns="N", values="accuracy")
top = acc[bon_n]
prm_methods = [m for m in top.index if m.startswith("prm_")]
best = max(prm_methods, key=lambda m: top[m])
lines = [f"**What this shows** (seed {seed}; {len(trees)} labelled problems, {len(examples)} PRM examples; "
         f"labels {label_s:.0f} s + PRM training {prm_s:.0f} s on this machine):"]
usable = int(summary.usable.sum())
lines.append(f"- {usable} of {len(trees)} labelled problems had a root MC value strictly between 0 and 1 (the only "
             f"ones that give examples); mean root MC per level: "
             + ", ".join(f"L{lvl} {v:.2f}" for lvl, v in summary.root_mc.items()) + ".")
if len(cal):
    r = np.corrcoef(cal.label, cal.p_yes)[0, 1] if cal.label.std() > 0 and cal.p_yes.std() > 0 else float("nan")
    lines.append(f"- Held-out calibration over {len(cal)} markers: correlation of P(Yes) with the MC value {r:.2f}, "
                 f"mean |P(Yes) - MC| {np.abs(cal.label - cal.p_yes).mean():.2f}.")
else:
    lines.append("- No held-out markers: calibration is not measured at these sizes.")
margin_random = top[best] - top["random"]
margin_majority = top[best] - top["majority"]
lines.append(f"- Best-of-{bon_n} on {len(records)} math test problems: best PRM aggregation `{best}` {top[best]:.1%}, "
             f"random pick {top['random']:.1%} ({margin_random:+.1%}), majority vote {top['majority']:.1%} "
             f"({margin_majority:+.1%}), ORM {top['orm']:.1%}, oracle pass@{bon_n} {top['oracle']:.1%}.")
target = margin_random >= 0.05 and margin_majority >= 0
lines.append(f"- The issue's target (PRM beats random by >= 5 points and matches majority vote) is "
             f"{'met' if target else '**not met**'} in this run"
             + ("." if target else f": the PRM's pick is {margin_random:+.1%} vs random and {margin_majority:+.1%} "
                "vs majority; the calibration and per-level tables above show where it fails."))
acc_rl = rl_eval.set_index("model")["pass@1"]
lines.append(f"- RL, {rl_steps} steps: pass@1 step policy {acc_rl['step policy']:.1%}, CPGD {acc_rl['cpgd']:.1%}, "
             f"CPGD + step advantages {acc_rl['cpgd_prm']:.1%} (4 samples on {sum(map(len, eval_problems.values()))} "
             f"test problems: a few points are noise).")
if prm_cols:
    last = hist[hist.arm == "cpgd_prm"][prm_cols].mean()
    lines.append("- Process metrics of the cpgd_prm arm (mean over steps): "
                 + ", ".join(f"{k} {v:.3f}" for k, v in last.items()) + ".")
W.show_markdown("\\n".join(lines))
'''),
]

NOTEBOOKS = {"00_tour": TOUR, "10_kl_removal": KL, "11_clipping": CLIP, "12_solved_vs_never_solved": SOLVED,
             "13_rl_vs_sft_generalization": GEN, "14_process_rewards": PRM, "20_ratio_explorer": EXPLORER}


def main(names: list[str]) -> None:
    OUT.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        if names and name not in names:
            continue
        book = nb(cells)
        nbformat.validate(book)
        nbformat.write(book, OUT / f"{name}.ipynb")
        print(f"wrote notebooks/{name}.ipynb ({len(book.cells)} cells)")


if __name__ == "__main__":
    main(sys.argv[1:])
