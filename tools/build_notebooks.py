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

# The pressure arms' settings (workbench.findings.RL_SETTINGS, dose 8): at lr 3e-4 and above every arm collapses
# within 20-25 steps (reports/LOG.md).
DEFAULTS = dict(num_steps=40, rollout_batch_size=8, group_size=8, minibatches=4, update_epochs=2, lr=1e-4, max_len=48)

IMPORTS = '''import torch

from eureka_kit.algos import advantages, losses
from eureka_kit.config import RunConfig
from eureka_kit.workbench import arms as W
from eureka_kit.workbench import notebook_params as P
from eureka_kit.workbench import viz'''


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
    ("code", IMPORTS + "\n\n" + validate("seed=seed", "seed=P.non_negative_int")),
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
lines = [f"**What this shows** (one seed, {settings['num_steps']} steps per rung: descriptive, no verdict between "
         "rungs; differences this small can be noise):"]
for a, b in zip(t.index[:-1], t.index[1:], strict=True):
    lines.append("- " + W.compare(b, t.loc[b, "accuracy"], a, t.loc[a, "accuracy"], what=f"{a} → {b}, training accuracy (last half)"))
lines.append("- Largest token ratio: " + ", ".join(f"{a} {t.loc[a, 'peak ratio']:.3g}" for a in t.index)
             + " (one seed, and each is a single token's maximum over the run: descriptive, no verdict).")
lines.append("- Clip fraction: " + ", ".join(f"{a} {t.loc[a, 'clip frac']:.2%}" for a in t.index)
             + " (REINFORCE and the group baseline never clip, by construction).")
W.show_markdown("\\n".join(lines))
'''),
]

# Notebooks 10-13 are views of one finding each (`eureka_kit.workbench.findings`): they read the cells of a
# finished findings run (the report suite passes `findings_dir`) or run/resume a profile themselves, and never
# train anything of their own. Every sentence is an `evidence` sentence over seeds.
FINDINGS_PARAMS = '''findings_dir: str = ""  # a finished findings run (findings.json, cells/); empty: run `profile`
profile: str = "quick"  # profile run (or resumed) when findings_dir is empty: quick or full
run_root: str = "runs/findings_notebooks"  # where that run goes, a folder per profile (shared by notebooks 10-13)
workers: int = 2  # worker processes for that run
progress: bool = False  # console progress bars'''


def findings_imports(*, runs: bool = False, page: str = "effects_figure, findings_table_html") -> str:
    """The import and validation cell of a findings notebook (imports in ruff's isort order)."""
    return f'''import math
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from IPython.display import HTML, display
{"" if not runs else chr(10) + "from eureka_kit.engine.runs import RunDir"}
from eureka_kit.workbench import arms as W
from eureka_kit.workbench import evidence, viz
from eureka_kit.workbench import findings as F
from eureka_kit.workbench import notebook_params as P
from eureka_kit.workbench.findings_page import {page}
from eureka_kit.workbench.findings_run import load_or_run

params = P.validate(
    dict(findings_dir=findings_dir, profile=profile, run_root=run_root, workers=workers, progress=progress),
    findings_dir=P.optional_dir, profile=P.choice(F.PROFILES), run_root=P.output_dir, workers=P.positive_int,
    progress=P.boolean)
if params["findings_dir"] and not (Path(params["findings_dir"]) / "findings.json").exists():
    raise P.NotebookParameterError(f"parameter 'findings_dir': no findings.json in {{findings_dir!r}} (pass a "
                                   "finished findings run such as reports/findings, or '' to run `profile`)")
params'''


def findings_load(finding: str) -> str:
    """Load (or run) the findings; pick this notebook's record."""
    return f'''
result, cells, folder = load_or_run(params["findings_dir"] or "", profile=profile, out=Path(run_root) / profile,
                                    workers=workers, progress=progress)
seeds = list(result["profile"]["seeds"])
record = next(r for r in result["findings"] if r["id"] == "{finding}")
finding = F.FINDINGS_BY_ID[record["id"]]
CI = "mean [95% CI]" if len(seeds) > 1 else "mean (1 seed: no CI)"
print(f"{{folder}}: profile {{result['profile']['name']}}, seeds {{seeds}}, {{len(cells)}} cells")
'''


