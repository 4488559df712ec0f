"""The findings page: findings.json (+ the committed reference run's) -> one offline HTML page with plotly charts.

A view: it never trains (`findings_run.run_profile` does). Every sentence on the page is an
`evidence.sentence` of per-seed effects; descriptive single-seed views (training curves, sentinels) say so.

    findings_page(out)            out/index.html from out/findings.json (and reports/reference/findings.json)
    findings_table_html(records)  the table the suite's index opens with
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from eureka_kit.engine.runs import RunDir
from eureka_kit.workbench import evidence, viz
from eureka_kit.workbench.findings import ARMS, CONTROL, DOSES, PRESSURE
from eureka_kit.workbench.pages import figure_div, html_page, warnings_html, write_plotly_js

VERDICT_COLOURS = {"supports": "#2a7a2a", "contradicts": "#a00", "inconclusive": "#8a6d00",
                   "not testable here": "#555"}
REFERENCE = Path(__file__).resolve().parents[2] / "reports" / "reference" / "findings.json"


def load(path: str | Path) -> dict[str, Any] | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def _ours(r: dict[str, Any]) -> str:
    if r.get("effect") is None or math.isnan(r["effect"]):
        return "n/a"
    ci = "" if math.isnan(r["ci_low"]) else f" [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
    return f"{r['effect']:+.2f}{ci} {r['unit']}".strip()


def _verdict(r: dict[str, Any] | None) -> str:
    if r is None:
        return "—"
    colour = VERDICT_COLOURS.get(r["verdict"], "#222")
    reason = f"<br><small>{html.escape(r['reason'])}</small>" if r.get("reason") else ""
    return f"<b style='color:{colour}'>{html.escape(r['verdict'])}</b> ({len(r['seeds'])} seeds){reason}"


def findings_table_html(records: list[dict[str, Any]], reference: list[dict[str, Any]] | None = None,
                        link: str = "") -> str:
    """Claim, source, the paper's number, ours (mean effect [95% CI], claim-oriented: + = the paper's direction)
    and verdict, for this run and (when given) the committed reference run side by side."""
    ref = {r["id"]: r for r in reference or []}
    head = ("<tr><th>finding</th><th>claim (seed paper)</th><th>paper</th><th>metric</th><th>ours: effect [95% CI]"
            "</th><th>verdict</th>" + ("<th>reference (full profile)</th><th>reference verdict</th>" if ref else "")
            + "</tr>")
    rows = []
    for r in records:
        rr = ref.get(r["id"])
        name = f'<a href="{link}#{r["id"]}">{r["id"]}</a>' if link else r["id"]
        rows.append(
            f"<tr><td>{name}</td><td style='text-align:left;max-width:360px'>{html.escape(r['claim'])}"
            f"<br><small>{html.escape(r['source'])}</small></td><td style='text-align:left'>"
            f"{html.escape(r['paper_number'])}</td><td>{html.escape(r['metric'])}</td><td>{html.escape(_ours(r))}</td>"
            f"<td style='text-align:left'>{_verdict(r)}</td>"
            + (f"<td>{html.escape(_ours(rr)) if rr else '—'}</td><td style='text-align:left'>{_verdict(rr)}</td>"
               if ref else "") + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def effects_figure(records: list[dict[str, Any]]) -> go.Figure:
    """Per finding: each seed's claim-oriented effect (dots), the mean and its 95% CI (bar); 0 = no effect."""
    fig = go.Figure()
    for r in records:
        fig.add_scatter(x=r["per_seed_effect"], y=[r["id"]] * len(r["seeds"]), mode="markers", name=f"{r['id']} seeds",
                        text=[f"seed {s}" for s in r["seeds"]], marker=dict(size=9, opacity=0.6), showlegend=False)
        if not math.isnan(r.get("ci_low", math.nan)):
            fig.add_scatter(x=[r["effect"]], y=[r["id"]], mode="markers", showlegend=False,
                            marker=dict(symbol="diamond", size=13, color="black"),
                            error_x=dict(type="data", symmetric=False, array=[r["ci_high"] - r["effect"]],
                                         arrayminus=[r["effect"] - r["ci_low"]]))
    fig.add_vline(x=0, line_dash="dash", line_color="#888")
    fig.update_layout(height=120 + 60 * len(records), margin=dict(t=30, b=40, l=120),
                      xaxis_title="claim-oriented effect (pp; + = the paper's direction), seeds and mean with 95% CI",
                      yaxis_title="finding")
    return fig


