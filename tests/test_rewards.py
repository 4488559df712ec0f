"""Rewards: docs/algorithms.md cases, default vs mmeureka_compat, multiple choice, the time limit."""

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eureka_kit.data.rewards import (
    _fast_int,
    answer_letter,
    extract_answer,
    format_reward,
    make_reward_fn,
    math_verify_accuracy,
    response_text,
    run_with_timeout,
    score,
)

GOOD = "<think>1+1=2</think><answer>2</answer>"


def test_format_reward_cases():
    assert format_reward(GOOD) == 0.5
    assert format_reward("pre <think>a</think>\n <answer>b</answer> post") == 0.5
    assert format_reward("<think></think><answer>b</answer>") == 0.0  # empty think
    assert format_reward("<think>a</think>x<answer>b</answer>") == 0.0  # text between
    assert format_reward("<think>a</think><answer>b</answer><answer>c</answer>") == 0.0  # two answers
    assert format_reward("<think>a\nb</think><answer>c\nd</answer>") == 0.5  # DOTALL


def test_response_text_strips_prompt_and_end_tokens():
    assert response_text("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nhi<|im_end|>") == "hi"


def test_total_is_accuracy_plus_format():
    assert score(GOOD, "2") == dict(accuracy=1.0, format=0.5, total=1.5, timeout=0.0, error=0.0)
    assert score("<answer>2</answer>", "2")["total"] == 1.0
    assert score("<think>x</think><answer>3</answer>", "2")["total"] == 0.5
    assert score("", "2")["total"] == 0.0
    assert score("<|im_end|>", "2")["format"] == 0.0  # empty after end tokens: everything 0


def test_answer_span_default_vs_compat():
    multi = "<answer>\n5\n</answer>"
    assert extract_answer(multi) == "\n5\n"
    assert extract_answer(multi, compat=True) == "\n5\n</answer>"  # no DOTALL: text after last <answer>
    assert extract_answer("so \\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\boxed{\\frac{1}{2}}"
    assert extract_answer("no tags at all") is None
    assert extract_answer("no tags at all", compat=True) == "no tags at all"
    assert score(multi, "5")["accuracy"] == 1.0


def test_boxed_fallback_and_expressions():
    assert score("I think it is \\boxed{\\frac{1}{2}}", "0.5", timeout=None)["accuracy"] == 1.0
    assert score("<answer>$\\sqrt{8}$</answer>", "2\\sqrt{2}", timeout=None)["accuracy"] == 1.0
    assert score("<answer>$\\frac{1}{3}$</answer>", "\\frac{1}{2}", timeout=None)["accuracy"] == 0.0
    assert score("<answer>The answer is $\\boxed{7}$</answer>", "7", timeout=None)["accuracy"] == 1.0


def test_unparsable_gold_scores_one_only_in_compat():
    assert math_verify_accuracy("x", "", compat=True) == 1.0
    assert math_verify_accuracy("x", "", compat=False) == 0.0
    assert score("<answer>x</answer>", "", compat=True, timeout=None)["accuracy"] == 1.0


@pytest.mark.parametrize("answer,ok", [("B", True), ("(b)", True), ("$\\boxed{B}$", True), ("B.", True),
                                       ("The answer is B", True), ("A or B", False), ("C", False)])
def test_multiple_choice_default(answer, ok):
    assert score(f"<answer>{answer}</answer>", "B")["accuracy"] == float(ok)


def test_multiple_choice_compat_substring_quirk():
    # released code: letter in the lower-cased answer and none of the other three letters
    assert score("<answer>b</answer>", "B", compat=True, timeout=None)["accuracy"] == 1.0
    # "the answer is b" contains "a" -> the fallback fails (documented quirk); default mode gets it right
    assert score("<answer>the answer is b</answer>", "B", compat=True, timeout=None)["accuracy"] == 0.0
    assert score("<answer>the answer is B</answer>", "B")["accuracy"] == 1.0


def test_answer_letter():
    assert answer_letter("(C)") == "C"
    assert answer_letter("option D is right") == "D"
    assert answer_letter("A and B") is None
    assert answer_letter("42") is None


@settings(max_examples=60, deadline=None)
@given(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6), st.booleans())
def test_fast_integer_path_matches_math_verify(g, a, same):
    a = g if same else a
    fast = _fast_int(str(g), str(a))
    assert fast is not None
    assert float(fast) == math_verify_accuracy(str(a), str(g), compat=False)
    assert float(fast) == math_verify_accuracy(str(a), str(g), compat=True)


