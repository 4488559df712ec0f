"""Automated step labels: OmegaPRM-style search per problem (MM-PRM's released code, github.com/ModalMinds/MM-PRM) and PRM training examples (§3).

MC value of a prefix = #correct / #total over `num_rollouts` continuations of it, each judged on its final
answer. The search pops the incorrect rollout with the highest Q+U from a pool and binary-searches it for
its first wrong step, adding the visited prefixes to the tree (MM-PRM `data_pipeline/omegaprm.py`):

    Q(s, r) = alpha ** (1 - MC(s)) * beta ** (words(r) / L)
    U(s)    = c_puct * sqrt(sum of visit counts over the tree) / (1 + visit_count(s))

Departures from the released code: the rollout and search budgets are *never* exceeded (a Monte-Carlo call
that would overrun the rollout budget ends the search; the released loop only checks between searches);
the judge is rule-based (`rewards.score` on the `<answer>`) by default, a rollout without `<answer>` is
incorrect; the pool is an exact argmax with ties to the earliest inserted entry (no lazy heap); the toy
policy continues the prefix *inside its own assistant turn* (the released prompt lists "Previous Steps:"
in the user turn, which a char-level toy never saw). Every problem's search is seeded by (seed, id), so
results do not depend on which other problems ran or on resumption.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from eureka_kit.prm.steps import format_steps, parse_steps

# A rollout is MM-PRM's flat tuple of strings: steps, then the answer when it has one (MM-PRM's released code, github.com/ModalMinds/MM-PRM).
Rollout = tuple[str, ...]
# sampler(prefix, n) -> n judged continuations of `prefix`: (rollout, has_answer, correct)
Sampler = Callable[[tuple[str, ...], int], list[tuple[Rollout, bool, bool]]]


@dataclass(frozen=True)
class SearchConfig:
    """OmegaPRM search knobs; defaults are MM-PRM's `run_data_pipeline.sh` values (MM-PRM's released code, github.com/ModalMinds/MM-PRM)."""

    num_rollouts: int = 16
    """continuations per Monte-Carlo estimate"""
    max_search_count: int = 200
    """binary searches per problem (hard cap)"""
    rollout_budget: int = 1000
    """rollouts per problem, root estimate included (hard cap: never exceeded)"""
    c_puct: float = 0.125
    """exploration weight of U"""
    alpha: float = 0.5
    """Q's base for (1 - MC): prefers states with a low but non-zero MC value"""
    beta: float = 0.9
    """Q's base for the rollout length: prefers short wrong rollouts"""
    L: float = 2000.0
    """length normaliser of Q, in whitespace words (the .py default is 500)"""


class BudgetExhausted(Exception):
    """A Monte-Carlo estimate would exceed the rollout budget."""


@dataclass(eq=False)
class Node:
    """A tree state: the steps it adds to its parent's prefix (root: none) and its MC statistics."""

    steps: tuple[str, ...] = ()
    parent: Node | None = None
    mc_value: float | None = None
    visit_count: int = 0
    num_correct: int = 0
    num_total: int = 0
    judged: bool = False  # the final answer of a rollout, judged without rollouts
    correct_rollouts: list[Rollout] = field(default_factory=list)
    incorrect_rollouts: list[Rollout] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)

    @property
    def prefix(self) -> tuple[str, ...]:
        return (() if self.parent is None else self.parent.prefix) + self.steps

    def add_child(self, steps: tuple[str, ...], mc_value: float | None = None) -> Node:
        child = Node(steps=tuple(steps), parent=self, mc_value=mc_value)
        self.children.append(child)
        return child

    def to_dict(self) -> dict:
        return dict(partial_solution=list(self.steps), mc_value=self.mc_value, visit_count=self.visit_count,
                    num_correct=self.num_correct, num_total=self.num_total, judged=self.judged,
                    correct_rollouts=[list(r) for r in self.correct_rollouts],
                    incorrect_rollouts=[list(r) for r in self.incorrect_rollouts],
                    children=[c.to_dict() for c in self.children])


def words(rollout: Rollout) -> int:
    """Whitespace tokens of '\\n'.join(rollout): the length term of Q."""
    return len("\n".join(rollout).split())


def q_value(mc: float, num_words: int, alpha: float, beta: float, L: float) -> float:
    """Q(s, r) = alpha^(1 - MC(s)) * beta^(words(r) / L). Example: q_value(.25, 250, .5, .9, 500) = 0.5641."""
    return alpha ** (1.0 - mc) * beta ** (num_words / L)


def u_value(total_visits: int, visit_count: int, c_puct: float) -> float:
    """U(s) = c_puct * sqrt(total visits in the tree) / (1 + N(s)). Example: u_value(4, 1, .125) = 0.125."""
    return c_puct * math.sqrt(total_visits) / (1 + visit_count)


