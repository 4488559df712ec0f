"""Same-batch comparison: several objectives on one saved batch, without an optimizer step.

For every preset, on the same tokens, pi_old, advantages and mask (and mu / reference log-probs where recorded, so
corrections and the KL term replay too):

- its loss and per-token gradient weight dL/dl_t (l_t = log pi_theta of the sampled token t: how hard the token is
  pushed, negative = made more likely), and the norm of that vector;
- the tokens it drops (gradient cut: a clip, a dual clip, DPPO's trust-region mask, Clip-Cov's detach, a
  correction's mask) and caps (gradient kept with its weight held at a bound: CISPO's and TIS's capped weights,
  KL-Cov's penalised tokens);
- given a policy, its parameter gradient g = J^T dL/dl (J = dl/dtheta: one forward over the batch, one
  vector-Jacobian product per preset on the kept graph), g's norm and the cosine between every pair of presets.

    sb = compare_capture("runs/x/captures/step_000012", ["cpgd", "grpo", "sapo"], at="end")   # with gradients
    sb = compare_step("runs/x", 12, ["cpgd", "grpo"])   # the rollouts parquet: no model, no parameter gradients
    same_batch_table(sb), same_batch_figure(sb), same_batch_html(sb)

A capture (engine/capture.py) holds the weights at the start and the end of the step: at the start every ratio is
1 (up to mu), so the objectives differ only in their weighting; at the end the ratios carry the whole step's drift,
the off-policy point where clips, gates and caps act. The parquet path uses the saved new_logp (the learner's
log-probs in the last update epoch) as l, as `replay` does.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from eureka_kit.algos import losses, mismatch
from eureka_kit.config import RunConfig
from eureka_kit.engine.capture import Capture, load_capture
from eureka_kit.engine.logprobs import completion_logprobs
from eureka_kit.engine.runs import RunDir, open_run
from eureka_kit.workbench.replay import pad_column, step_tensors

# Surrogates whose clip masks mark a weight held at a bound with the gradient kept (losses.py), not a cut.
CAPPING_SURROGATES = ("cispo", "cispo_verl")


@dataclass
class Objective:
    """One preset on the batch. Arrays are [B, T] numpy, zero / False on masked tokens."""

    preset: str
    loss: float
    stats: dict[str, float]
    grad_coef: np.ndarray
    """dL/dl_t per token"""
    dropped: np.ndarray
    capped: np.ndarray
    logp_grad_norm: float
    """L2 norm of dL/dl over the batch"""
    param_grad_norm: float | None = None
    """L2 norm of dL/dtheta (None without a policy)"""


@dataclass
class SameBatch:
    """The comparison: one `Objective` per preset, the batch's log-ratios, advantages and mask, and the pairwise
    cosines of dL/dl (always) and of the parameter gradients (with a policy)."""

    objectives: dict[str, Objective]
    log_ratio: np.ndarray
    adv: np.ndarray
    mask: np.ndarray
    logp_cosine: pd.DataFrame
    param_cosine: pd.DataFrame | None
    source: str

    @property
    def cosine(self) -> pd.DataFrame:
        """The parameter-gradient cosines when a policy was given, else those of dL/dl."""
        return self.param_cosine if self.param_cosine is not None else self.logp_cosine


def objective_config(preset: str, *, group_size: int | None = None, max_len: int | None = None,
                     keep_kl: bool = False, **overrides: Any) -> RunConfig:
    """The RunConfig of `preset` for a loss on a saved batch: batch sizes set to the group size so any preset
    validates; the reference KL dropped (kl_coef 0) unless `keep_kl` (reference log-probs at hand)."""
    extra = {k: v for k, v in dict(group_size=group_size, max_len=max_len).items() if v is not None}
    k = extra.get("group_size", RunConfig.group_size)
    cfg = RunConfig.from_preset(preset, **{"train_batch_size": k, "micro_batch_size": k, **extra, **overrides})
    if cfg.kl_coef > 0 and not keep_kl:
        cfg = RunConfig.from_dict({**cfg.to_dict(), "kl_coef": 0.0})
    return cfg


def token_flags(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, cfg: RunConfig,
                behavior_logp: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(dropped, capped) [B, T] bool over valid tokens, through the preset's own surrogate and correction:
    dropped = gradient cut (clipped_low/high and dual_clipped of a cutting surrogate, Clip-Cov's cov_selected, a
    correction's masked tokens); capped = gradient kept, weight bounded (CISPO's clip masks, TIS weights at the cap,
    KL-Cov's penalised cov_selected)."""
    fmask, logp_v, old_v, log_ratio, adv_t = losses.masked_inputs(logp.detach(), old_logp, adv, mask)
    valid = fmask.bool()
    _, info = losses.surrogate(log_ratio, adv_t, fmask, cfg, logp=logp_v)
    none = torch.zeros_like(valid)
    bounds = info.get("clipped_low", none) | info.get("clipped_high", none)
    selected = info.get("cov_selected", none)
    if cfg.surrogate in CAPPING_SURROGATES:
        dropped, capped = none, bounds
    elif cfg.surrogate == "kl_cov":
        dropped, capped = none, selected
    else:
        dropped, capped = bounds | info.get("dual_clipped", none) | selected, none
    if cfg.correction != "none":
        weight, keep, _ = mismatch.correct(torch.ones_like(fmask), fmask, cfg, logp=logp_v, old_logp=old_v,
                                           behavior_logp=behavior_logp, adv=adv_t)
        dropped = dropped | (valid & ~keep.bool())
        if cfg.correction == "tis":
            capped = capped | (keep.bool() & (weight >= cfg.correction_cap * (1 - 1e-6)))
    return dropped & valid, capped & valid


