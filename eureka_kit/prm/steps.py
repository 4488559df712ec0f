"""Step-form solutions: `<step>…</step>…<answer>…</answer>`, the format MM-PRM's policy emits (MM-PRM's released code, github.com/ModalMinds/MM-PRM).

* `to_step_solution(problem)`: a toy-world row's worked `<think>a op b=c,…</think><answer>n</answer>`
  solution rewritten as one `<step>` per operation (multi-op levels get 2+ steps; the multimodal `x=7`
  reading is a step of its own). `fine=True` also splits a multiplication by a one-digit number into
  hundreds/tens/units partial products (more steps for the PRM to judge on every level with a `*`).
* `parse_steps(text)`: the ordered steps and the final answer. MM-PRM's regex
  `<step>(.*?)</step>|<answer>(.*?)</answer>` (DOTALL) with stripped strings; it returns the steps and the
  *first* answer separately (MM-PRM keeps one flat list and calls its last element the answer).
  Malformed text never raises: unclosed tags, stray text and an empty string give what did parse.
* `build_step_policy(seed)`: the toy base policy after a short SFT on step-form solutions (cached), the
  policy whose rollouts the PRM labels.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from eureka_kit.data import toyworld
from eureka_kit.data.prompts import prompt_text

STEP_RE = re.compile(r"<step>(.*?)</step>|<answer>(.*?)</answer>", re.DOTALL)
_THINK_RE = re.compile(r"<think>(.*?)</think>\s*<answer>(.*?)</answer>", re.DOTALL)
_OP_RE = re.compile(r"^(-?\d+)([*])(\d)=(-?\d+)$")


@dataclass(frozen=True)
class ParsedSolution:
    """steps: ordered, stripped step strings; answer: stripped content of the first `<answer>` or None."""

    steps: tuple[str, ...]
    answer: str | None

    @property
    def rollout(self) -> tuple[str, ...]:
        """MM-PRM's flat rollout tuple: the steps, then the answer when there is one."""
        return self.steps + (() if self.answer is None else (self.answer,))


def parse_steps(text: str) -> ParsedSolution:
    """Ordered `<step>` contents and the first `<answer>` content of `text` (never raises).

    Steps after the answer are ignored (the answer ends a solution). Empty steps are dropped.
    Example: parse_steps("<step>1+2=3</step><step>3*2=6</step><answer>6</answer>")
             -> ParsedSolution(steps=("1+2=3", "3*2=6"), answer="6")
    """
    if not isinstance(text, str):
        return ParsedSolution((), None)
    steps: list[str] = []
    for m in STEP_RE.finditer(text):
        if m.group(2) is not None:
            return ParsedSolution(tuple(steps), m.group(2).strip())
        if m.group(1).strip():
            steps.append(m.group(1).strip())
    return ParsedSolution(tuple(steps), None)


def format_steps(steps: list[str] | tuple[str, ...], answer: str | None = None) -> str:
    """Inverse of `parse_steps` (no separators between tags, as the toy SFT data)."""
    body = "".join(f"<step>{s.strip()}</step>" for s in steps)
    return body + ("" if answer is None else f"<answer>{answer}</answer>")


def _fine(step: str) -> list[str]:
    """`347*6=2082` -> `300*6=1800`, `40*6=240`, `7*6=42`, `1800+240+42=2082`; other steps unchanged."""
    m = _OP_RE.match(step)
    if not m or len(m.group(1).lstrip("-")) < 2:
        return [step]
    a, b, total = m.group(1), int(m.group(3)), m.group(4)
    parts = [int(d) * 10 ** (len(a) - 1 - i) for i, d in enumerate(a) if d != "0"]
    partial = [f"{p}*{b}={p * b}" for p in parts]
    return partial + ["+".join(str(p * b) for p in parts) + f"={total}"] if len(parts) > 1 else [step]


def solution_steps(problem: dict, *, fine: bool = False) -> tuple[list[str], str]:
    """(steps, answer) of a toy-world row's worked solution; raises ValueError if it is not worked out."""
    m = _THINK_RE.search(problem.get("solution") or "")
    if not m:
        raise ValueError(f"solution: no <think>…</think><answer>…</answer> in problem {problem.get('id')!r}")
    steps = [s.strip() for s in m.group(1).split(",") if s.strip()]
    if fine:
        steps = [f for s in steps for f in _fine(s)]
    return steps, m.group(2).strip()


def to_step_solution(problem: dict, *, fine: bool = False) -> str:
    """The row's solution in `<step>…</step>…<answer>…</answer>` form (one step per operation)."""
    steps, answer = solution_steps(problem, fine=fine)
    return format_steps(steps, answer)


def step_sft_examples(tokenizer, problems: list[dict], template: str = "none", *, fine: bool = False) -> list[dict]:
    """{"prompt", "completion"} pairs with step-form completions (base_policy.sft's input)."""
    return [dict(prompt=prompt_text(tokenizer, p, template), completion=to_step_solution(p, fine=fine))
            for p in problems]


@dataclass(frozen=True)
class StepPolicyConfig:
    """Step-form SFT on top of the toy base policy (which already does the arithmetic in `<think>` form)."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 20
    n_per_level: int = 400
    # all levels, the top one too: the PRM needs multi-step problems the policy solves only sometimes
    levels: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    fine: bool = True  # split multiplications into partial products: 3-5 steps on levels 4-5
    base_seed: int = 0


def build_step_policy(seed: int = 0, cfg: StepPolicyConfig = StepPolicyConfig(), *, force: bool = False,
                      progress: bool = True, root: Path | None = None) -> Path:
    """Folder of the step-form toy policy (cached by config + seed); deterministic like `base_policy.build_base_policy`."""
    import hashlib

    from eureka_kit.engine.base_policy import SFTConfig, cache_dir, load_policy, sft
    from eureka_kit.version import __version__

    key = hashlib.sha256(json.dumps(dict(cfg=asdict(cfg), seed=seed, v=__version__), sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    out = (root or cache_dir()) / "step_policy" / f"seed{seed}-{key}"
    if out.exists() and not force:
        return out
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model, tok = load_policy("toy", seed=cfg.base_seed)
        problems = toyworld.generate("train", "math", cfg.n_per_level, seed=seed, levels=cfg.levels)
        sft_cfg = replace(SFTConfig(), steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup=cfg.warmup)
        losses = sft(model, tok, step_sft_examples(tok, problems, fine=cfg.fine), sft_cfg, seed=seed,
                     progress=progress)
    finally:
        torch.set_num_threads(threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "sft.json").write_text(json.dumps(dict(config=asdict(cfg), seed=seed, final_loss=losses[-1]), indent=2,
                                             default=str))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