def mc_value(outcomes: Iterable[bool]) -> float:
    """#correct / #total (duplicates count), 0.0 for no outcomes. Example: 5 of 16 -> 0.3125."""
    outcomes = list(outcomes)
    return sum(map(bool, outcomes)) / len(outcomes) if outcomes else 0.0


class OmegaSearch:
    """The search for one problem. `sampler` rolls out and judges; `judge(answer)` judges a final answer."""

    def __init__(self, sampler: Sampler, judge: Callable[[str | None], bool], cfg: SearchConfig = SearchConfig()):
        self.sampler, self.judge, self.cfg = sampler, judge, cfg
        self.root = Node()
        self.pool: list[tuple[Node, Rollout, bool]] = []  # (state, incorrect rollout, has_answer), insertion order
        self.total_rollouts = 0
        self.search_count = 0
        self.total_visits = 0  # = sum of visit_count over the tree (each search increments one node)
        self.mc_calls = 0

    # -- Monte-Carlo estimation ---------------------------------------------------------------
    def estimate(self, node: Node) -> None:
        """Roll out `num_rollouts` continuations of node's prefix; set MC; grow children and the pool."""
        n = self.cfg.num_rollouts
        if self.total_rollouts + n > self.cfg.rollout_budget:
            raise BudgetExhausted
        results = self.sampler(node.prefix, n)
        assert len(results) == n, f"sampler returned {len(results)} rollouts, asked for {n}"
        self.total_rollouts += n
        self.mc_calls += 1
        node.num_total = n
        node.num_correct = sum(bool(c) for _, _, c in results)
        node.mc_value = mc_value(c for _, _, c in results)
        seen_correct, seen_incorrect = set(), set()
        for rollout, has_answer, correct in results:
            if correct and rollout not in seen_correct:  # each distinct correct continuation is a child
                seen_correct.add(rollout)
                node.correct_rollouts.append(rollout)
                node.add_child(rollout, 1.0)
            elif not correct and (rollout, has_answer) not in seen_incorrect:
                seen_incorrect.add((rollout, has_answer))
                node.incorrect_rollouts.append(rollout)
                if 0.0 < node.mc_value < 1.0:  # MC = 0 states never enter the pool
                    self.pool.append((node, rollout, has_answer))

    # -- selection ------------------------------------------------------------------------------
    def priority(self, node: Node, rollout: Rollout) -> float:
        c = self.cfg
        return (q_value(node.mc_value, words(rollout), c.alpha, c.beta, c.L)
                + u_value(self.total_visits, node.visit_count, c.c_puct))

    def select(self) -> tuple[Node, Rollout, bool]:
        """Pop the pool entry with the highest Q+U (first inserted on ties); drop it from its state's list."""
        best = max(range(len(self.pool)), key=lambda i: (self.priority(*self.pool[i][:2]), -i))
        node, rollout, has_answer = self.pool.pop(best)
        node.incorrect_rollouts.remove(rollout)
        return node, rollout, has_answer

    # -- binary search ----------------------------------------------------------------------------
    def binary_search(self, parent: Node, rollout: Rollout, has_answer: bool, lo: int, hi: int) -> None:
        """Locate the first wrong step of `rollout` (continuing `parent`) in steps lo..hi (MM-PRM's released code, github.com/ModalMinds/MM-PRM)."""
        n = len(rollout)
        while lo <= hi:
            mid = (lo + hi) // 2
            if lo == hi == n - 1:  # the final element alone: judge it, no rollouts
                child = parent.add_child(rollout[lo:mid + 1], float(bool(self.judge(rollout[-1] if has_answer
                                                                                    else None))))
                child.judged = True
                return
            child = Node(steps=tuple(rollout[lo:mid + 1]), parent=parent)
            self.estimate(child)  # raises BudgetExhausted before anything is added
            parent.children.append(child)
            if child.mc_value == 0.0:
                hi = mid - 1  # a shorter sibling under the same parent
            else:
                parent, lo = child, mid + 1

    # -- main loop --------------------------------------------------------------------------------
    def run(self) -> Node:
        try:
            self.estimate(self.root)
        except BudgetExhausted:
            return self.root
        while self.search_count < self.cfg.max_search_count and self.total_rollouts < self.cfg.rollout_budget \
                and self.pool:
            node, rollout, has_answer = self.select()
            exhausted = False
            try:
                self.binary_search(node, rollout, has_answer, 0, len(rollout) - 1)
            except BudgetExhausted:
                exhausted = True
            node.visit_count += 1  # maintenance: the selected state only, no backup
            self.total_visits += 1
            self.search_count += 1
            if exhausted:
                break
        assert self.total_rollouts <= self.cfg.rollout_budget and self.search_count <= self.cfg.max_search_count
        return self.root