FINDINGS_HELPERS = '''
# Helpers shared by notebooks 10-13: cell measurements -> per-seed values -> evidence (mean, 95% CI, verdict).
def per_seed(arm, key):
    """{seed: value} of one cell measurement, over the profile's seeds that have it."""
    return {s: float(cells[(arm, s)][key]) for s in seeds if cells.get((arm, s), {}).get(key) is not None}


def paired(a, b):
    """{seed: a - b} over the seeds both {seed: value} dicts hold (a difference paired by seed)."""
    return {s: a[s] - b[s] for s in a if s in b}


def fmt(iv, unit="%"):
    """An evidence.Interval of fractions as 'mean [95% CI]': '%' percent, 'pp' signed points, '' as is."""
    def one(x):
        return f"{100 * x:.1f}%" if unit == "%" else f"{100 * x:+.1f} pp" if unit == "pp" else f"{x:.3g}"
    return one(iv.mean) + ("" if math.isnan(iv.low) else f" [{one(iv.low)}, {one(iv.high)}]")


def arm_table(arms, keys):
    """Per arm: seeds and, per cell key {key: (label, unit)}, the mean [95% CI] over seeds ('—': not measured)."""
    rows = []
    for arm in arms:
        row = {"arm": arm, "seeds": sum((arm, s) in cells for s in seeds)}
        for key, (label, unit) in keys.items():
            values = per_seed(arm, key)
            row[f"{label}, {CI}"] = fmt(evidence.mean_ci(list(values.values())), unit) if values else "—"
        rows.append(row)
    return pd.DataFrame(rows)


def judged(effects, claim, unit="pp", scale=100.0):
    """evidence's sentence for claim-oriented per-seed effects {seed: x}, reported as x * scale (fractions -> pp;
    rounded to 1e-9 so float residue of equal values reads as 0, not as 3e-15)."""
    if not effects:
        return f"{claim}: not measured (no seed holds both sides)."
    return evidence.sentence(evidence.judge({s: round(scale * v, 9) for s, v in effects.items()}), claim, unit)


def error_bars(ivs):
    """plotly error_y arguments for 95% intervals (no bar where one seed gives no interval)."""
    return dict(type="data", symmetric=False, array=[0 if math.isnan(iv.high) else iv.high - iv.mean for iv in ivs],
                arrayminus=[0 if math.isnan(iv.low) else iv.mean - iv.low for iv in ivs])


def points_figure(data, *, xaxis, yaxis, tickformat=None, zero=False, title=""):
    """{series: {category: {seed: value}}}: every seed a dot, the mean over seeds a diamond with its 95% CI."""
    cats = list(dict.fromkeys(c for by_cat in data.values() for c, v in by_cat.items() if v))
    fig, width = go.Figure(), 0.6 / max(1, len(data))
    for i, (name, by_cat) in enumerate(data.items()):
        colour, shift = viz.PALETTE[i % len(viz.PALETTE)], (i - (len(data) - 1) / 2) * width
        x = [j + shift for j, c in enumerate(cats) if by_cat.get(c)]
        values = [by_cat[c] for c in cats if by_cat.get(c)]
        ivs = [evidence.mean_ci(list(v.values())) for v in values]
        fig.add_scatter(x=[xj for xj, v in zip(x, values, strict=True) for _ in v],
                        y=[y for v in values for y in v.values()], text=[f"seed {s}" for v in values for s in v],
                        mode="markers", legendgroup=name, showlegend=False, hovertemplate="%{text}: %{y}<extra></extra>",
                        marker=dict(color=colour, size=8, opacity=0.45))
        fig.add_scatter(x=x, y=[iv.mean for iv in ivs], mode="markers", name=f"{name} (mean, 95% CI)",
                        legendgroup=name, error_y=error_bars(ivs), marker=dict(color=colour, symbol="diamond", size=13))
    if zero:
        fig.add_hline(y=0, line_dash="dash", line_color="#888")
    fig.update_layout(title=title, height=400, margin=dict(t=60, b=50), legend=dict(orientation="h", y=-0.2),
                      xaxis=dict(title=xaxis, tickvals=list(range(len(cats))), ticktext=cats),
                      yaxis=dict(title=yaxis, tickformat=tickformat))
    return fig
'''

RUN_HELPERS = '''

def run_metrics(arm, seed):
    """metrics.jsonl of one trained cell's run directory (empty when that folder is not on this machine)."""
    run_dir = cells.get((arm, seed), {}).get("run_dir")
    if not run_dir or not (Path(run_dir) / "metrics.jsonl").exists():
        return pd.DataFrame()
    return RunDir(Path(run_dir)).metrics()


def curves_figure(hist, keys, title):
    """viz.training_curves (one line per arm) with axis titles on every panel."""
    fig = viz.training_curves(hist, keys, smooth_window=1)
    shown = [label for key, label in keys.items() if any(key in h for h in hist.values())]
    for i, label in enumerate(shown):
        fig.update_xaxes(title_text="RL step", row=i // 2 + 1, col=i % 2 + 1)
        fig.update_yaxes(title_text=label, row=i // 2 + 1, col=i % 2 + 1)
    fig.update_layout(title=title, margin=dict(t=90))
    return fig
'''

FINDING_ROW = '''
display(HTML(findings_table_html([record])))
W.show_markdown(f"**{record['id']}**, verdict **{record['verdict']}** — {record['sentence']}"
                + (f"\\n\\n**Not testable here:** {record['reason']}" if record.get("reason") else ""))
'''

EFFECTS = '''
effects_figure([record])  # each seed's claim-oriented effect (dots), the mean with its 95% CI (diamond)
'''

INSTRUMENT = '''
# The instrument requirements this finding needs, checked on the verdict seeds' own cells (findings.json)
pd.DataFrame([{"requirement": r, "status": "met" if result["instrument"][r]["ok"] else "NOT met",
               "measured": result["instrument"][r]["detail"]} for r in finding.requires])
'''

PREDECLARED = '''f"- Pre-declared, verdict **{record['verdict']}**: {record['sentence']}"
             + (f" **Not testable here:** {record['reason']}" if record.get("reason") else "")'''


def header(what: str) -> str:
    """The first lines of a findings notebook's "what this shows" cell: the profile, then the pre-declared test."""
    first = 'f"**What this shows** (profile `{result[\'profile\'][\'name\']}`, {len(seeds)} seeds; "'
    parts = [first] + ([f'"{what}"'] if what else [])
    parts.append('"each effect is the mean over seeds with its 95% Student-t interval, from `evidence`):"')
    return "lines = [" + "\n         ".join(parts) + "]\n" + f"lines.append({PREDECLARED})"


