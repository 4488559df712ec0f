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
data_path: str = ""  # local MMK12 folder ('' = the toy world)
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
    update_epochs=P.positive_int, lr=P.positive_float, max_len=P.positive_int, progress=P.boolean'''

RL_DICT = '''model=model, data_path=data_path, num_steps=num_steps, rollout_batch_size=rollout_batch_size,
         group_size=group_size, minibatches=minibatches, update_epochs=update_epochs, lr=lr, max_len=max_len,
         progress=progress'''

SETTINGS = '''settings = W.rl_settings(**{k: params[k] for k in ("num_steps", "rollout_batch_size", "group_size",
                                                  "minibatches", "update_epochs", "lr", "max_len", "model",
                                                  "data_path")})'''

# Calibrated on the 700-step toy base (2026-11-27): at lr 1e-4, 4 minibatches x 2 epochs GRPO grows a ratio
# tail (max 72) that CPGD keeps near 17; at 3e-4 and above every arm collapses within 20 steps.
DEFAULTS = dict(num_steps=40, rollout_batch_size=8, group_size=8, minibatches=4, update_epochs=2, lr=1e-4, max_len=48)

IMPORTS = '''import pandas as pd

from eureka_kit import notebook_params as P
from eureka_kit import viz
from eureka_kit import workbench as W
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
    ("code", IMPORTS + "\nfrom eureka_kit import advantages, losses\nimport torch\n\n"
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
from eureka_kit.replay import replay_step

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

The run directory keeps the learner's log-probs of the *last* update epoch of each step, so the distributions
below are per step at the last epoch (not separately per epoch).
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
    ("code", IMPORTS + "\nfrom eureka_kit.config import PRESETS\nfrom eureka_kit import evaluate\n\n"
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
    ("code", IMPORTS + "\nfrom eureka_kit.config import PRESETS\nfrom eureka_kit.tasks.toyworld import SUBJECTS\n\n"
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
models["cot_sft"], cot_losses = W.sft_arm(base, tok, train_problems, steps=sft_steps, batch_size=sft_batch_size,
                                          lr=sft_lr, seed=seed, progress=progress)
models["answer_sft"], ans_losses = W.sft_arm(base, tok, train_problems, steps=sft_steps, batch_size=sft_batch_size,
                                             lr=sft_lr, answer_only=True, seed=seed, progress=progress)
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
is trained first. Every callback is a thin wrapper over `eureka_kit.explorer` (tested without a browser).
"""),
    ("params", '''run_dir: str = ""  # a run directory or a folder of runs ('' = train a small demo run)
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

from eureka_kit import explorer
from eureka_kit import notebook_params as P
from eureka_kit import viz
from eureka_kit import workbench as W
from eureka_kit.config import PRESETS, RunConfig

params = P.validate(dict(preset=preset, replay_preset=replay_preset, num_steps=num_steps,
                         rollout_batch_size=rollout_batch_size, group_size=group_size, update_epochs=update_epochs,
                         lr=lr, seed=seed, progress=progress),
                    preset=P.choice(PRESETS), replay_preset=P.choice(PRESETS), num_steps=P.positive_int,
                    rollout_batch_size=P.positive_int, group_size=P.positive_int, update_epochs=P.positive_int,
                    lr=P.positive_float, seed=P.non_negative_int, progress=P.boolean)
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
from eureka_kit.runs import open_run
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
from eureka_kit.replay import compare_presets
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

NOTEBOOKS = {"00_tour": TOUR, "10_kl_removal": KL, "11_clipping": CLIP, "12_solved_vs_never_solved": SOLVED,
             "13_rl_vs_sft_generalization": GEN, "20_ratio_explorer": EXPLORER}


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