def _cosines(vectors: dict[str, Tensor]) -> pd.DataFrame:
    names = list(vectors)
    out = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for a, b in itertools.combinations(names, 2):
        va, vb = vectors[a].double(), vectors[b].double()
        den = float(va.norm() * vb.norm())
        out.loc[a, b] = out.loc[b, a] = float(va @ vb) / den if den > 0 else math.nan
    for a in names:
        if float(vectors[a].norm()) == 0:
            out.loc[a, a] = math.nan
    return out


def compare_tensors(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, presets: Sequence[str], *,
                    behavior_logp: Tensor | None = None, ref_logp: Tensor | None = None,
                    params: Sequence[torch.nn.Parameter] | None = None, group_size: int | None = None,
                    max_len: int | None = None, source: str = "tensors", **overrides: Any) -> SameBatch:
    """Compare `presets` on one batch ([B, T]; adv [B] or [B, T]). `logp` is the current log-probs: a plain tensor,
    or the output of a forward with its graph to `params`, which then get one vector-Jacobian product per preset
    (parameter gradients and their cosines). `overrides` (RunConfig algorithm fields) apply to every preset."""
    if len(set(presets)) != len(presets) or not presets:
        raise ValueError(f"presets: need distinct preset names, got {list(presets)}")
    graph = params is not None and logp.requires_grad
    params = [p for p in (params or []) if p.requires_grad]
    old, fmask, adv_d = old_logp.detach().double(), mask.detach().double(), adv.detach().double()
    mu = None if behavior_logp is None else behavior_logp.detach().double()
    ref = None if ref_logp is None else ref_logp.detach().double()
    objectives, logp_grads, param_grads = {}, {}, {}
    for preset in presets:
        cfg = objective_config(preset, group_size=group_size, max_len=max_len, keep_kl=ref is not None, **overrides)
        leaf = logp.detach().double().requires_grad_(True)
        loss, stats = losses.policy_loss(leaf, old, adv_d, fmask, cfg=cfg, ref_logp=ref, behavior_logp=mu)
        (coef,) = torch.autograd.grad(loss, leaf)
        coef = coef * fmask
        dropped, capped = token_flags(leaf.detach(), old, adv_d, fmask, cfg, mu)
        norm = None
        if graph:
            grads = torch.autograd.grad(logp, params, grad_outputs=coef.to(logp.dtype).to(logp.device),
                                        retain_graph=True, allow_unused=True)
            flat = torch.cat([(torch.zeros_like(p) if g is None else g).flatten().double().cpu()
                              for p, g in zip(params, grads, strict=True)])
            param_grads[preset], norm = flat, float(flat.norm())
        logp_grads[preset] = coef.flatten()
        objectives[preset] = Objective(preset, float(loss.detach()), stats, coef.numpy(), dropped.numpy(),
                                       capped.numpy(), float(coef.norm()), norm)
    _, _, _, log_ratio, adv_t = losses.masked_inputs(logp.detach().double(), old, adv_d, fmask)
    return SameBatch(objectives, log_ratio.numpy(), adv_t.numpy(), fmask.numpy(), _cosines(logp_grads),
                     _cosines(param_grads) if graph else None, source)