# ---------------------------------------------------------------------------------------------
# Policy sampler: rollout.generate with the prefix continued inside the assistant turn
class _AssistantPrefix:
    """Processor/tokenizer proxy whose chat template ends with `prefix` (the steps so far)."""

    def __init__(self, processor, prefix: str):
        object.__setattr__(self, "_proc", processor)
        object.__setattr__(self, "_prefix", prefix)

    def apply_chat_template(self, messages, **kwargs):
        return self._proc.apply_chat_template(messages, **kwargs) + self._prefix

    def __call__(self, *args, **kwargs):
        return self._proc(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._proc, name)

    def __setattr__(self, name, value):  # e.g. `tok.padding_side = "left"` must reach the real tokenizer
        setattr(self._proc, name, value)


def rule_judge(gold: str, *, timeout: float | None = 5.0) -> Callable[[str | None], bool]:
    """judge(answer) = the accuracy reward of `<answer>{answer}</answer>` against `gold` (None -> False)."""
    from eureka_kit.data.rewards import score

    def judge(answer: str | None) -> bool:
        return answer is not None and score(f"<answer>{answer}</answer>", gold, timeout=timeout)["accuracy"] == 1.0
    return judge


def policy_sampler(policy, processor, problem: dict, cfg, generator: torch.Generator,
                   judge: Callable[[str | None], bool]) -> Sampler:
    """Sampler rolling out `policy` with `rollout.generate` (cfg: a RunConfig) from a step prefix."""
    from eureka_kit.engine import rollout as rollout_mod

    def sample(prefix: tuple[str, ...], n: int) -> list[tuple[Rollout, bool, bool]]:
        proc = _AssistantPrefix(processor, format_steps(prefix))
        ro = rollout_mod.generate(policy, proc, [problem], cfg, generator, num_samples=n)
        out = []
        for text in ro.texts:
            parsed = parse_steps(text)
            has_answer = parsed.answer is not None
            out.append((parsed.rollout, has_answer, has_answer and judge(parsed.answer)))
        return out
    return sample


def problem_seed(seed: int, problem_id: str) -> int:
    return int(hashlib.sha256(f"{seed}/{problem_id}".encode()).hexdigest(), 16) % (2**63)


def tree_record(problem: dict, search: OmegaSearch, cfg: SearchConfig, seed: int) -> dict:
    """The per-problem JSON (MM-PRM's released code (github.com/ModalMinds/MM-PRM) output, plus budgets used)."""
    root = search.root.to_dict()
    root.pop("partial_solution")
    return dict(id=problem["id"], question=problem["question"], answer=str(problem["answer"]),
                subject=problem.get("subject"), level=problem.get("level"),
                image_path=problem.get("image_path"), **root,
                search=dict(total_rollouts=search.total_rollouts, search_count=search.search_count,
                            mc_calls=search.mc_calls, config=asdict(cfg), seed=seed))


def tree_path(out_dir: Path, problem_id: str) -> Path:
    return Path(out_dir) / (re.sub(r"[^A-Za-z0-9_.-]", "_", str(problem_id)) + ".json")


