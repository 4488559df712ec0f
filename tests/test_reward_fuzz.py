"""Property-based fuzz of the reward with hostile completions (hypothesis): every `rewards.score` call returns
within its time limit (+ slack) with parts in the allowed sets, and never raises. The two input classes that
once broke it (> 4300-digit integers, many unclosed answer tags) are fuzzed like any other and pinned by their
own tests below (docs/reliability.md)."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eureka_kit.data import rewards

TIMEOUT = 1.0
SLACK = 1.0  # parent-side text work on 1 MB inputs + scheduling on a loaded 2-core CI box
MAX_EXAMPLES = 150
ALLOWED = {"accuracy": {0.0, 1.0}, "format": {0.0, 0.5}, "total": {0.0, 0.5, 1.0, 1.5}, "timeout": {0.0, 1.0}}
MB = 1 << 20

FIXED = [
    "<answer>" + "1" + "0" * 10000 + "</answer>",          # 10^10000 as digits
    "<answer>10^{10000}</answer>", "\\boxed{1e10000}", "<answer>" + "9" * 100_000 + ".5</answer>",
    "<answer>" + "\\frac{" * 500 + "1" + "}{2}" * 500 + "</answer>",   # 500-deep LaTeX
    "\\boxed{" + "\\sqrt{" * 500 + "2" + "}" * 500 + "}",
    "x" * MB, "<think>" + "a" * MB + "</think><answer>1</answer>", "\\boxed{" + "{" * MB,
    "<think>т</think><answer>В</answer>", "<answer>１２</answer>", "<answer>𝟏𝟐</answer>", "<answer>-１</answer>",
    "<think></think><answer></answer>", "<answer><answer>1</answer></answer>", "</answer>1<answer>",
    "\\boxed{", "\\boxed{1", "\\boxed{}}}}", "<answer>1\x00</answer>", "\x00" * 1000, "<|im_start|>assistant\n",
    "<answer>$" * 50 + "1", "<answer>\\text{" * 300 + "B" + "}" * 300 + "</answer>",
]
TAGS = ["<think>", "</think>", "<answer>", "</answer>", "\\boxed{", "{", "}", "$", "\\frac{", "<|im_end|>", "\x00"]
CONFUSABLES = "аВСЕорхАВС１２３４５６７８９０𝟏𝟐−–﹣＋．，Ⅻ٣"


def _hostile() -> st.SearchStrategy[str]:
    big = st.integers(300, 10_000).flatmap(lambda n: st.sampled_from(
        ["1" + "0" * n, f"10^{{{n}}}", f"1e{n}", "-" + "9" * n, "0." + "3" * n]))
    nested = st.integers(1, 500).flatmap(lambda d: st.sampled_from(
        ["\\frac{" * d + "1" + "}{2}" * d, "{" * d + "1" + "}" * d, "\\boxed{" * d + "1" + "}" * d,
         "\\frac{" * d, "(" * d + "1" + ")" * d]))
    huge = st.tuples(st.sampled_from(["x", "1", "{", "}", "\\", "$", "</answer>", "\\frac{", "\x00", "а"]),
                     st.integers(MB // 4, MB)).map(lambda t: t[0] * (t[1] // len(t[0])))
    tags = st.lists(st.sampled_from(TAGS + ["1", "B", " ", "\n"]), max_size=40).map("".join)
    return st.one_of(st.sampled_from(FIXED), big, nested, huge, tags, st.text(alphabet=CONFUSABLES, max_size=40),
                     st.text(max_size=300))


COMPLETIONS = st.tuples(st.sampled_from(["", "<think>ok</think><answer>", "<answer>", "\\boxed{", "The answer is "]),
                        _hostile(),
                        st.sampled_from(["", "</answer>", "}", "<|im_end|>", "</answer></answer>"])).map("".join)
GOLDS = st.sampled_from(["1", "12", "-1", "B", "\\frac{1}{2}", "10^{10000}", "1" + "0" * 5000, "x+1", "", "１２", "В"])


def _warm_worker() -> None:
    """Start the reward worker outside the timed call (start-up is not charged to a call, by contract)."""
    w = rewards._WORKER
    with w.lock:
        if w.proc is None or w.proc.poll() is not None:
            w._start()


def _check(completion: str, gold: str, compat: bool, stats: dict) -> None:
    _warm_worker()
    t0 = time.perf_counter()
    parts = rewards.score(completion, gold, compat=compat, timeout=TIMEOUT)
    elapsed = time.perf_counter() - t0
    stats["tried"] += 1
    stats["max_s"] = max(stats["max_s"], elapsed)
    stats["timeouts"] += int(parts["timeout"])
    stats["bytes"] += len(completion.encode("utf-8", "surrogatepass"))
    assert elapsed < TIMEOUT + SLACK, (elapsed, completion[:200], gold)
    for key, allowed in ALLOWED.items():
        assert parts[key] in allowed, (key, parts, completion[:200], gold)
    assert parts["total"] == parts["accuracy"] + parts["format"]


@pytest.mark.slow
def test_hostile_completions_return_in_time_with_an_allowed_reward_and_never_raise():
    stats = dict(tried=0, max_s=0.0, timeouts=0, bytes=0)

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(completion=COMPLETIONS, gold=GOLDS, compat=st.booleans())
    def fuzz(completion, gold, compat):
        _check(completion, gold, compat, stats)

    fuzz()
    for completion in FIXED:  # every fixed hostile input against every gold, both modes
        for gold in ("1", "B", "\\frac{1}{2}"):
            for compat in (False, True):
                _check(completion, gold, compat, stats)
    print(f"\nreward fuzz: {stats}")
    assert stats["tried"] >= MAX_EXAMPLES + 6 * len(FIXED)


def test_score_batch_and_the_trl_reward_fn_stay_in_the_allowed_set():
    fn = rewards.make_reward_fn(timeout=TIMEOUT)
    completions = ["<think>а</think><answer>В</answer>", "\\boxed{", "<answer>\x00</answer>", "",
                   [{"role": "assistant", "content": "<think>x</think><answer>1</answer>"}]]
    out = fn(prompts=[""] * 5, completions=completions, answer=["B", "1", "1", "1", 1])
    assert out == [0.5, 0.0, 0.0, 0.0, 1.5]  # Cyrillic 'В' is not the option letter B


def test_unicode_digits_count_as_the_number_and_confusable_letters_do_not():
    assert rewards.score("<answer>１２</answer>", "12", timeout=TIMEOUT)["accuracy"] == 1.0  # Python int() semantics
    assert rewards.score("<answer>В</answer>", "B", timeout=TIMEOUT)["accuracy"] == 0.0  # Cyrillic Ve
    assert rewards.score("<answer>а</answer>", "A", timeout=TIMEOUT)["accuracy"] == 0.0  # Cyrillic a


@pytest.mark.parametrize("completion,gold", [("<answer>1" + "0" * 10000 + "</answer>", "1"),
                                             ("\\boxed{" + "9" * 5000 + "}", "9"),
                                             ("<answer>5</answer>", "1" + "0" * 10000)])
def test_integers_longer_than_4300_digits_score_without_raising(completion, gold):
    parts = rewards.score(completion, gold, timeout=TIMEOUT)
    assert parts["accuracy"] == 0.0


@pytest.mark.parametrize("compat", [False, True])
def test_many_unclosed_answer_tags_stay_within_the_time_limit(compat):
    _warm_worker()
    t0 = time.perf_counter()
    parts = rewards.score("<answer>" * 12_000, "1", compat=compat, timeout=TIMEOUT)
    assert time.perf_counter() - t0 < TIMEOUT + SLACK
    assert parts["total"] in ALLOWED["total"]
