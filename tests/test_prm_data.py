"""OmegaPRM search and example building: hand-checked numbers from MM-PRM's released code"""

import itertools
import json
import random

import pytest

from eureka_kit.prm.data import (
    Node,
    OmegaSearch,
    SearchConfig,
    build_examples,
    mc_value,
    q_value,
    split_by_problem,
    tree_nodes,
    u_value,
    words,
)

# -- MC values (§6.1) -------------------------------------------------------------------------------


def const_sampler(outcomes):
    """Sampler returning fixed (rollout, has_answer, correct) triples."""
    return lambda prefix, n: [outcomes[i % len(outcomes)] for i in range(n)]


def test_mc_value_hand():
    assert mc_value([True] * 5 + [False] * 11) == 0.3125
    assert mc_value([False] * 16) == 0.0 and mc_value([True] * 16) == 1.0 and mc_value([]) == 0.0


@pytest.mark.parametrize("num_correct,expect_pool", [(5, True), (0, False), (16, False)])
def test_estimate_pool_membership(num_correct, expect_pool):
    outs = [(("ok", "1"), True, True)] * num_correct + [((f"w{i}", "2"), True, False) for i in range(16 - num_correct)]
    s = OmegaSearch(const_sampler(outs), lambda a: False)
    s.estimate(s.root)
    assert s.root.mc_value == num_correct / 16 and s.total_rollouts == 16
    assert bool(s.pool) == expect_pool
    assert len(s.root.children) == (1 if num_correct else 0)  # identical correct rollouts -> one child
    assert len(s.root.incorrect_rollouts) == 16 - num_correct


def test_duplicates_count_in_mc_but_make_one_child():
    outs = [(("a", "1"), True, True), (("a", "1"), True, True), (("b", "2"), True, False), (("b", "2"), True, False)]
    s = OmegaSearch(const_sampler(outs), lambda a: False, SearchConfig(num_rollouts=4))
    s.estimate(s.root)
    assert s.root.mc_value == 0.5
    assert [c.steps for c in s.root.children] == [("a", "1")] and s.root.children[0].mc_value == 1.0
    assert s.root.incorrect_rollouts == [("b", "2")] and len(s.pool) == 1


# -- Q / U (§6.2) -----------------------------------------------------------------------------------


def test_q_values_hand():
    assert q_value(0.25, 250, 0.5, 0.9, 500) == pytest.approx(0.5641, abs=1e-4)
    assert q_value(0.5, 1000, 0.5, 0.9, 2000) == pytest.approx(0.6708, abs=1e-4)
    assert q_value(0.75, 0, 0.5, 0.9, 500) == pytest.approx(0.8409, abs=1e-4)
    assert q_value(1 / 16, 500, 0.5, 0.9, 500) == pytest.approx(0.4699, abs=1e-4)


def test_u_values_hand():
    assert u_value(4, 1, 0.125) == pytest.approx(0.125)
    assert u_value(9, 0, 0.125) == pytest.approx(0.375)
    assert u_value(0, 0, 0.125) == 0.0


def test_words():
    assert words(("a b", "c")) == 3 and words(()) == 0 and words(("12+3=15", "15")) == 2


def test_selection_order_q_then_u():
    cfg = SearchConfig(alpha=0.5, beta=0.9, L=500, c_puct=0.125)
    s = OmegaSearch(const_sampler([]), lambda a: False, cfg)
    lo, hi = Node(mc_value=0.25), Node(mc_value=0.75)
    r_short, r_long = ("x",) * 10, ("y",) * 1000
    for node, r in [(lo, r_short), (hi, r_long), (hi, r_short)]:
        node.incorrect_rollouts.append(r)
        s.pool.append((node, r, True))
    # before any search U = 0: Q alone. Q(hi, short) = .5^.25 * .9^(10/500) = 0.8392 > Q(hi, long) = .5^.25 * .81 = 0.6811
    # > Q(lo, short) = .5^.75 * .9^.02 = 0.5934
    assert s.select()[:2] == (hi, r_short)
    hi.visit_count, s.total_visits = 3, 3
    # now U(lo) = .125*sqrt(3)/1 = .2165 -> lo 0.8099; U(hi) = .125*sqrt(3)/4 = .0541 -> hi(long) 0.7352
    assert s.priority(lo, r_short) == pytest.approx(0.5934 + 0.2165, abs=1e-3)
    assert s.priority(hi, r_long) == pytest.approx(0.6811 + 0.0541, abs=1e-3)
    assert s.select()[:2] == (lo, r_short)  # U lifts the unvisited low-MC state above hi
    assert s.select()[:2] == (hi, r_long)
    assert lo.incorrect_rollouts == [] and hi.incorrect_rollouts == []


def test_selection_ties_take_first_inserted():
    s = OmegaSearch(const_sampler([]), lambda a: False)
    a, b = Node(mc_value=0.5), Node(mc_value=0.5)
    for node in (a, b):
        node.incorrect_rollouts.append(("r",))
        s.pool.append((node, ("r",), True))
    assert s.select()[0] is a


