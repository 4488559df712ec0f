"""`eureka-kit` command line: a small dispatch table of subcommands, each a thin call into the package."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace


def _selfcheck(args: argparse.Namespace) -> int:
    from eureka_kit.workbench import selfcheck

    return selfcheck.main(seed=args.seed)


def _add_selfcheck(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("selfcheck", help="check every preset's loss on a synthetic batch and print a table")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_selfcheck)


def _report(args: argparse.Namespace) -> int:
    from eureka_kit.workbench import suite

    notebooks = [] if args.only_findings else (args.notebooks.split(",") if args.notebooks else None)
    results = suite.build_suite(args.out, notebooks=notebooks, findings=not args.no_findings, profile=args.profile,
                                workers=args.workers, force=args.force)
    return 1 if any(r.get("status") != "ok" for r in results) else 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="the report suite: the findings (seeds, CIs, verdicts) + every notebook + index")
    p.add_argument("--out", default="reports", help="reports folder (findings/, <notebook>/report/, index.html)")
    p.add_argument("--profile", default="quick", choices=["quick", "full"],
                   help="findings profile: quick (>= 3 seeds, the main job) or full (>= 5 seeds, the reference)")
    p.add_argument("--workers", type=int, default=2, help="findings cells run in this many single-threaded processes")
    p.add_argument("--only-findings", action="store_true", help="only the findings (and the index)")
    p.add_argument("--no-findings", action="store_true", help="only the notebooks (and the index)")
    p.add_argument("--notebooks", default="", help="comma-separated subset of the suite's notebooks")
    p.add_argument("--force", action="store_true", help="re-run notebooks that already finished")
    p.set_defaults(func=_report)


def _train(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    from eureka_kit.config import RunConfig
    from eureka_kit.train import train

    overrides = {k: v for k, v in vars(args).items() if k in _config_fields() and v is not None}
    if args.config:
        data = json.loads(Path(args.config).read_text())
        cfg = RunConfig.from_dict({**data.get("config", data), **overrides})  # a run directory's config.json nests it
    else:
        cfg = RunConfig.from_preset(args.preset, **overrides)
    run = train(cfg)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank gets here
        print(f"run directory: {run.path}")
    return 0


def _config_fields() -> dict[str, object]:
    import dataclasses

    from eureka_kit.config import RunConfig

    return {f.name: f.default for f in dataclasses.fields(RunConfig) if f.name != "preset"}


def _add_train(sub: argparse._SubParsersAction) -> None:
    from eureka_kit.config import PRESETS

    p = sub.add_parser("train", help="RL-train one preset (every RunConfig field is a flag)")
    p.add_argument("--preset", default="cpgd", choices=list(PRESETS))
    p.add_argument("--config", help="JSON file of RunConfig fields (RunConfig.to_json, or a run directory's "
                                    "config.json) used instead of --preset; flags override its fields")
    _add_config_flags(p)
    p.set_defaults(func=_train)


def _sft(args: argparse.Namespace) -> int:
    import os

    from eureka_kit.config import RunConfig
    from eureka_kit.sft import sft

    overrides = {k: v for k, v in vars(args).items() if k in _config_fields() and v is not None}
    run = sft(RunConfig.from_preset(args.preset, **overrides))
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank gets here
        print(f"run directory: {run.path}")
    return 0


def _add_sft(sub: argparse._SubParsersAction) -> None:
    from eureka_kit.config import ALGORITHM_FIELDS, SFT_PRESETS

    p = sub.add_parser("sft", help="supervised fine-tuning on reference completions (RunConfig fields are flags)")
    p.add_argument("--preset", default="sft", choices=list(SFT_PRESETS))
    _add_config_flags(p, skip=(*ALGORITHM_FIELDS, "stages"))  # SFT has no RL algorithm slots
    p.set_defaults(func=_sft)


def _add_config_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per RunConfig field (except `skip`), its help the field's docstring."""
    from eureka_kit.config import field_docs

    docs = field_docs()
    for name, default in _config_fields().items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, dest=name, type=lambda s: s.lower() in ("1", "true", "yes"), help=docs.get(name))
        elif isinstance(default, (int, float, str)):
            p.add_argument(flag, dest=name, type=type(default), help=docs.get(name))
        else:  # None-default or tuple fields: parse as JSON-ish float/None
            p.add_argument(flag, dest=name, type=_loose, help=docs.get(name))


