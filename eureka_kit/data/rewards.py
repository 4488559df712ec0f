"""MM-EUREKA rule rewards: accuracy (0/1) + format (0/0.5).

Source: MM-EUREKA `examples/scripts/reward_func_qwen_instruct.py`. Correct behaviour by default; the
released code's quirks only with `compat=True` (RunConfig.mmeureka_compat):

| step               | default (correct)                                  | compat=True (released code)               |
|--------------------|----------------------------------------------------|-------------------------------------------|
| answer span        | first `<answer>…</answer>` (DOTALL), else the last | first single-line `<answer>…</answer>`,   |
|                    | `\\boxed{}` of the response, else none (acc 0)      | else text after last `<answer>`, else all |
| verify             | verify(gold, candidate)                            | verify(candidate, gold) (swapped slots)   |
| letter gold (A-D)  | the one option letter the answer names             | math-verify, then substring fallback      |
| gold fails to parse| accuracy 0                                         | accuracy 1.0                              |

Format (both modes): 0.5 iff exactly one each of <think>, </think>, <answer>, </answer> and the response
contains `<think>X</think>\\s*<answer>Y</answer>` with X, Y non-empty. Empty response: all parts 0.

Time limit: math-verify's own limit uses signal.alarm, which raises outside the main thread, so it is
disabled here (parsing_timeout=None, timeout_seconds=None) and the sympy work runs in one persistent
worker *subprocess* (safe from any thread; killed and restarted on timeout; a timeout scores 0).
Integer gold vs a plain integer answer (the toy world) skips math-verify: `int(a) == int(b)`, which is what
math-verify returns for such pairs (tests check it).

Verifier failures: an exception inside math-verify scores accuracy 0 (as the released code) and is counted:
`score` returns `error` = 1 and the exception as `error_message`. A worker that cannot start is no answer's
fault: `VerifierUnavailable` (naming the command, its exit code and the end of its stderr) propagates out of
`score` / `score_batch` instead of a 0; `check_verifier` runs that check once before scoring.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

END_TOKENS = ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>")
ASSISTANT_MARK = "<|im_start|>assistant\n"
LETTERS = "ABCD"
_INT = re.compile(r"-?\d+")


# ---------------------------------------------------------------------------------------------
# Pure text helpers
def response_text(completion: str) -> str:
    """The assistant's text: after the last `<|im_start|>assistant\\n` (if the prompt is included), end tokens removed."""
    if ASSISTANT_MARK in completion:
        completion = completion.rsplit(ASSISTANT_MARK, 1)[1]
    for tok in END_TOKENS:
        completion = completion.replace(tok, "")
    return completion


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{…}` (braces matched), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def _first_answer(text: str) -> str | None:
    """The leftmost `<answer>...</answer>` span, as a lazy regex would match it, in linear time (a regex is
    quadratic in unclosed tags, which a hostile completion can exploit outside the time limit)."""
    start = text.find("<answer>")
    end = -1 if start < 0 else text.find("</answer>", start + 8)
    return None if end < 0 else text[start + 8:end]


def extract_answer(response: str, compat: bool = False) -> str | None:
    """The answer span the accuracy reward scores (see the module table); None if there is none."""
    if compat:  # quirk: the released regex has no DOTALL, so only a single-line span counts
        for line in response.split("\n"):
            span = _first_answer(line)
            if span is not None:
                return span
        return response.split("<answer>")[-1]
    span = _first_answer(response)
    if span is not None:
        return span
    boxed = last_boxed(response)
    return None if boxed is None else "\\boxed{" + boxed + "}"


def format_reward(response: str) -> float:
    """0.5 for exactly one well-formed `<think>…</think>` + `<answer>…</answer>` pair, else 0."""
    if any(response.count(t) != 1 for t in ("<think>", "</think>", "<answer>", "</answer>")):
        return 0.0
    return 0.5 if re.search(r"<think>.+?</think>\s*<answer>.+?</answer>", response, re.DOTALL) else 0.0


def _strip_wrappers(text: str) -> str:
    """Remove $…$, \\boxed{…}, \\text{…}, (…) wrappers and surrounding space/punctuation."""
    prev = None
    while prev != text:
        prev = text
        text = text.strip().strip("$").strip()
        for cmd in ("\\boxed{", "\\text{", "\\mathrm{", "\\textbf{"):
            if text.startswith(cmd) and text.endswith("}"):
                text = text[len(cmd):-1]
        if text.startswith("(") and text.endswith(")"):
            text = text[1:-1]
        text = text.rstrip(".:")
    return text


def gold_letter(gold: str) -> str | None:
    """'B' for a multiple-choice gold ('B', 'b', '(B)', '$B$'), else None."""
    g = _strip_wrappers(gold)
    return g.upper() if len(g) == 1 and g.upper() in LETTERS else None


def answer_letter(answer: str) -> str | None:
    """The option letter an answer names: a lone letter ('B', '(b)', '$\\boxed{B}$', 'B.') or the single
    distinct capital A-D standing alone as a word ('The answer is B'); None if absent or ambiguous."""
    a = _strip_wrappers(answer)
    if len(a) == 1 and a.upper() in LETTERS:
        return a.upper()
    found = set(re.findall(r"(?<![A-Za-z])([A-D])(?![A-Za-z])", a))
    return found.pop() if len(found) == 1 else None


def _fast_int(gold: str, answer: str) -> bool | None:
    """Integer gold vs integer answer -> equality (math-verify's result for these pairs); else None."""
    g, a = gold.strip(), _strip_wrappers(answer)
    if _INT.fullmatch(g) and _INT.fullmatch(a):
        try:
            return int(g) == int(a)
        except ValueError:  # over sys.get_int_max_str_digits(): let math-verify decide under the time limit
            return None
    if _INT.fullmatch(g) and not any(ch.isdigit() for ch in a):
        return False  # no digit can never equal an integer; saves a math-verify round trip on junk
    return None


# ---------------------------------------------------------------------------------------------
# math-verify path (runs in the worker process when a time limit is set)
def _quiet_math_verify() -> None:
    # math-verify logs a warning on every call made with its timeouts disabled; we enforce our own.
    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "math_verify.utils"):
        logging.getLogger(name).setLevel(logging.ERROR)


def math_verify_accuracy(answer: str, gold: str, compat: bool) -> float:
    """Accuracy by math-verify (no time limit of its own; call through `run_with_timeout`)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, StringExtractionConfig, parse, verify
    _quiet_math_verify()
    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    if len(gold_parsed) == 0:
        return 1.0 if compat else 0.0  # quirk: unparsable gold scores 1 in the released code
    cand = parse(answer, extraction_config=[StringExtractionConfig(), LatexExtractionConfig(),
                                            ExprExtractionConfig()], parsing_timeout=None)
    if compat:
        ok = verify(cand, gold_parsed, timeout_seconds=None)  # quirk: candidate in the gold slot
    else:
        ok = verify(gold_parsed, cand, timeout_seconds=None)
    if ok or not compat:
        return float(ok)
    low = answer.lower()  # quirk: substring letter fallback ("the answer is b" contains "a": fails)
    for g in gold_parsed:
        g = str(g).lower()
        if g in ("a", "b", "c", "d") and g in low and not any(o in low for o in "abcd" if o != g):
            return 1.0
    return 0.0


def serve_stdio() -> None:
    """Worker loop on stdin/stdout: read pickled (fn, args), write pickled ("ok", result) | ("err", repr)."""
    # Ctrl-C (or a Jupyter kernel shutting down) signals the whole process group; the worker ends when its
    # parent closes stdin or kills it, so it ignores SIGINT instead of printing a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _quiet_math_verify()
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the pickle stream
    pickle.dump(("ready", None), out)
    out.flush()
    while True:
        try:
            fn, args = pickle.load(inp)
        except EOFError:
            return
        try:
            reply = ("ok", fn(*args))
        except Exception as exc:  # noqa: BLE001 - the caller scores it 0 and counts it as an error
            reply = ("err", repr(exc))
        pickle.dump(reply, out)
        out.flush()


class VerifierUnavailable(RuntimeError):
    """The verifier cannot run at all (its worker does not start, or it fails `check_verifier`): raised to the
    caller, never scored 0. The message names the cause."""


class _WorkerRaised(RuntimeError):
    """The function raised inside the worker; the message is that exception's repr."""


WORKER_START_S = 120  # start-up (imports) is not charged to a call


class _Worker:
    """One worker subprocess shared by all threads (calls serialised by a lock).

    A plain `python -c` subprocess rather than multiprocessing: spawn/forkserver re-import `__main__`
    (breaks stdin scripts and unguarded scripts), and fork is unsafe after torch has started threads. Its
    stderr goes to a temporary file, not a pipe (an unread pipe fills and blocks the worker): when the worker
    dies, the end of that file says why.
    """

    def __init__(self, command: list[str] | None = None) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.stderr: Any = None
        self.command = command or [sys.executable, "-c", "from eureka_kit.data.rewards import serve_stdio; serve_stdio()"]

    def _read(self, timeout: float) -> Any:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        return pickle.load(self.proc.stdout)

    def _start(self) -> None:
        pkg_parent = str(Path(__file__).resolve().parents[2])  # the folder holding eureka_kit/
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([pkg_parent, os.environ.get("PYTHONPATH", "")])}
        command = shlex.join(self.command)
        self.stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self.stderr, env=env)
        except OSError as exc:
            self.stderr.close()
            raise VerifierUnavailable(f"reward worker could not be started: {exc}. Command: {command}") from exc
        try:
            self._read(WORKER_START_S)
        except TimeoutError:
            raise VerifierUnavailable(f"reward worker did not start within {WORKER_START_S} s. Command: {command}; "
                                      f"{self._end()}") from None
        except (EOFError, pickle.UnpicklingError):
            raise VerifierUnavailable(f"reward worker failed to start. Command: {command}; {self._end()}") from None

    def _end(self) -> str:
        """Stop the worker and say how it ended: its exit code (killed if still running) and the end of its stderr."""
        try:
            self.proc.wait(timeout=1)  # a worker that failed by itself has exited, or is exiting
        except subprocess.TimeoutExpired:
            pass
        code = self.proc.returncode
        self.stderr.seek(max(0, self.stderr.seek(0, os.SEEK_END) - 2000))
        tail = self.stderr.read().decode(errors="replace").strip()
        self._stop()
        ending = "still running, killed" if code is None else f"exit code {code}"
        return ending + (f"; its stderr ends with:\n{tail}" if tail else "; nothing on its stderr")

    def _stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        self.stderr.close()

    def call(self, fn: Callable, args: tuple, timeout: float) -> Any:
        with self.lock:
            if self.proc is not None and self.proc.poll() is not None:  # exited since the last call
                self._stop()
            if self.proc is None:
                self._start()
            pickle.dump((fn, args), self.proc.stdin)
            self.proc.stdin.flush()
            try:
                status, value = self._read(timeout)
            except TimeoutError:
                self._stop()  # the worker may be stuck in sympy: kill it, the next call starts a fresh one
                raise TimeoutError(f"reward call exceeded {timeout} s") from None
            except EOFError:  # it died in the call (a crash, or killed for memory); the next call starts a fresh one
                raise RuntimeError(f"reward worker died during a call: {self._end()}") from None
            if status == "err":
                raise _WorkerRaised(value)
            return value


_WORKER = _Worker()


def run_with_timeout(fn: Callable, args: tuple, timeout: float | None) -> Any:
    """fn(*args) in the worker process, TimeoutError after `timeout` s; inline when timeout is None.

    `fn` must be picklable (a module-level function). Works from any thread. An exception inside fn is raised
    as a RuntimeError holding its repr; VerifierUnavailable when the worker cannot start.
    """
    if timeout is None:
        return fn(*args)
    return _WORKER.call(fn, args, timeout)


_CHECKED: set[str] = set()  # "worker" / "inline": the modes whose `check_verifier` passed in this process
CHECK_S = 60.0  # the check's time limit: its call imports math-verify and sympy (~1 s, more on a loaded machine)


def check_verifier(timeout: float | None = 5.0) -> None:
    """Raise VerifierUnavailable unless the verifier scores a known-equal pair (1/2 vs 0.5) as correct.

    Runs where `score` would with this `timeout` (a set time limit starts the worker; the check itself gets
    CHECK_S), so a broken setup fails here, naming the cause, before any answer is scored 0. A pass is
    remembered for the rest of the process.
    """
    mode = "inline" if timeout is None else "worker"
    if mode in _CHECKED:
        return
    try:
        acc = run_with_timeout(math_verify_accuracy, ("1/2", "0.5", False), None if timeout is None else CHECK_S)
    except VerifierUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever it is, every answer would score 0
        raise VerifierUnavailable(f"the verifier failed its check (1/2 vs 0.5, {mode}): {_describe(exc)}") from exc
    if acc != 1.0:
        raise VerifierUnavailable(f"the verifier scored 1/2 vs 0.5 as {acc}, expected 1.0 ({mode}): is "
                                  f"math-verify (>= 0.8) installed and working?")
    _CHECKED.add(mode)


def _describe(exc: Exception) -> str:
    """An exception as the message `score` reports: the worker already sends the repr of its own."""
    return str(exc) if isinstance(exc, _WorkerRaised) else repr(exc)


# ---------------------------------------------------------------------------------------------
# Public scoring API
def score(completion: str, gold: str, *, compat: bool = False,
          timeout: float | None = 5.0) -> dict[str, float | str]:
    """Reward parts of one completion.

    Args:
        completion: model output (may include the prompt; see `response_text`).
        gold: reference answer string (expression, or an option letter for multiple choice).
        compat: reproduce the released code's quirks (module table).
        timeout: seconds for the math-verify part (None = no limit, inline).
    Returns:
        {"accuracy": 0|1, "format": 0|0.5, "total": accuracy + format, "timeout": 0|1, "error": 0|1}: `timeout`
        1 when math-verify ran out of time, `error` 1 when it raised (both score accuracy 0); with error 1 also
        "error_message": the exception's repr.
    Raises:
        VerifierUnavailable: the worker cannot start (no answer is scored then).
    """
    response = response_text(completion)
    if not response.strip():
        return dict(accuracy=0.0, format=0.0, total=0.0, timeout=0.0, error=0.0)
    fmt = format_reward(response)
    acc, timed_out, error = _accuracy(response, str(gold), compat, timeout)
    parts: dict[str, float | str] = dict(accuracy=acc, format=fmt, total=acc + fmt, timeout=float(timed_out),
                                         error=float(error is not None))
    if error is not None:
        parts["error_message"] = error
    return parts


def _accuracy(response: str, gold: str, compat: bool, timeout: float | None) -> tuple[float, bool, str | None]:
    """(accuracy, timed out, the verifier's error message or None)."""
    answer = extract_answer(response, compat)
    if answer is None:
        return 0.0, False, None
    letter = gold_letter(gold)
    if letter is not None and not compat:
        return float(answer_letter(answer) == letter), False, None
    fast = _fast_int(gold, answer)
    if fast is not None:
        return float(fast), False, None
    try:
        return float(run_with_timeout(math_verify_accuracy, (answer, gold, compat), timeout)), False, None
    except TimeoutError:
        return 0.0, True, None
    except VerifierUnavailable:
        raise  # not this answer's fault: a 0 would hide that nothing can be scored
    except Exception as exc:  # noqa: BLE001 - the released code scores any exception 0; here it is also counted
        return 0.0, False, _describe(exc)


def score_batch(completions: list[str], golds: list[str], *, compat: bool = False,
                timeout: float | None = 5.0, use_format: bool = True) -> list[dict[str, float | str]]:
    """`score` for each (completion, gold); `total` leaves out the format part when `use_format` is False.
    VerifierUnavailable propagates."""
    out = []
    for c, g in zip(completions, golds, strict=True):
        parts = score(c, g, compat=compat, timeout=timeout)
        if not use_format:
            parts["total"] = parts["accuracy"]
        out.append(parts)
    return out


def _completion_text(c: Any) -> str:
    """TRL passes str completions, or conversational ones: a list of {role, content} messages."""
    if isinstance(c, str):
        return c
    content = c[-1]["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content


def make_reward_fn(*, format_reward: bool = True, compat: bool = False, timeout: float | None = 5.0,
                   answer_key: str = "answer") -> Callable[..., list[float]]:
    """A TRL-compatible reward function `f(prompts, completions, **columns) -> list[float]` (total reward).

    The gold answers come from the dataset column `answer_key` (TRL passes extra columns as kwargs).
    """
    def reward(prompts, completions, **columns) -> list[float]:
        texts = [_completion_text(c) for c in completions]
        parts = score_batch(texts, [str(a) for a in columns[answer_key]], compat=compat, timeout=timeout,
                            use_format=format_reward)
        return [p["total"] for p in parts]

    reward.__name__ = "mmeureka_reward"
    return reward