# -- binary search (§6.3) -------------------------------------------------------------------------------


def oracle(e):
    """MC > 0 iff the prefix ends at index j < e (prefix steps are named s0..s{n-1}); MC>0 prefixes get one
    correct continuation ('ok',), MC=0 prefixes n incorrect 'bad'."""
    def sample(prefix, n):
        j = int(prefix[-1][1:]) if prefix else -1
        return [(("ok",), True, True)] * n if j < e else [(("bad",), True, False)] * n
    return sample


def search_nodes(node, parent_span="S"):
    """(parent span, span, MC>0) of binary-search nodes, in creation order."""
    out = []
    for c in node.children:
        if c.steps == ("ok",):
            continue
        span = f"[{c.steps[0][1:]}..{c.steps[-1][1:]}]"
        out.append((parent_span, span, c.mc_value > 0))
        out += search_nodes(c, span)
    return out


@pytest.mark.parametrize("n,e,expected,calls", [
    (8, 5, [("S", "[0..3]", True), ("[0..3]", "[4..5]", False), ("[0..3]", "[4..4]", True)], 3),
    (8, 0, [("S", "[0..3]", False), ("S", "[0..1]", False), ("S", "[0..0]", False)], 3),
    (5, 2, [("S", "[0..2]", False), ("S", "[0..0]", True), ("[0..0]", "[1..1]", True)], 3),
    (4, 3, [("S", "[0..1]", True), ("[0..1]", "[2..2]", True), ("[2..2]", "[3..3]", False)], 2),
    (8, 7, [("S", "[0..3]", True), ("[0..3]", "[4..5]", True), ("[4..5]", "[6..6]", True),
            ("[6..6]", "[7..7]", False)], 3),
    (1, 0, [("S", "[0..0]", False)], 0),
])
def test_binary_search_first_error(n, e, expected, calls):
    s = OmegaSearch(oracle(e), judge=lambda a: False)
    rollout = tuple(f"s{i}" for i in range(n))
    s.binary_search(s.root, rollout, True, 0, n - 1)
    assert search_nodes(s.root) == expected
    assert s.mc_calls == calls and s.total_rollouts == 16 * calls
    judged = [c for c in _all(s.root) if c.judged]
    assert (len(judged) == 1) == (e == n - 1 or n == 1)  # the final answer is judged, without rollouts


def _all(node):
    for c in node.children:
        yield c
        yield from _all(c)


# -- budgets: never exceeded --------------------------------------------------------------------------------


def noisy_sampler(seed, steps=6):
    """Random outcomes (p=.5) and distinct random incorrect rollouts: the pool never runs dry."""
    rng = random.Random(seed)
    def sample(prefix, n):
        return [((f"{rng.random()}",) * rng.randint(1, steps), True, rng.random() < 0.5) for _ in range(n)]
    return sample


@pytest.mark.parametrize("budget,searches,k", list(itertools.product([0, 15, 16, 50, 100, 333], [0, 1, 5, 40], [4, 16])))
def test_budgets_never_exceeded(budget, searches, k):
    cfg = SearchConfig(num_rollouts=k, rollout_budget=budget, max_search_count=searches)
    s = OmegaSearch(noisy_sampler(budget + searches + k), lambda a: False, cfg)
    s.run()
    assert s.total_rollouts <= budget and s.search_count <= searches
    assert s.total_rollouts == k * s.mc_calls
    if budget < k:
        assert s.root.mc_value is None and s.total_rollouts == 0


def test_search_deterministic_and_tree_json():
    runs = []
    for _ in range(2):
        s = OmegaSearch(noisy_sampler(7), lambda a: False, SearchConfig(rollout_budget=200, max_search_count=10))
        s.run()
        runs.append(json.dumps(s.root.to_dict()))
    assert runs[0] == runs[1]
    assert json.loads(runs[0])["mc_value"] is not None


# -- example building (§6.4) -----------------------------------------------------------------------------


def _node(steps, mc, children=()):
    return dict(partial_solution=list(steps), mc_value=mc, children=list(children))


def hand_tree(root_mc=0.5):
    b = _node(["s3"], 0.0)
    a1 = _node(["s3", "ans"], 1.0)
    a = _node(["s1", "s2"], 0.25, [a1, b])
    c = _node(["a", "b", "ans"], 1.0)
    return dict(id="t", question="q", mc_value=root_mc, children=[c, a])


def test_build_examples_hand():
    exs = build_examples(hand_tree(), min_words=0)
    assert exs[0]["process"] == "s1\n\ns2<prm>\n\ns3<prm>" and exs[0]["labels"] == [0.25, 0.0]
    assert len(exs) == 2  # one negative, min(2, 1) = 1 sampled positive
    assert (exs[1]["process"], exs[1]["labels"]) in [("a\n\nb\n\nans<prm>", [1.0]),
                                                     ("s1\n\ns2<prm>\n\ns3\n\nans<prm>", [0.25, 1.0])]