# =============================================================================================
KL = [
    ("md", r"""
# 10 — Removing the reference KL: GRPO without KL vs CPGD under off-policy pressure

Finding `stability` (`eureka_kit.workbench.findings`): with several optimizer steps per rollout batch (the
off-policy *dose*), does GRPO without a KL term grow policy-ratio tails that CPGD (clipped log-ratio plus a
drift term) keeps bounded? The pre-declared metric is the *ratio tail share*: the share of response tokens with
$|\log r| > \log 2$, averaged over steps and update epochs — never a single token's maximum. Every (arm, seed)
cell was trained by the findings run (`findings_run`); this notebook only reads the cells. Effects are
claim-oriented (positive = the paper's direction), mean over seeds with a 95% interval.
"""),
    ("params", FINDINGS_PARAMS),
    ("code", findings_imports(runs=True, page="dose_figure, effects_figure, findings_table_html")),
    ("code", findings_load("stability")),
    ("code", FINDINGS_HELPERS + RUN_HELPERS),
    ("code", FINDING_ROW),
    ("code", EFFECTS),
    ("md", "## Dose-response: GRPO (no KL) vs CPGD, mean over seeds with 95% CI bands"),
    ("code", '''
dose_figure(result["dose_response"]["ratio_tail_share"], title="share of tokens with |log r| > log 2", percent=True)
'''),
    ("code", '''
dose_figure(result["dose_response"]["math_accuracy"], title="math test accuracy after training", percent=True)
'''),
    ("code", '''
doses = sorted(int(d) for d in result["profile"]["doses"])
pairs = {d: (F.rl_arm("grpo", d), F.rl_arm("cpgd", d)) for d in doses}
arm_table(["base"] + [a for d in doses for a in pairs[d]],
          {"ratio_tail_share": ("tokens |log r| > log 2", "%"),
           "ratio_max_median": ("median over steps of the max token ratio", ""),
           "math_accuracy": ("math test accuracy", "%")})
'''),
    ("code", '''
points_figure({name: {f"dose {d}": per_seed(pairs[d][i], "ratio_tail_share") for d in doses}
               for i, name in enumerate(("GRPO (no KL)", "CPGD"))},
              xaxis="off-policy dose (optimizer steps per rollout batch)",
              yaxis="share of tokens with |log r| > log 2", tickformat=".1%",
              title="ratio tail share per seed (dots) and mean with 95% CI (diamonds)")
'''),
    ("md", "## Training curves of the first seed (one seed, descriptive: no sentence below rests on them)"),
    ("code", '''
seed = seeds[0]
hist = {a: m for d in doses for a in pairs[d] if len(m := run_metrics(a, seed))}
keys = {"policy/ratio_tail_frac": "share of tokens |log r| > log 2", "policy/ratio_max": "max token ratio (log)",
        "reward/accuracy": "train accuracy (sampled)", "policy/entropy": "entropy (nats/token)"}
(curves_figure(hist, keys, f"seed {seed} only: one seed, descriptive") if hist
 else W.show_markdown("The cells' run directories are not on this machine: no training curves."))
'''),
    ("code", '''
# What this shows (computed: evidence sentences over seeds)
''' + header("dose = optimizer steps per rollout batch; ") + '''
for d in doses:
    grpo, cpgd = pairs[d]
    lines.append("- " + judged(paired(per_seed(grpo, "ratio_tail_share"), per_seed(cpgd, "ratio_tail_share")),
                               f"CPGD has a smaller ratio tail share than GRPO at dose {d} (GRPO minus CPGD)"))
    lines.append("- " + judged(paired(per_seed(grpo, "ratio_max_median"), per_seed(cpgd, "ratio_max_median")),
                               f"CPGD has a lower median max token ratio than GRPO at dose {d} (GRPO minus CPGD)",
                               unit="", scale=1.0))
    lines.append("- " + judged(paired(per_seed(cpgd, "math_accuracy"), per_seed(grpo, "math_accuracy")),
                               f"CPGD ends with a higher math test accuracy than GRPO at dose {d} (CPGD minus GRPO)"))
if len(doses) > 1:
    low, high = doses[0], doses[-1]
    for preset in ("grpo", "cpgd"):
        lines.append("- " + judged(paired(per_seed(F.rl_arm(preset, high), "ratio_tail_share"),
                                          per_seed(F.rl_arm(preset, low), "ratio_tail_share")),
                                   f"{preset}'s ratio tail share grows with the dose (dose {high} minus dose {low})"))
lines.append("- Only the first line is the pre-declared test; the others are secondary comparisons, and the "
             "training curves above are one seed, descriptive.")
W.show_markdown("\\n".join(lines))
'''),
]