def compare_capture(capture: Capture | str | Path, presets: Sequence[str], *, at: str = "end", policy=None,
                    micro: int | None = None, **overrides: Any) -> SameBatch:
    """Compare `presets` on a capture's batch (micro-batch `micro` of its update, or the whole batch) with the
    policy at the start or the end of the step (`at`; or `policy` given), parameter gradients included."""
    cap = capture if isinstance(capture, Capture) else load_capture(capture)
    where = "a given policy" if policy is not None else f"the weights at the {at} of the step"
    if policy is None:
        policy, _ = cap.policy(at)
    cfg, t = cap.config, cap.tensors
    rows = torch.arange(len(cap.meta["texts"])) if micro is None else \
        torch.tensor(cap.meta["micro_batches"][micro]["rows"])
    with torch.enable_grad():
        logp = completion_logprobs(policy, cap.rollouts(), rows, cfg)
    params = [p for p in policy.parameters() if p.requires_grad]

    def pick(name: str) -> Tensor | None:
        return t[name][rows] if name in t else None

    return compare_tensors(logp, pick("old_logp").to(logp.device), pick("advantages"), pick("loss_mask"), presets,
                           behavior_logp=pick("behavior_logp"), ref_logp=pick("ref_logp"), params=params,
                           group_size=cfg.group_size, max_len=cfg.max_len,
                           source=f"capture of step {cap.step}, {where}", **overrides)


def compare_step(run: RunDir | str | Path, step: int, presets: Sequence[str], **overrides: Any) -> SameBatch:
    """Compare `presets` on a step's saved rollouts (no model): l = the saved new_logp, so per-token weights,
    dropped/capped tokens, losses and the cosines of dL/dl, no parameter gradients."""
    run = run if isinstance(run, RunDir) else open_run(run)
    if step not in run.rollout_steps():
        raise ValueError(f"step: {step} has no saved rollouts in {run.path}; saved steps: {run.rollout_steps()}")
    df = run.rollouts(step).sort_values("sample")
    t = step_tensors(df)
    settings = run.config().get("config", {})
    mu = pad_column(df["behavior_logp"]) if "behavior_logp" in df else None
    return compare_tensors(t["new_logp"], t["old_logp"], t["adv"], t["mask"], presets, behavior_logp=mu,
                           group_size=settings.get("group_size"), max_len=settings.get("max_len"),
                           source=f"{run.path.name} step {step} (saved log-probs, no model)", **overrides)


# ---------------------------------------------------------------------------------------------
# Views: a table, an HTML block and a figure.


