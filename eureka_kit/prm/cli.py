"""`eureka-kit prm label | train | score`: thin CLI over prm.data / prm.model (registered in cli.SUBCOMMANDS)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eureka_kit.prm.data import SearchConfig, build_dataset, label_problems, load_trees, tree_stats


# CLI: `eureka-kit prm label | train | score` (registered in cli.SUBCOMMANDS)
def _cli_policy(name: str, seed: int):
    from eureka_kit.engine.base_policy import load_policy
    from eureka_kit.prm.steps import build_step_policy

    return load_policy(str(build_step_policy(seed=seed)) if name == "toy-step" else name, seed=seed)


def _cli_label(args) -> int:
    from eureka_kit.config import RunConfig
    from eureka_kit.data import toyworld

    policy, proc = _cli_policy(args.policy, args.seed)
    problems = toyworld.generate("train", "math", args.n_per_level, seed=args.seed,
                                 levels=tuple(args.levels) if args.levels else None)
    cfg = SearchConfig(num_rollouts=args.rollouts, max_search_count=args.searches, rollout_budget=args.budget)
    run_cfg = RunConfig(max_len=args.max_len, seed=args.seed)
    label_problems(policy, proc, problems, Path(args.out) / "trees", run_cfg, cfg, seed=args.seed)
    examples = build_dataset(Path(args.out) / "trees", Path(args.out) / "examples.jsonl", min_words=args.min_words,
                             seed=args.seed)
    print(json.dumps(dict(tree_stats(load_trees(Path(args.out) / "trees")), examples=len(examples))))
    return 0


def _cli_train(args) -> int:
    from eureka_kit.prm.model import TOY_PRM, PRMTrainConfig, train_prm

    policy, proc = _cli_policy(args.policy, args.seed)
    examples = [json.loads(line) for line in Path(args.examples).read_text().splitlines() if line.strip()]
    cfg = PRMTrainConfig(**(TOY_PRM if args.toy else {}))
    losses = train_prm(policy, proc, examples, cfg, seed=args.seed)
    policy.save_pretrained(args.out)
    proc.save_pretrained(args.out)
    print(json.dumps(dict(out=args.out, steps=len(losses), final_loss=losses[-1])))
    return 0


def _cli_score(args) -> int:
    from eureka_kit.models import load
    from eureka_kit.prm.model import score_steps
    from eureka_kit.prm.steps import parse_steps

    prm, proc = load(args.prm)
    parsed = parse_steps(args.solution)
    print(json.dumps(score_steps(prm, proc, dict(question=args.question), list(parsed.rollout))))
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("prm", help="process reward model: `prm label | train | score`")
    prm_sub = p.add_subparsers(dest="prm_command", required=True)
    lab = prm_sub.add_parser("label", help="OmegaPRM search on toy-world math train problems -> trees + examples")
    lab.add_argument("--out", default="runs/prm", help="folder for trees/ and examples.jsonl (resumable)")
    lab.add_argument("--policy", default="toy-step", help="'toy-step' (step-form toy policy) or a model folder")
    lab.add_argument("--n-per-level", type=int, default=10)
    lab.add_argument("--levels", type=int, nargs="*", default=None)
    lab.add_argument("--rollouts", type=int, default=SearchConfig.num_rollouts)
    lab.add_argument("--searches", type=int, default=SearchConfig.max_search_count)
    lab.add_argument("--budget", type=int, default=SearchConfig.rollout_budget)
    lab.add_argument("--max-len", type=int, default=160, help="max continuation tokens")
    lab.add_argument("--min-words", type=int, default=0, help="MM-PRM drops processes of <= 10 words; toy: 0")
    lab.add_argument("--seed", type=int, default=0)
    lab.set_defaults(func=_cli_label)
    tr = prm_sub.add_parser("train", help="train a PRM from examples.jsonl, initialised from the policy")
    tr.add_argument("--examples", default="runs/prm/examples.jsonl")
    tr.add_argument("--policy", default="toy-step")
    tr.add_argument("--out", default="runs/prm/model")
    tr.add_argument("--toy", action=argparse.BooleanOptionalAction, default=True, help="toy hyper-parameters")
    tr.add_argument("--seed", type=int, default=0)
    tr.set_defaults(func=_cli_train)
    sc = prm_sub.add_parser("score", help="P(Yes) per step of one step-form solution")
    sc.add_argument("--prm", default="runs/prm/model")
    sc.add_argument("--question", required=True)
    sc.add_argument("--solution", required=True, help="<step>…</step>…<answer>…</answer>")
    sc.set_defaults(func=_cli_score)