# =============================================================================================
CLIP = [
    ("md", r"""
# 11 — Clipping: PG and PGD (no clip) vs CPG and CPGD (clipped), under off-policy pressure

Finding `clipping` (CPGD paper, Table 2 ablations): at the pressure dose (several optimizer steps per rollout
batch), do the unclipped objectives degrade where the clipped ones hold? The pre-declared metric is the *math
AUC*: the mean math test accuracy over the evaluated checkpoints (the base at step 0 included), so an arm that
rises and then collapses is not judged by its last point alone. The effect is, per seed, the mean of the
clipped arms minus the mean of the unclipped ones; this notebook reads the findings run's cells.
"""),
    ("params", FINDINGS_PARAMS),
    ("code", findings_imports(runs=True)),
    ("code", findings_load("clipping")),
    ("code", FINDINGS_HELPERS + RUN_HELPERS),
    ("code", FINDING_ROW),
    ("code", EFFECTS),
    ("code", '''
clipped, unclipped = list(record["better"]), list(record["worse"])  # (cpg, cpgd) and (pg, pgd) at the pressure dose
arms = unclipped + clipped
arm_table(["base"] + arms, {"math_auc": ("math AUC (mean test accuracy over checkpoints)", "%"),
                            "math_accuracy": ("final math test accuracy", "%"),
                            "ratio_tail_share": ("tokens |log r| > log 2", "%")})
'''),
    ("code", '''
points_figure({"math AUC": {a: per_seed(a, "math_auc") for a in ["base"] + arms},
               "final accuracy": {a: per_seed(a, "math_accuracy") for a in ["base"] + arms}},
              xaxis="arm (base: no training, its AUC is its accuracy)", yaxis="math test accuracy", tickformat=".0%",
              title="per seed (dots) and mean with 95% CI (diamonds)")
'''),
    ("code", '''
fig = go.Figure()
for i, arm in enumerate(arms):
    by_step = {}
    for s in seeds:
        for step, acc in cells.get((arm, s), {}).get("curve", []):
            by_step.setdefault(int(step), {})[s] = acc
    ivs = [evidence.mean_ci(list(by_step[t].values())) for t in sorted(by_step)]
    fig.add_scatter(x=sorted(by_step), y=[iv.mean for iv in ivs], mode="lines+markers", name=arm,
                    line=dict(color=viz.PALETTE[i % len(viz.PALETTE)]), error_y=error_bars(ivs))
base = per_seed("base", "math_accuracy")
if base:
    fig.add_hline(y=evidence.mean_ci(list(base.values())).mean, line_dash="dot", line_color="#555",
                  annotation_text=f"base policy {fmt(evidence.mean_ci(list(base.values())))}")
fig.update_layout(title=f"math test accuracy at the evaluated checkpoints ({CI} over seeds)", height=380,
                  xaxis_title="RL step", yaxis=dict(title="math test accuracy", tickformat=".0%"))
fig
'''),
    ("code", '''
# Clip fractions the learner saw (run directories' metrics: mean over steps per seed, then over seeds)
rows = []
for arm in arms:
    runs = [m for s in seeds if len(m := run_metrics(arm, s))]
    row = {"arm": arm, "seeds with a run directory": len(runs)}
    for key, label in (("policy/clipfrac_low", "tokens clipped, low side"),
                       ("policy/clipfrac_high", "tokens clipped, high side")):
        values = [float(m[key].mean()) for m in runs if key in m]
        row[f"{label}, {CI}"] = fmt(evidence.mean_ci(values)) if values else "—"
    rows.append(row)
pd.DataFrame(rows)
'''),
    ("code", '''
# What this shows (computed: evidence sentences over seeds)
def side(arms_, key):
    """{seed: mean over arms_ of a cell measurement}, over the seeds where every arm has it."""
    values = [per_seed(a, key) for a in arms_]
    return {s: sum(v[s] for v in values) / len(values) for s in seeds if all(s in v for v in values)}


''' + header("") + '''
lines.append("- " + judged(paired(side(clipped, "math_auc"), side(unclipped, "math_auc")),
                           "Clipped minus unclipped math AUC, paired by seed (the finding's effect, from the cells)"))
lines.append("- " + judged(paired(side(clipped, "math_accuracy"), side(unclipped, "math_accuracy")),
                           "Clipped arms end with a higher math test accuracy than unclipped ones "
                           "(clipped minus unclipped)"))
for c, u in zip(clipped, unclipped, strict=True):
    lines.append("- " + judged(paired(per_seed(c, "math_auc"), per_seed(u, "math_auc")),
                               f"Adding the clip raises the math AUC ({c} minus {u})"))
lines.append("- " + judged(paired(side(unclipped, "ratio_tail_share"), side(clipped, "ratio_tail_share")),
                           "Clipped arms have a smaller ratio tail share than unclipped ones "
                           "(unclipped minus clipped)"))
lines.append("- Only the first line is the pre-declared test; the others are secondary comparisons.")
W.show_markdown("\\n".join(lines))
'''),
]

# =============================================================================================
SOLVED = [
    ("md", r"""
# 12 — Which problems does RL lift? Solved vs never-solved, against regression to the mean

Finding `solved_vs_never` (MM-Eureka's data filtering): RL lifts problems the base policy *sometimes* solves,
not those it *never* solves. Per seed, the base's own bucket sample (K samples per math test problem) puts each
problem in a bucket: `never` (0 of K), `sometimes`, `always` (K of K). The lift of a bucket is the success rate
on a fresh sample minus the rate in that bucket sample. Buckets chosen by a noisy sample regress to the mean
— the `never` bucket "lifts" even without training — so the control is the base **re-sampled**, and the
finding's effect is the RL control arm's (sometimes − never) gap minus the re-sampled base's. The never-taught
top level is left out of the buckets and reported apart. This notebook reads the findings run's cells.
"""),
    ("params", FINDINGS_PARAMS),
    ("code", findings_imports()),
    ("code", findings_load("solved_vs_never")),
    ("code", FINDINGS_HELPERS),
    ("code", FINDING_ROW),
    ("code", EFFECTS),
    ("code", INSTRUMENT),
    ("code", '''
BUCKETS = ("sometimes", "never", "always")  # and "untaught": the never-taught level, reported apart
WHO = {f"{F.CONTROL} (RL)": F.CONTROL, "base re-sampled (no training)": "base"}  # whose fresh sample is compared
lifts = {who: {b: {} for b in (*BUCKETS, "untaught")} for who in WHO}
sizes, trials, hits = ({b: 0 for b in (*BUCKETS, "untaught")} for _ in range(3))
for s in seeds:
    base = cells.get(("base", s))
    if base is None:
        continue
    for b, k in zip(base["buckets"], base["bucket_successes"], strict=True):
        sizes[b], trials[b], hits[b] = sizes[b] + 1, trials[b] + base["bucket_samples"], hits[b] + k
    for who, arm in WHO.items():
        if (arm, s) in cells:
            after = cells[(arm, s)]
            for b, lift in F.bucket_lifts(base, after["per_problem_successes"], after["eval_samples"]).items():
                if b in lifts[who] and not math.isnan(lift):
                    lifts[who][b][s] = lift
rl, resampled = list(WHO)


def bucket_row(b):
    """Problems pooled over seeds, the base's success in its bucket sample, and each lift with its 95% CI."""
    diff = paired(lifts[rl][b], lifts[resampled][b])
    return {"bucket (from the base's bucket sample)": b, "problems, pooled over seeds": sizes[b],
            "base success in the bucket sample, pooled": f"{hits[b] / trials[b]:.1%}" if trials[b] else "—",
            **{f"lift of {who}, {CI}": fmt(evidence.mean_ci(list(v.values())), "pp") if (v := lifts[who][b]) else "—"
               for who in WHO},
            f"RL minus re-sampled, {CI}": fmt(evidence.mean_ci(list(diff.values())), "pp") if diff else "—"}


pd.DataFrame([bucket_row(b) for b in BUCKETS])
'''),
    ("code", '''
points_figure({who: {b: {s: 100 * v for s, v in lifts[who][b].items()} for b in BUCKETS} for who in WHO},
              xaxis="bucket (from the base's own bucket sample)",
              yaxis="lift: fresh sample minus bucket sample (pp)", zero=True,
              title="lift per bucket: seeds (dots) and mean with 95% CI (diamonds)")
'''),
    ("md", "## The never-taught level, apart (the top level: no training problem comes from it)"),
    ("code", '''
pd.DataFrame([bucket_row("untaught")])
'''),
    ("code", '''
# What this shows (computed: evidence sentences over seeds)
gap = {who: paired(lifts[who]["sometimes"], lifts[who]["never"]) for who in WHO}
''' + header("") + '''
lines.append(f"- Problems pooled over {len(seeds)} seeds: " + ", ".join(f"{b} {sizes[b]}" for b in BUCKETS)
             + f"; the never-taught level ({sizes['untaught']} problems) is left out of the buckets.")
lines.append("- " + judged(gap[rl], f"{F.CONTROL} lifts sometimes-solved problems more than never-solved ones "
                                    "(lift gap, sometimes minus never)"))
lines.append("- " + judged(gap[resampled], "Re-sampling the base without training lifts sometimes-solved problems "
                                           "more than never-solved ones (regression to the mean alone)"))
lines.append("- " + judged(paired(gap[rl], gap[resampled]),
                           "RL's gap exceeds the re-sampled base's (the finding's effect, from the cells)"))
lines.append("- " + judged(paired(lifts[rl]["never"], lifts[resampled]["never"]),
                           f"{F.CONTROL} lifts never-solved problems beyond re-sampling "
                           "(RL minus re-sampled, never bucket)"))
lines.append("- " + judged(paired(lifts[rl]["untaught"], lifts[resampled]["untaught"]),
                           f"{F.CONTROL} lifts the never-taught level beyond re-sampling (RL minus re-sampled)"))
W.show_markdown("\\n".join(lines))
'''),
]