def test_time_limit_kills_slow_call_and_recovers():
    t0 = time.time()
    with pytest.raises(TimeoutError):
        run_with_timeout(time.sleep, (5,), 0.5)
    assert time.time() - t0 < 3
    assert run_with_timeout(max, (1, 3), 30) == 3  # a fresh worker after the kill
    # a math-verify call that cannot finish in 0.1 ms times out and scores 0
    parts = score("<think>x</think><answer>\\frac{1}{2}</answer>", "\\frac{2}{4}", timeout=1e-4)
    assert parts["timeout"] == 1.0 and parts["accuracy"] == 0.0 and parts["format"] == 0.5


def test_math_verify_path_works_in_worker_thread():
    out = {}
    t = threading.Thread(target=lambda: out.update(
        r=score("<answer>\\frac{2}{4}</answer>", "0.5", timeout=30)["accuracy"]))
    t.start()
    t.join()
    assert out["r"] == 1.0


def test_trl_signature():
    f = make_reward_fn()
    comps = [GOOD, "<answer>3</answer>", [{"role": "assistant", "content": GOOD}]]
    assert f(["p"] * 3, comps, answer=["2", "2", "2"]) == [1.5, 0.0, 1.5]
    assert make_reward_fn(format_reward=False)(["p"], [GOOD], answer=["2"]) == [1.0]


# ---------------------------------------------------------------------------------------------
# Verifier failures: counted when math-verify raises, raised when it cannot run at all.
FRACTION = "<think>x</think><answer>\\frac{1}{2}</answer>"  # not an integer: math-verify decides


@pytest.mark.parametrize("timeout", [None, 30], ids=["inline", "worker"])
def test_a_verifier_that_raises_scores_zero_and_counts_an_error(monkeypatch, timeout):
    from eureka_kit.data import rewards

    # pow(answer, gold, compat) raises TypeError on strings; a builtin pickles by reference into the worker
    monkeypatch.setattr(rewards, "math_verify_accuracy", pow)
    parts = score(FRACTION, "0.5", timeout=timeout)
    assert (parts["accuracy"], parts["format"], parts["total"], parts["timeout"], parts["error"]) == (0, 0.5, 0.5, 0, 1)
    assert parts["error_message"].startswith("TypeError(") and "pow()" in parts["error_message"]
    monkeypatch.undo()
    ok = score(FRACTION, "0.5", timeout=timeout)
    assert (ok["accuracy"], ok["error"]) == (1.0, 0.0) and "error_message" not in ok


def test_a_worker_that_dies_in_a_call_is_an_error_naming_its_exit_code_and_the_next_call_restarts_it():
    import os

    with pytest.raises(RuntimeError, match="died during a call: exit code 7"):
        run_with_timeout(os._exit, (7,), 30)
    assert run_with_timeout(max, (1, 3), 30) == 3


def _install_worker(monkeypatch, command):
    from eureka_kit.data import rewards

    monkeypatch.setattr(rewards, "_WORKER", rewards._Worker(command))
    monkeypatch.setattr(rewards, "_CHECKED", set())


def test_a_worker_that_cannot_start_raises_verifier_unavailable_naming_the_cause(monkeypatch):
    import sys

    from eureka_kit.data.rewards import VerifierUnavailable, check_verifier, score_batch

    _install_worker(monkeypatch, [sys.executable, "-c", "import sys; sys.stderr.write('no math here'); sys.exit(3)"])
    for call in (lambda: score(FRACTION, "0.5", timeout=30),
                 lambda: score_batch([GOOD, FRACTION], ["2", "0.5"], timeout=30),
                 lambda: check_verifier(30)):
        with pytest.raises(VerifierUnavailable) as err:
            call()
        message = str(err.value)  # the command, its exit code and its stderr
        assert "sys.exit(3)" in message and "exit code 3" in message and "no math here" in message, message
    _install_worker(monkeypatch, ["/nonexistent/python3", "-c", "pass"])
    with pytest.raises(VerifierUnavailable, match="No such file or directory.*/nonexistent/python3"):
        check_verifier(30)


def test_check_verifier_passes_once_and_fails_on_a_wrong_answer(monkeypatch):
    from eureka_kit.data import rewards

    monkeypatch.setattr(rewards, "_CHECKED", set())
    rewards.check_verifier(None)
    rewards.check_verifier(30)
    assert rewards._CHECKED == {"inline", "worker"}
    monkeypatch.setattr(rewards, "_CHECKED", set())
    monkeypatch.setattr(rewards, "math_verify_accuracy", lambda *args: 0.0)
    with pytest.raises(rewards.VerifierUnavailable, match="scored 1/2 vs 0.5 as 0.0"):
        rewards.check_verifier(None)
    assert not rewards._CHECKED