def _loose(text: str):
    """'none' -> None, JSON numbers/lists -> values, anything else stays a string (paths)."""
    import json

    if text.lower() == "none":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    from eureka_kit.workbench import sweep

    sweep.add_cli(sub)


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from eureka_kit.config import RunConfig
    from eureka_kit.engine import evaluate
    from eureka_kit.engine.base_policy import load_policy

    target = Path(args.model)
    run_cfg, run_path = None, None
    if (target / "config.json").exists() and (target / "checkpoints").exists():  # a run directory
        from eureka_kit.engine.runs import open_run

        rd = open_run(target)
        run_cfg, run_path = rd.config()["config"], rd.path
        target = rd.checkpoints()[-1]
    policy, processor = load_policy(str(target) if run_cfg or target.exists() else args.model, seed=args.seed)
    base = dict(run_cfg or {}, seed=args.seed, max_len=args.max_len)
    cfg = RunConfig.from_dict({**RunConfig.from_preset("grpo").to_dict(), **base, "run_dir": None})
    per_problem, summary = evaluate.evaluate(policy, processor, cfg, subjects=tuple(args.subjects.split(",")),
                                             num_samples=args.samples, greedy=True, progress=True)
    print(summary.to_string(index=False))
    name = args.name or (target.name if run_path else "model")  # a run's evaluation is named by its checkpoint
    for folder in [p for p in (run_path, args.out) if p]:
        print(f"written: {evaluate.write_to_run_dir(folder, per_problem, summary, name=name)}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="greedy accuracy and pass@k per problem and subject of 'toy', a model folder or a "
                                    "run directory's last checkpoint (written into the run directory: eval/<name>/)")
    p.add_argument("model", help="'toy', a local model folder, or a run directory")
    p.add_argument("--subjects", default="math,physics,chemistry,biology")
    p.add_argument("--samples", type=int, default=16, help="samples per problem (temperature from the run, else 1)")
    p.add_argument("--max-len", type=int, default=48)
    p.add_argument("--name", default="", help="evaluation name (default: the checkpoint's, e.g. step_000049)")
    p.add_argument("--out", default="", help="another folder to write eval/<name>/{per_problem.parquet,summary.json} into")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_eval)


# Each entry adds one subcommand (parser + handler). Other modules register theirs here.
def _toy_build(args: argparse.Namespace) -> int:
    from eureka_kit.engine.base_policy import SFTConfig, build_base_policy

    cfg = SFTConfig()
    cfg = replace(cfg, steps=args.steps or cfg.steps,
                  stop_at_accuracy=cfg.stop_at_accuracy if args.stop_at_accuracy is None else args.stop_at_accuracy)
    print(build_base_policy(seed=args.seed, cfg=cfg, force=args.force))
    return 0


def _add_toy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("toy", help="the toy world: `eureka-kit toy build` makes the SFT'd base policy")
    toy_sub = p.add_subparsers(dest="toy_command", required=True)
    b = toy_sub.add_parser("build", help="build (or find cached) the toy base policy; prints its folder")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--steps", type=int, default=None, help="SFT steps at most (default: SFTConfig.steps)")
    b.add_argument("--stop-at-accuracy", type=float, default=None,
                   help="stop once greedy accuracy on the train-split probe reaches this; 0 = run all steps "
                        "(default: SFTConfig.stop_at_accuracy)")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.set_defaults(func=_toy_build)


def _add_prm(sub: argparse._SubParsersAction) -> None:
    from eureka_kit.prm import cli as prm_cli

    prm_cli.add_cli(sub)


SUBCOMMANDS = [_add_selfcheck, _add_report, _add_train, _add_sft, _add_eval, _add_sweep, _add_toy, _add_prm]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eureka-kit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