# =============================================================================================
GEN = [
    ("md", r"""
# 13 — RL vs SFT: in-domain and out-of-domain

Finding `rl_vs_sft` (MM-Eureka Table 5): RL transfers out of domain (physics, chemistry, biology questions that
ask the same arithmetic in other words) better than SFT on the same math problems. Arms: the base policy, the
RL control arm (`findings.CONTROL`: on-policy CPGD with `findings.CONTROL_SETTINGS`) and SFT with the settings
of `findings.SFT_SETTINGS`, tuned on a validation split (math training problems of another draw than the SFT
set), never on the test sets below.
The effect is, per seed, RL's out-of-domain accuracy minus SFT's. This notebook reads the findings run's cells.
"""),
    ("params", FINDINGS_PARAMS),
    ("code", findings_imports()),
    ("code", findings_load("rl_vs_sft")),
    ("code", FINDINGS_HELPERS),
    ("code", FINDING_ROW),
    ("code", EFFECTS),
    ("code", INSTRUMENT),
    ("code", '''
rl, sft = record["better"][0], record["worse"][0]
arms = ["base", rl, sft]
prof = result["profile"]
pd.DataFrame([{"arm": sft, "settings": "findings.SFT_SETTINGS (tuned on a validation split): "
               + ", ".join(f"{k}={v}" for k, v in prof["sft_settings"].items())},
              {"arm": rl, "settings": f"findings.CONTROL_SETTINGS, {prof.get('control_steps')} steps, on-policy: "
               + ", ".join(f"{k}={v}" for k, v in prof.get("control_settings", {}).items())}])
'''),
    ("code", '''
arm_table(arms, {"math_accuracy": ("math test accuracy (in-domain)", "%"),
                 "ood_accuracy": ("out-of-domain accuracy (physics, chemistry, biology)", "%")})
'''),
    ("code", '''
points_figure({arm: {"math (in-domain)": per_seed(arm, "math_accuracy"),
                     "out-of-domain": per_seed(arm, "ood_accuracy")} for arm in arms},
              xaxis="test set", yaxis="accuracy", tickformat=".0%",
              title="per seed (dots) and mean with 95% CI (diamonds)")
'''),
    ("code", '''
# What this shows (computed: evidence sentences over seeds)
math_acc = {a: per_seed(a, "math_accuracy") for a in arms}
ood = {a: per_seed(a, "ood_accuracy") for a in arms}
''' + header("") + '''
for a, b, data, claim in (
        (rl, sft, ood, f"RL ({rl}) reaches a higher out-of-domain accuracy than SFT (RL minus SFT, out-of-domain)"),
        (rl, sft, math_acc, f"RL ({rl}) reaches a higher in-domain accuracy than SFT (RL minus SFT, math)"),
        (sft, "base", math_acc, "SFT raises in-domain accuracy over the base (SFT minus base, math)"),
        (rl, "base", math_acc, f"RL ({rl}) raises in-domain accuracy over the base (RL minus base, math)"),
        (sft, "base", ood, "SFT raises out-of-domain accuracy over the base (SFT minus base, out-of-domain)")):
    lines.append("- " + judged(paired(data[a], data[b]), claim))
s = result["profile"]["sft_settings"]
lines.append(f"- SFT settings come from `findings.SFT_SETTINGS` (lr {s['lr']:g}, {s['num_steps']} steps), tuned on a "
             "validation split of math training problems, not on these test sets.")
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

from eureka_kit.config import PRESETS, RunConfig
from eureka_kit.workbench import arms as W
from eureka_kit.workbench import explorer, viz
from eureka_kit.workbench import notebook_params as P

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
worst = int(df.assign(m=[max(abs(a - b) for a, b in zip(n, o, strict=True)) if len(n) else 0
                         for n, o in zip(df.new_logp, df.old_logp, strict=True)]).sort_values("m").iloc[-1]["sample"])
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
zero = int((df.groupby("group").reward.std().fillna(0) == 0).sum())
lines = [f"**What this shows**: step {step} of `{Path(run).name}` is where the policy moved most; its sample with the "
         f"largest |log-ratio| is #{worst}. {zero} of its {df.group.nunique()} groups had identical rewards "
         "(zero advantage: no gradient from them under any group-baseline preset).",
         f"Replaying that one saved batch under {len(cmp)} presets (one run, one step, one seed: descriptive, "
         "no verdict between presets):"]
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

from eureka_kit.config import RunConfig
from eureka_kit.data import toyworld
from eureka_kit.models import load
from eureka_kit.prm import bestofn
from eureka_kit.prm import data as prm_data
from eureka_kit.prm import model as prm
from eureka_kit.prm.steps import StepPolicyConfig, build_step_policy
from eureka_kit.workbench import arms as W
from eureka_kit.workbench import evidence
from eureka_kit.workbench import notebook_params as P

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
def wilson(rate, n):
    """An accuracy over n problems with its 95% Wilson interval, successes counted as round(rate * n)."""
    iv = evidence.wilson_interval(round(rate * n), n)
    return f"{rate:.1%} (95% CI {iv.low:.1%} to {iv.high:.1%})"


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
n_bon = len(records)
lines.append(f"- Best-of-{bon_n} on {n_bon} math test problems, accuracy with its 95% Wilson interval over problems "
             f"(successes = accuracy × problems, rounded; one seed: descriptive, no verdict): best PRM aggregation "
             f"`{best}` {wilson(top[best], n_bon)}, random pick {wilson(top['random'], n_bon)}, majority vote "
             f"{wilson(top['majority'], n_bon)}, ORM {wilson(top['orm'], n_bon)}, oracle pass@{bon_n} "
             f"{wilson(top['oracle'], n_bon)}.")
lines.append(f"- Margins of `{best}`: {top[best] - top['random']:+.1%} vs random pick, "
             f"{top[best] - top['majority']:+.1%} vs majority vote (one seed: descriptive, no verdict; `{best}` is "
             f"the highest of {len(prm_methods)} PRM aggregations on these same problems, so its number is optimistic).")
ev = rl_eval.set_index("model")
n_rl = int(ev.loc["step policy", "problems"])
lines.append(f"- RL, {rl_steps} steps: pass@1 on {n_rl} math test problems (4 samples each) with its 95% Wilson "
             f"interval over problems (one seed: descriptive, no verdict): step policy "
             f"{wilson(ev.loc['step policy', 'pass@1'], n_rl)}, CPGD {wilson(ev.loc['cpgd', 'pass@1'], n_rl)}, "
             f"CPGD + step advantages {wilson(ev.loc['cpgd_prm', 'pass@1'], n_rl)}.")
if prm_cols:
    last = hist[hist.arm == "cpgd_prm"][prm_cols].mean()
    lines.append("- Process metrics of the cpgd_prm arm (mean over steps): "
                 + ", ".join(f"{k} {v:.3f}" for k, v in last.items()) + ".")
W.show_markdown("\\n".join(lines))
'''),
]