def dose_figure(rows: list[dict[str, Any]], *, title: str, percent: bool) -> go.Figure:
    """Mean over seeds against the off-policy dose, per preset, with its 95% CI band."""
    fig = go.Figure()
    df = pd.DataFrame(rows)
    for i, (preset, d) in enumerate(df.groupby("preset", sort=False) if len(df) else []):
        colour = viz.PALETTE[i % len(viz.PALETTE)]
        if d.ci_low.notna().all():
            fig.add_scatter(x=list(d.dose) + list(d.dose[::-1]), y=list(d.ci_high) + list(d.ci_low[::-1]),
                            fill="toself", line=dict(width=0), fillcolor=colour, opacity=0.2, showlegend=False,
                            hoverinfo="skip")
        fig.add_scatter(x=d.dose, y=d["mean"], mode="lines+markers", name=preset, line=dict(color=colour))
    fig.update_layout(title=title, height=340, margin=dict(t=40, b=40),
                      xaxis=dict(title="optimizer steps per rollout batch (dose)", type="log", tickvals=list(DOSES)),
                      yaxis=dict(title=title, tickformat=".0%" if percent else None))
    return fig


def arms_table(result: dict[str, Any]) -> pd.DataFrame:
    """Per arm: mean [95% CI] over seeds of math and OOD accuracy, AUC, ratio tail share; the base row first."""
    rows = []
    for arm, values in result["arms"].items():
        row: dict[str, Any] = {"arm": arm, "seeds": len(values["seeds"])}
        for key, label in (("math_accuracy", "math acc"), ("ood_accuracy", "OOD acc"), ("math_auc", "math AUC"),
                           ("ratio_tail_share", "tokens |log r|>log 2")):
            xs = [v for v in values.get(key, []) if v is not None]
            if not xs:
                row[label] = "—"
                continue
            iv = evidence.mean_ci(xs)
            row[label] = f"{iv.mean:.1%}" + ("" if math.isnan(iv.low) else f" [{iv.low:.1%}, {iv.high:.1%}]")
        rows.append(row)
    return pd.DataFrame(rows)


def _bucket_html(cells_dir: Path, seeds: list[int]) -> str:
    """Pooled over seeds: problems per bucket and the lift of the control arm and of the re-sampled base."""
    from eureka_kit.workbench.findings import bucket_lifts, load_cells

    cells = load_cells(cells_dir.parent)
    rows: dict[str, dict[str, list[float]]] = {}
    sizes: dict[str, int] = {}
    for seed in seeds:
        b, r = cells.get(("base", seed)), cells.get((CONTROL, seed))
        if b is None or r is None:
            continue
        for bucket in ("sometimes", "never", "always", "untaught"):
            sizes[bucket] = sizes.get(bucket, 0) + sum(x == bucket for x in b["buckets"])
        for who, successes in ((CONTROL, r["per_problem_successes"]), ("base re-sampled", b["per_problem_successes"])):
            for bucket, lift in bucket_lifts(b, successes, b["eval_samples"]).items():
                if not math.isnan(lift):
                    rows.setdefault(who, {}).setdefault(bucket, []).append(lift)
    if not rows:
        return "<p>No bucket data.</p>"
    table = pd.DataFrame([{"arm": who, **{f"{k} ({sizes.get(k, 0)} problems)": f"{100 * sum(v) / len(v):+.1f} pp"
                                          for k, v in b.items()}} for who, b in rows.items()])
    return (table.to_html(index=False, border=0) + "<p>Lift = success rate on a fresh sample minus the rate in the "
            "base sample that chose the bucket (mean over seeds). The re-sampled base shows what regression to the "
            "mean alone gives; the finding's effect is the control arm's gap minus the re-sampled base's. The "
            "never-taught level is left out of the buckets.</p>")


def _curves_html(result: dict[str, Any], out: Path) -> tuple[str, str]:
    """Training curves of the first seed's pressure and control arms: descriptive, one seed, no verdict."""
    seed = result["profile"]["seeds"][0]
    arms = [a for a in result["arms"] if ARMS[a].kind == "rl" and ARMS[a].dose in (1, PRESSURE)]
    dirs = {}
    for arm in arms:
        path = Path(result["profile"].get("work", "runs/findings")) / result["profile"]["name"] / arm / f"seed{seed}"
        if (path / "metrics.jsonl").exists():
            dirs[arm] = RunDir(path)
    if not dirs:
        return "", ""
    curves = figure_div(viz.training_curves({a: d.metrics() for a, d in dirs.items()}))
    return curves, warnings_html({a: d for a, d in dirs.items() if ARMS[a].dose == PRESSURE}, out)