def same_batch_table(sb: SameBatch) -> pd.DataFrame:
    """One row per preset: loss, |dL/dl|, |dL/dtheta| (with a policy), dropped and capped tokens (count and share of
    the batch's tokens), the shares pushed up / down (dL/dl < 0 / > 0), and the cosine with the first preset."""
    n = max(float(sb.mask.sum()), 1.0)
    first = next(iter(sb.objectives))
    rows = []
    for name, o in sb.objectives.items():
        rows.append({"preset": name, "loss": o.loss, "|dL/dl|": o.logp_grad_norm,
                     "|dL/dθ|": o.param_grad_norm if o.param_grad_norm is not None else math.nan,
                     "dropped": int(o.dropped.sum()), "dropped share": o.dropped.sum() / n,
                     "capped": int(o.capped.sum()), "capped share": o.capped.sum() / n,
                     "pushed up": float((o.grad_coef < 0).sum() / n), "pushed down": float((o.grad_coef > 0).sum() / n),
                     f"cos with {first}": float(sb.cosine.loc[name, first])})
    return pd.DataFrame(rows)


def same_batch_html(sb: SameBatch) -> str:
    """The table and the cosine matrix as HTML (the explorer's pane)."""
    kind = "parameter gradients dL/dθ" if sb.param_cosine is not None else "dL/dl (no model: per-token weights only)"
    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    return (f"<div>same batch: {html.escape(sb.source)}; {int(sb.mask.sum())} tokens</div>"
            + same_batch_table(sb).to_html(index=False, float_format=fmt, border=0)
            + f"<div>cosine between the objectives' {html.escape(kind)}</div>"
            + sb.cosine.to_html(float_format=fmt, border=0))


def same_batch_figure(sb: SameBatch, *, max_points: int = 4000):
    """Three panels: the pairwise cosines (parameter gradients with a policy, else dL/dl), each token's gradient
    weight -dL/dl_t x sign(A_t) against its log-ratio (positive = pushed the way its advantage says), and the
    dropped / capped token shares. `max_points` valid tokens are drawn per preset (evenly spaced, deterministic)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(sb.objectives)
    kind = "dL/dθ" if sb.param_cosine is not None else "dL/dl"
    fig = make_subplots(rows=1, cols=3, column_widths=[0.3, 0.45, 0.25], horizontal_spacing=0.1,
                        subplot_titles=(f"cosine of {kind}", "gradient weight vs log-ratio", "tokens cut / capped"))
    cos = sb.cosine.loc[names, names].to_numpy()
    fig.add_trace(go.Heatmap(z=cos, x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu", showscale=False,
                             text=np.vectorize(lambda v: "" if math.isnan(v) else f"{v:.2f}")(cos),
                             texttemplate="%{text}", hovertemplate="%{y} · %{x}: %{z:.3f}<extra></extra>"), 1, 1)
    valid = sb.mask.astype(bool)
    pick = np.flatnonzero(valid.ravel())
    pick = pick[np.linspace(0, len(pick) - 1, min(max_points, len(pick))).astype(int)] if len(pick) else pick
    x = sb.log_ratio.ravel()[pick]
    sign = np.sign(sb.adv.ravel()[pick])
    for name in names:
        y = -sb.objectives[name].grad_coef.ravel()[pick] * sign
        fig.add_trace(go.Scattergl(x=x, y=y, mode="markers", name=name, legendgroup=name, marker=dict(size=4),
                                   hovertemplate=f"{name}<br>log r %{{x:.3f}}<br>weight %{{y:.3g}}<extra></extra>"),
                      1, 2)
    n = max(float(sb.mask.sum()), 1.0)
    for label, key in (("dropped", "dropped"), ("capped", "capped")):
        fig.add_trace(go.Bar(x=names, y=[getattr(sb.objectives[p], key).sum() / n for p in names], name=label,
                             showlegend=True), 1, 3)
    fig.update_xaxes(title_text="log r = log π_θ − log π_old", row=1, col=2)
    fig.update_yaxes(title_text="−dL/dl × sign(A)", row=1, col=2)
    fig.update_yaxes(title_text="share of tokens", tickformat=".0%", row=1, col=3)
    fig.update_layout(title=f"Same batch: {sb.source}", height=430, barmode="group")
    return fig