# =============================================================================================
MISMATCH = [
    ("md", r"""
# 15 — Train–inference mismatch: the sampler's μ against the learner's π_old

The rollout engine samples from μ (its precision, temperature / top-k / top-p truncation, possibly stale
weights); the learner recomputes π_old. Per token ρ = π_old / μ, and every "on-policy" ratio hides it. This
notebook runs the mismatch lab (`eureka_kit.workbench.mismatch_lab`):

1. **Null runs** (learning rate 0): the policy never moves, so every ρ ≠ 1 is mismatch. One run per injected
   mismatch — a bf16 sampler, top-p / top-k sampling scored untruncated, a learner temperature the sampler did
   not use — against the fp32 control, per seed.
2. **A stale sampler** (weights `lag` steps behind, the asynchronous case; the dose): GRPO (and CPGD in the full
   profile, at three lags) with no correction, with TIS
   (weights min(ρ, C)) and with IcePop (tokens with ρ outside [α, β] masked), and on time.

Every comparison is per seed, with its mean, 95% CI and verdict (the evidence engine); formulas in
docs/algorithms.md §4.10.
"""),
    ("params", '''
profile: str = "quick"  # mismatch_lab.PROFILES: quick (3 seeds) or full (5 seeds)
run_root: str = "runs/notebooks"  # the lab's cells, runs and mismatch.json go under <run_root>/15_mismatch/<profile>
workers: int = 2  # worker processes for the cells
progress: bool = False  # console progress bar
'''),
    ("code", '''
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from IPython.display import display

from eureka_kit.engine.runs import open_run
from eureka_kit.workbench import arms as W
from eureka_kit.workbench import evidence
from eureka_kit.workbench import mismatch_lab as M
from eureka_kit.workbench import notebook_params as P

params = P.validate(dict(profile=profile, run_root=run_root, workers=workers, progress=progress),
                    profile=P.choice(M.PROFILES), run_root=P.output_dir, workers=P.positive_int, progress=P.boolean)
params
'''),
    ("code", '''
out = Path(run_root) / "15_mismatch" / profile
lab = M.run_lab(profile, out, work=out / "runs", workers=workers, progress=progress)
prof = lab["profile"]
print(f"profile {prof['name']}: seeds {prof['seeds']}, null runs {prof['null_steps']} steps, RL {prof['rl_steps']} "
      f"steps, sampler lags {prof['lags']}; {lab['provenance']['cells_wall_s']:.0f} cell-seconds")



def long_table(values, key):
    return pd.DataFrame([{key: name, "metric": metric, "seed": int(seed), "value": value}
                         for name, metrics in values.items() for metric, by_seed in metrics.items()
                         for seed, value in by_seed.items()])
'''),
    ("md", """
## 1. Null runs: mismatch with no learning

KL(μ‖π_old) by k3 and the ρ quantiles, averaged over each run's steps. Top-p and top-k renormalise μ over the
kept tokens, so every sampled token has μ ≥ π_old: ρ ≤ 1, a bias no learning caused.
"""),
    ("code", '''
display(evidence.judged_table(lab["judged_null"]))
null = long_table(lab["null"], "injection")
null.pivot_table(index="injection", columns="metric", values="value", aggfunc="mean").round(5)
'''),
    ("code", '''
fig = go.Figure()
for q in ("mismatch/rho_q01", "mismatch/rho_q50", "mismatch/rho_q99"):
    part = null[null.metric == q]
    fig.add_trace(go.Box(x=part.injection, y=part.value, name=q.replace("mismatch/rho_q", "ρ quantile 0."),
                         boxpoints="all"))
fig.add_hline(y=1.0, line_dash="dot")
fig.update_layout(boxmode="group", title="ρ = π_old / μ quantiles per null run (dots: seeds)",
                  xaxis_title="injected mismatch", yaxis_title="ρ (1 = no mismatch)", height=420)
fig
'''),
    ("code", '''
# The per-token view of one null run: log ρ = old_logp - behavior_logp, read from the rollouts parquet.
def log_rho(run_dir):
    rd = open_run(run_dir)
    df = pd.concat([rd.rollouts(s) for s in rd.rollout_steps()])
    return np.concatenate([np.asarray(o) - np.asarray(b) for o, b in zip(df.old_logp, df.behavior_logp, strict=True)])


seed0 = prof["seeds"][0]
fig = go.Figure()
for name in lab["null"]:
    run_dir = lab["run_dirs"].get(f"null:{name}:{seed0}")
    if run_dir and Path(run_dir).exists():
        fig.add_trace(go.Histogram(x=log_rho(run_dir), name=name, opacity=0.6, nbinsx=80))
fig.update_layout(barmode="overlay", title=f"log ρ per token, null runs (seed {seed0}: descriptive)",
                  xaxis_title="log ρ = log π_old − log μ", yaxis_title="tokens (log scale)", yaxis_type="log",
                  height=420)
fig
'''),
    ("md", """
## 2. A stale sampler, with and without corrections

Each arm trains GRPO with the sampler `lag` steps behind (and one on time); the table gives the pre-declared
comparisons (test accuracy, pp), the figure the per-seed values.
"""),
    ("code", '''
display(evidence.judged_table(lab["judged_rl"]))
rl = long_table(lab["rl"], "arm")
rl.pivot_table(index="arm", columns="metric", values="value", aggfunc="mean").round(4)
'''),
    ("code", '''
fig = go.Figure()
for metric, label in (("math_accuracy", "math test accuracy"), ("mismatch/rho_out_frac", "tokens with ρ ∉ [½, 2]"),
                      ("correction/masked_frac", "tokens masked by the correction")):
    part = rl[rl.metric == metric]
    fig.add_trace(go.Box(x=part.arm, y=part.value, name=label, boxpoints="all"))
fig.update_layout(boxmode="group", title="per arm (dots: seeds)", xaxis_title="preset / correction / sampler lag",
                  yaxis_title="share", yaxis_tickformat=".0%", height=420)
fig
'''),
    ("code", '''
# Dose-response: accuracy against the sampler's lag, per correction (mean over seeds; lag 0 = on time, no correction).
arms = rl.arm.str.split("/", expand=True).rename(columns={0: "preset", 1: "correction", 2: "lag"})
dose = pd.concat([rl, arms], axis=1)
dose["lag"] = dose.lag.str.removeprefix("lag").astype(int)
fig = go.Figure()
for (preset, correction), part in dose[dose.metric == "math_accuracy"].groupby(["preset", "correction"]):
    on_time = dose[(dose.metric == "math_accuracy") & (dose.preset == preset) & (dose.lag == 0)]
    line = pd.concat([on_time, part]).groupby("lag").value.agg(["mean", "sem"]).reset_index()
    fig.add_trace(go.Scatter(x=line.lag, y=line["mean"], error_y=dict(array=1.96 * line["sem"].fillna(0)),
                             mode="lines+markers", name=f"{preset} / {correction}"))
fig.update_layout(title="math test accuracy vs sampler lag (mean ± 1.96 SE over seeds)", xaxis_title="sampler lag "
                  "(RL steps behind)", yaxis_title="math test accuracy", yaxis_tickformat=".0%", height=400)
fig
'''),
    ("code", '''
lines = ["**What this shows** (every line: mean over seeds with its 95% CI and the verdict):"]
lines += [evidence.judged_line(r) for r in lab["judged_null"] + lab["judged_rl"]]
W.show_markdown("\\n".join(lines))
'''),
]