def _dose_table(rows: list[dict[str, Any]]) -> str:
    df = pd.DataFrame(rows)
    if df.empty:
        return "<p>No dose was run.</p>"
    df["mean [95% CI]"] = [f"{m:.2%}" + ("" if math.isnan(lo) else f" [{lo:.2%}, {hi:.2%}]")
                           for m, lo, hi in zip(df["mean"], df.ci_low, df.ci_high, strict=True)]
    return df[["preset", "dose", "n", "mean [95% CI]"]].to_html(index=False, border=0)


def findings_page(out: str | Path, result: dict[str, Any] | None = None, *,
                  reference: str | Path | None = REFERENCE, charts: bool = True, cells: str | Path | None = None,
                  plotly_js: str = "plotly.min.js") -> Path:
    """Write `out/index.html` for `result` (default: out/findings.json), its findings beside the `reference` run's
    (None: none). Returns the page's path. `charts=False` gives a small tables-only page without plotly (the
    committed reference page); `cells`: the cells folder (default out/cells); `plotly_js`: where the page loads
    plotly.js from (written next to the page when it is the default)."""
    out = Path(out)
    result = result or load(out / "findings.json")
    if result is None:
        raise FileNotFoundError(f"{out / 'findings.json'}: run `eureka-kit report` (or findings_run.run_profile) first")
    ref = load(reference) if reference else None
    prof = result["profile"]
    records = result["findings"]
    sections = [("Findings", findings_table_html(records, ref["findings"] if ref and ref is not result else None)
                 + "<p>Effects are claim-oriented (positive = the seed paper's direction), in percentage points; "
                   "mean over seeds with a 95% Student-t interval. <i>supports</i>: the interval lies above 0; "
                   "<i>contradicts</i>: below 0; <i>inconclusive</i>: it covers 0.</p>"
                 + "<ul>" + "".join(f"<li id='{r['id']}'>{html.escape(r['sentence'])}"
                                    + (f" <b>Not testable here:</b> {html.escape(r['reason'])}" if r.get("reason")
                                       else "") + "</li>" for r in records) + "</ul>"),
                ]
    if charts:
        sections.append(("Per-seed effects", figure_div(effects_figure(records))))
    else:
        sections.append(("Per-seed effects", pd.DataFrame(
            [{"finding": r["id"], **{f"seed {s}": f"{e:+.2f}" for s, e in zip(r["seeds"], r["per_seed_effect"],
                                                                             strict=True)}} for r in records]
        ).to_html(index=False, border=0, na_rep="—")))
    checks = "".join(f"<tr><td>{html.escape(k)}</td><td class='{'' if v['ok'] else 'warn'}'>"
                     f"{'met' if v['ok'] else 'NOT met'}</td><td style='text-align:left'>{html.escape(v['detail'])}"
                     f"</td></tr>" for k, v in result["instrument"].items())
    sections.append(("The instrument: requirements checked on the verdict seeds",
                     f"<table><tr><th>requirement</th><th>status</th><th>measured</th></tr>{checks}</table>"))
    dose = result["dose_response"]
    views = [("ratio_tail_share", "share of tokens with |log r| > log 2"),
             ("math_accuracy", "math test accuracy after training")]
    sections.append(("Pressure dose-response: GRPO (no KL) vs CPGD", "".join(
        figure_div(dose_figure(dose[key], title=title, percent=True)) if charts
        else f"<h3>{html.escape(title)}</h3>" + _dose_table(dose[key]) for key, title in views)
        + "<p>Mean over seeds with 95% CI (bands); dose = optimizer steps per rollout batch, 1 is on-policy.</p>"))
    sections.append(("Arms (mean [95% CI] over seeds)", arms_table(result).to_html(index=False, border=0)))
    sections.append((f"Which problems the control arm ({CONTROL}) lifts",
                     _bucket_html(Path(cells) if cells else out / "cells", list(prof["seeds"]))))
    curves, warnings = _curves_html(result, out) if charts else ("", "")
    if curves:
        sections.append((f"Training curves, seed {prof['seeds'][0]} only (descriptive, no verdict)", curves))
        sections.append(("Collapse sentinels under pressure, seed 0 (descriptive)", warnings))
    prov = result["provenance"]
    setup = {**{k: v for k, v in prof.items() if k not in ("arms",)}, **prov}
    sections.append(("Setup and provenance", "<ul>" + "".join(
        f"<li><code>{html.escape(str(k))}</code>: {html.escape(str(v))}</li>" for k, v in setup.items()) + "</ul>"))
    out.mkdir(parents=True, exist_ok=True)
    if charts and plotly_js == "plotly.min.js":
        write_plotly_js(out)
    page = out / "index.html"
    page.write_text(html_page(f"eureka_kit findings — {prof['name']} profile, {len(prof['seeds'])} seeds", sections,
                              plotly_js=plotly_js))
    return page