def label_problems(policy, processor, problems: list[dict], out_dir: str | Path, run_cfg,
                   cfg: SearchConfig = SearchConfig(), *, seed: int = 0, progress: bool = True,
                   judge_factory: Callable[[dict], Callable[[str | None], bool]] | None = None) -> list[Path]:
    """Search every problem and save its tree as `out_dir/<id>.json`; problems with a tree file are skipped.

    Args:
        run_cfg: a RunConfig (rollout backend, template, temperature, max_len of the continuations).
        judge_factory: problem -> judge(answer); default `rule_judge(problem["answer"])`.
    Returns:
        the tree file of every problem, in order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for problem in tqdm(problems, desc="prm label", disable=not progress):
        path = tree_path(out_dir, problem["id"])
        paths.append(path)
        if path.exists():
            continue
        judge = (judge_factory or (lambda p: rule_judge(str(p["answer"]), timeout=run_cfg.reward_timeout)))(problem)
        gen = torch.Generator().manual_seed(problem_seed(seed, problem["id"]))
        search = OmegaSearch(policy_sampler(policy, processor, problem, run_cfg, gen, judge), judge, cfg)
        search.run()
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(tree_record(problem, search, cfg, seed)))
        tmp.rename(path)  # atomic: a killed run never leaves a half tree that resumption would skip
    return paths


# ---------------------------------------------------------------------------------------------
# Training examples (MM-PRM traverse.py + prm_data_format.py)
PRM_TAG = "<prm>"


def build_examples(tree: dict, *, threshold: float = 0.0, min_words: int = 10, seed: int = 0) -> list[dict]:
    """Root-to-node paths with soft MC labels, balanced per tree (MM-PRM's released code, github.com/ModalMinds/MM-PRM).

    Only trees whose root has 0 < MC < 1. A node with MC <= threshold ends a negative (no descent below it);
    a leaf with MC > 0 ends a positive. Process text: each node's steps joined by "\\n\\n", nodes separated by
    "<prm>\\n\\n", ending in "<prm>"; labels are the nodes' MC values. Examples with <= min_words
    space-separated words are dropped (MM-PRM: 10; the toy's steps have no spaces, so use 0 there), processes
    are deduplicated, and all negatives plus min(#pos, #neg) randomly sampled positives are kept.
    Returns:
        [{"id", "question", "process", "labels", "image_path"}], negatives first.
    """
    if tree.get("mc_value") is None or not 0.0 < tree["mc_value"] < 1.0:
        return []
    pos: dict[str, list[float]] = {}
    neg: dict[str, list[float]] = {}

    def dfs(node: dict, parts: list[str], labels: list[float]) -> None:
        parts = parts + ["\n\n".join(s.strip() for s in node["partial_solution"])]
        labels = labels + [node["mc_value"]]
        process = f"{PRM_TAG}\n\n".join(parts) + PRM_TAG
        if node["mc_value"] <= threshold:
            neg.setdefault(process, labels)
            return
        if not node["children"]:
            pos.setdefault(process, labels)
            return
        for child in node["children"]:
            dfs(child, parts, labels)

    for child in tree["children"]:
        dfs(child, [], [])
    keep = lambda d: [(p, l) for p, l in d.items() if len(p.split(" ")) > min_words]  # noqa: E731
    negatives, positives = keep(neg), keep(pos)
    rng = random.Random(problem_seed(seed, tree.get("id", "")))
    positives = rng.sample(positives, min(len(positives), len(negatives)))
    return [dict(id=tree.get("id"), question=tree["question"], process=p, labels=l, image_path=tree.get("image_path"))
            for p, l in negatives + positives]


def load_trees(tree_dir: str | Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(tree_dir).glob("*.json"))]


def build_dataset(tree_dir: str | Path, out_path: str | Path | None = None, **kwargs) -> list[dict]:
    """`build_examples` over every tree in `tree_dir`; optionally written as jsonl."""
    examples = [ex for tree in load_trees(tree_dir) for ex in build_examples(tree, **kwargs)]
    if out_path is not None:
        Path(out_path).write_text("".join(json.dumps(ex) + "\n" for ex in examples))
    return examples


def tree_stats(trees: list[dict]) -> dict[str, float]:
    """Counts for the report: problems, usable (0<root MC<1), nodes, rollouts, searches per problem."""
    def nodes(n: dict) -> int:
        return 1 + sum(nodes(c) for c in n["children"])
    usable = [t for t in trees if t["mc_value"] is not None and 0 < t["mc_value"] < 1]
    return dict(problems=len(trees), usable=len(usable), nodes=sum(nodes(t) - 1 for t in trees),
                rollouts=sum(t["search"]["total_rollouts"] for t in trees),
                searches=sum(t["search"]["search_count"] for t in trees))


def tree_nodes(trees: list[dict]) -> list[dict]:
    """One row per non-root node, for label statistics.

    Row: id, level, start (steps before the node), num_steps, mc_value, judged, first_error (MC = 0 under a
    parent with MC > 0: the first wrong step lies in steps start..start+num_steps-1), leaf.
    """
    rows = []

    def walk(node: dict, tree: dict, start: int, parent_mc: float) -> None:
        for child in node["children"]:
            n = len(child["partial_solution"])
            rows.append(dict(id=tree["id"], level=tree.get("level"), start=start, num_steps=n,
                             mc_value=child["mc_value"], judged=child.get("judged", False),
                             first_error=child["mc_value"] == 0.0 and parent_mc > 0.0, leaf=not child["children"]))
            walk(child, tree, start + n, child["mc_value"])

    for tree in trees:
        if tree["mc_value"] is not None:
            walk(tree, tree, 0, tree["mc_value"])
    return rows


def split_by_problem(examples: list[dict], holdout: float = 0.2, *, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held-out) examples; a problem's examples all go to one side (a stable hash of (seed, id))."""
    held = lambda ex: problem_seed(seed, str(ex["id"])) % 1000 < holdout * 1000  # noqa: E731
    return [ex for ex in examples if not held(ex)], [ex for ex in examples if held(ex)]
