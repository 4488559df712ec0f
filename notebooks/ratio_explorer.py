import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")

with app.setup:
    # The ratio explorer as a marimo app: `marimo run notebooks/ratio_explorer.py -- --root runs`.
    # Every view comes from eureka_kit.workbench.explorer, the same functions the Jupyter explorer (20_ratio_explorer) uses.
    import marimo as mo

    from eureka_kit.config import PRESETS
    from eureka_kit.workbench import explorer


@app.cell
def _():
    root = str(mo.cli_args().get("root", "runs"))
    runs = explorer.find_runs(root)
    mo.stop(not runs, mo.md(f"No run directories with saved rollouts under `{root}`. "
                            "Train one (`eureka-kit train --num-steps 4 --run-dir runs/demo`) or pass `-- --root DIR`."))
    return root, runs


@app.cell
def _(runs):
    run_picker = mo.ui.dropdown(options={r: r for r in runs}, value=runs[0], label="run")
    color_picker = mo.ui.radio(options=list(explorer.COLOR_BY), value="log-ratio", label="colour by", inline=True)
    replay_picker = mo.ui.dropdown(options=list(PRESETS), value="cpgd", label="replay as")
    mo.hstack([run_picker, color_picker, replay_picker])
    return color_picker, replay_picker, run_picker


@app.cell
def _():
    worst_by = mo.ui.radio(options={v: k for k, v in explorer.WORST_BY.items()}, value=explorer.WORST_BY["log_ratio"],
                           label="worst tokens by", inline=True)
    worst_by  # noqa: B018 (marimo displays the last expression)
    return (worst_by,)


@app.cell
def _(run_picker, worst_by):
    # The run's worst tokens over all steps; choosing one opens its step and sample below.
    worst_picker = mo.ui.dropdown(options=dict(explorer.worst_options(run_picker.value, worst_by.value)),
                                  label="open a worst token")
    worst_picker  # noqa: B018 (marimo displays the last expression)
    return (worst_picker,)


@app.cell
def _(run_picker, worst_picker):
    steps = explorer.steps_of(run_picker.value)
    _opened = worst_picker.value
    step_picker = mo.ui.dropdown(options={str(s): s for s in steps},
                                 value=str(_opened[0] if _opened else steps[-1]), label="step")
    step_picker  # noqa: B018 (marimo displays the last expression)
    return (step_picker,)


@app.cell
def _(run_picker, step_picker, worst_picker):
    frame = explorer.load_step(run_picker.value, step_picker.value)
    options = dict(explorer.sample_options(frame))
    _opened = worst_picker.value
    label = next((k for k, v in options.items() if _opened and v == _opened[1] and _opened[0] == step_picker.value),
                 next(iter(options)))
    sample_picker = mo.ui.dropdown(options=options, value=label, label="sample")
    sample_picker  # noqa: B018 (marimo displays the last expression)
    return (sample_picker,)


@app.cell
def _(color_picker, replay_picker, run_picker, sample_picker, step_picker):
    panes = explorer.view(run_picker.value, step_picker.value, sample_picker.value, color_picker.value,
                          replay_picker.value)
    mo.vstack([mo.Html(panes["header"]), mo.Html(panes["tokens"]),
               explorer.token_chart(run_picker.value, step_picker.value, sample_picker.value),
               mo.md("**Per token: π_θ, π_old, μ and flags**"),
               mo.ui.table(explorer.token_table(run_picker.value, step_picker.value, sample_picker.value),
                           selection=None, page_size=12),
               mo.md("**Raw tails of the step (before any correction)**"), mo.Html(panes["tails"]),
               mo.md("**The group**"), mo.Html(panes["group"]), mo.md("**Replay**"), mo.Html(panes["replay"])])
    return


@app.cell
def _():
    compare_picker = mo.ui.multiselect(options=list(PRESETS), value=list(explorer.SAME_BATCH_PRESETS),
                                       label="same batch: objectives")
    at_picker = mo.ui.radio(options=["end", "start"], value="end", label="captured weights at", inline=True)
    mo.hstack([compare_picker, at_picker])
    return at_picker, compare_picker


@app.cell
def _(at_picker, compare_picker, run_picker, step_picker):
    # The step's batch under every chosen objective, without an optimizer step (parameter gradients when captured).
    mo.stop(not compare_picker.value, mo.md("Pick at least one objective for the same-batch comparison."))
    same_pane = explorer.same_batch_pane(run_picker.value, step_picker.value, compare_picker.value, at_picker.value)
    mo.vstack([mo.md("**Same batch**"), mo.Html(same_pane),
               explorer.same_batch_chart(run_picker.value, step_picker.value, compare_picker.value, at_picker.value)])
    return (same_pane,)


if __name__ == "__main__":
    app.run()