def test_build_examples_word_filter_and_root_filter():
    assert build_examples(hand_tree()) == []  # default min_words=10: short strings are all filtered
    assert build_examples(hand_tree(0.0), min_words=0) == [] and build_examples(hand_tree(1.0), min_words=0) == []


def test_stop_at_first_zero_and_balance():
    deep = _node(["x"], 0.0, [_node(["never"], 1.0)])  # nothing below a zero node is visited
    tree = dict(id="t", question="q", mc_value=0.5,
                children=[deep] + [_node([f"p{i}"], 1.0) for i in range(5)])
    exs = build_examples(tree, min_words=0)
    assert [e["labels"] for e in exs][0] == [0.0] and len(exs) == 2
    assert all("never" not in e["process"] for e in exs)
    no_neg = dict(id="t", question="q", mc_value=0.5, children=[_node(["p"], 1.0)])
    assert build_examples(no_neg, min_words=0) == []  # positives are capped at #negatives


def test_build_examples_dedupes_and_is_seeded():
    tree = dict(id="t", question="q", mc_value=0.5,
                children=[_node(["n"], 0.0), _node(["n"], 0.0), _node(["z"], 0.0)]
                + [_node([f"p{i}"], 1.0) for i in range(6)])
    a = build_examples(tree, min_words=0, seed=1)
    assert len(a) == 4 and a == build_examples(tree, min_words=0, seed=1)


def test_tree_nodes_first_errors_and_positions():
    rows = tree_nodes([dict(hand_tree(), level=3)])
    by = {(r["start"], r["num_steps"], r["mc_value"]): r for r in rows}
    assert len(rows) == 4  # C, A, A1, B (the root is not a row)
    assert by[(2, 1, 0.0)]["first_error"] and by[(2, 1, 0.0)]["leaf"]  # B = (s3,) after s1, s2
    assert not by[(2, 2, 1.0)]["first_error"] and by[(0, 2, 0.25)]["level"] == 3
    assert sum(r["first_error"] for r in rows) == 1
    assert tree_nodes([dict(hand_tree(), mc_value=None, level=0)]) == []  # an unsearched root


def test_split_by_problem_keeps_problems_whole():
    examples = [dict(id=f"p{i // 3}", process=str(i)) for i in range(300)]
    train, held = split_by_problem(examples, 0.2, seed=0)
    assert len(train) + len(held) == 300 and {e["id"] for e in train}.isdisjoint({e["id"] for e in held})
    assert 0.1 < len(held) / 300 < 0.3 and split_by_problem(examples, 0.2, seed=0) == (train, held)


# -- pipeline with the real rollout backend (random-init toy model, tiny budgets) --------------------------


def test_assistant_prefix_prompt():
    from eureka_kit.engine.batch import encode_prompts
    from eureka_kit.models import build_char_tokenizer
    from eureka_kit.prm.data import _AssistantPrefix

    tok = build_char_tokenizer()
    proc = _AssistantPrefix(tok, "<step>1+2=3</step>")
    ids, _, _ = encode_prompts(proc, [dict(question="What is 1+2*2?")], "none", False, 512)
    assert tok.decode(ids[0]).endswith("<|im_start|>assistant\n<step>1+2=3</step>")
    proc.padding_side = "right"  # attribute writes reach the real tokenizer
    assert tok.padding_side == "right"


def test_label_problems_pipeline_and_resume(tmp_path):
    from eureka_kit.config import RunConfig
    from eureka_kit.data import toyworld
    from eureka_kit.models import build_toy_model
    from eureka_kit.prm.data import build_dataset, label_problems, load_trees

    model, tok = build_toy_model()
    problems = toyworld.generate("train", "math", 1, levels=(0, 4, 5))
    run_cfg = RunConfig(max_len=6)
    cfg = SearchConfig(num_rollouts=2, rollout_budget=6, max_search_count=2)
    paths = label_problems(model, tok, problems, tmp_path, run_cfg, cfg, seed=0, progress=False)
    assert [p.exists() for p in paths] == [True] * 3
    trees = load_trees(tmp_path)
    assert all(t["search"]["total_rollouts"] <= 6 and t["search"]["search_count"] <= 2 for t in trees)
    mtimes = [p.stat().st_mtime_ns for p in paths]
    paths[1].unlink()
    label_problems(model, tok, problems, tmp_path, run_cfg, cfg, seed=0, progress=False)
    assert paths[1].exists() and [paths[0].stat().st_mtime_ns, paths[2].stat().st_mtime_ns] == [mtimes[0], mtimes[2]]
    assert isinstance(build_dataset(tmp_path, tmp_path / "ex.jsonl", min_words=0), list)