# =============================================================================================
OBJECTIVES = [
    ("md", r"""
# 16 — Objectives on the same batch: CPGD and the post-CPGD objectives under pressure

Six objectives — CPGD, GRPO, SAPO (soft gate), GMPO (geometric mean), CISPO (capped IS weights) and GSPO (sequence
ratio) — at the stability finding's off-policy pressure (4 minibatches × 2 epochs per rollout). This notebook runs
the objectives lab (`eureka_kit.workbench.objectives_lab`):

1. **Trained arms**: one run per (objective, seed); ratio tail share (tokens with |log r| > log 2) and math test
   accuracy, each objective against CPGD per seed with its mean, 95% CI and verdict (the evidence engine).
2. **One captured batch**: runs keep the batch and the weights of a step where a sentinel fired
   (`<run>/captures/`). On that batch, without an optimizer step, every objective's loss, per-token gradient weight
   dL/dl, dropped and capped tokens, parameter-gradient norm and the cosine between every pair of parameter
   gradients (`workbench.same_batch`), with the weights at the start of the step (ratio 1) and at its end.
"""),
    ("params", '''
profile: str = "quick"  # objectives_lab.PROFILES: smoke (2 seeds, 2 steps), quick (3 seeds), full (5 seeds)
run_root: str = "runs/notebooks"  # the lab's cells, runs and objectives.json go under <run_root>/16_objectives/<profile>
workers: int = 2  # worker processes for the cells
progress: bool = False  # console progress bar
'''),
    ("code", '''
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from IPython.display import display

from eureka_kit.workbench import arms as W
from eureka_kit.workbench import evidence
from eureka_kit.workbench import notebook_params as P
from eureka_kit.workbench import objectives_lab as L
from eureka_kit.workbench import same_batch as SB

params = P.validate(dict(profile=profile, run_root=run_root, workers=workers, progress=progress),
                    profile=P.choice(L.PROFILES), run_root=P.output_dir, workers=P.positive_int, progress=P.boolean)
params
'''),
    ("code", '''
out = Path(run_root) / "16_objectives" / profile
lab = L.run_lab(profile, out, work=out / "runs", workers=workers, progress=progress)
prof = lab["profile"]
print(f"profile {prof['name']}: seeds {prof['seeds']}, {prof['steps']} steps per arm at {lab['settings']}; "
      f"{lab['provenance']['cells_wall_s']:.0f} cell-seconds")



values = pd.DataFrame([{"arm": arm, "metric": metric, "seed": int(seed), "value": value}
                       for arm, metrics in lab["values"].items() for metric, by_seed in metrics.items()
                       for seed, value in by_seed.items()])
'''),
    ("md", """
## 1. Trained arms against CPGD

Effects are claim-oriented (positive = the arm does better than CPGD): CPGD's tail share minus the arm's, the
arm's accuracy minus CPGD's, in percentage points, paired by seed.
"""),
    ("code", '''
display(evidence.judged_table(lab["judged"]))
values.pivot_table(index="arm", columns="metric", values="value", aggfunc="mean").loc[list(L.ARMS)].round(4)
'''),
    ("code", '''
fig = go.Figure()
for metric, label in (("ratio_tail_share", "ratio tail share (|log r| > log 2)"), ("math_accuracy", "math test accuracy")):
    part = values[values.metric == metric]
    fig.add_trace(go.Box(x=part.arm, y=part.value, name=label, boxpoints="all"))
fig.update_layout(boxmode="group", title="per arm (dots: seeds)", xaxis_title="objective", yaxis_title="share",
                  yaxis_tickformat=".1%", height=420)
fig
'''),
    ("md", """
## 2. Six objectives on one captured batch

The batch a run captured when a sentinel fired (quick and full: the default ratio-tail sentinel, a token ratio
above 10; smoke: its first step). Left: the cosine between the objectives' parameter gradients; middle: each
token's gradient weight against its log-ratio (positive = pushed the way its advantage says; a clipped token sits
at 0); right: the tokens each objective drops (gradient cut) or caps (weight bounded).
"""),
    ("code", '''
same = lab["same_batch"]
if same["capture"]:
    print(f"capture: {same['arm']}, seed {same['seed']}, step {same['step']}, {same['tokens']} tokens; fired: "
          + "; ".join(same["fired"]))
    end = SB.compare_capture(same["capture"], list(L.ARMS), at="end")
    display(SB.same_batch_table(end).round(4))
    display(SB.same_batch_figure(end))
else:
    print(same["reason"])
'''),
    ("code", '''
# The same batch with the weights at the start of the step: every ratio is 1, so the objectives differ only in how
# they weight tokens (aggregation, sequence-level ratios) -- the baseline the end-of-step cosines move from.
if same["capture"]:
    start = SB.compare_capture(same["capture"], list(L.ARMS), at="start")
    display(SB.same_batch_table(start).round(4))
    display(start.param_cosine.round(3))
'''),
    ("code", '''
def per_arm(at, key, fmt):
    table = {row["preset"]: row for row in same[at]["table"]}
    return ", ".join(f"{arm} {fmt(table[arm][key])}" for arm in L.ARMS)


lines = ["**What this shows** (trained arms: mean over seeds with its 95% CI and the verdict):"]
lines += [evidence.judged_line(r) for r in lab["judged"]]
if same["capture"]:
    lines.append(f"- Same batch: {same['arm']}, seed {same['seed']}, step {same['step']} ({same['tokens']} tokens), "
                 "one captured batch of one seed: descriptive, no verdict.")
    for at, what in (("end", "At the end of the step"), ("start", "At the start of the step (ratio 1)")):
        lines.append(f"- {what}, cosine with CPGD's parameter gradient: "
                     f"{per_arm(at, 'cos with cpgd', lambda v: f'{v:.3f}')}; tokens dropped: "
                     f"{per_arm(at, 'dropped share', lambda v: f'{100 * v:.2f}%')}; capped: "
                     f"{per_arm(at, 'capped share', lambda v: f'{100 * v:.2f}%')}.")
else:
    lines.append(f"- Same batch: {same['reason']}.")
W.show_markdown("\\n".join(lines))
'''),
]


NOTEBOOKS = {"00_tour": TOUR, "10_kl_removal": KL, "11_clipping": CLIP, "12_solved_vs_never_solved": SOLVED,
             "13_rl_vs_sft_generalization": GEN, "14_process_rewards": PRM, "15_train_inference_mismatch": MISMATCH,
             "16_objectives_same_batch": OBJECTIVES, "20_ratio_explorer": EXPLORER}


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
