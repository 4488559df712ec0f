"""Prompt templates: MM-Eureka's system prompts and the chat messages of one problem.

* `cpgd_7b`: CPGD report Table 3 (7B training), verbatim from the report's PDF rendering.
* `mmeureka_32b`: `SYSTEM_PROMPT_32B` of MM-EUREKA's eval scripts (MMK12 eval uses it for every model),
  with the scripts' doubled backslash (`\\\\boxed`, an escaping slip) written as one; its typo "Th answer"
  is kept.
* `none`: no system turn (the toy world's default: a 500-char prompt would swamp a char-level toy).
The user turn is `<image>{question}` as in the Qwen2.5-VL chat format: an image item, then the text.
"""

from __future__ import annotations

SYSTEM_PROMPTS: dict[str, str | None] = {
    "cpgd_7b": (
        "Solve the question. The user asks a question, and you solves it. You first thinks about the reasoning "
        "process in the mind and then provides the user with the answer. The answer is in latex format and "
        "wrapped in $...$. The final answer must be wrapped using the \\boxed{} command. The reasoning process "
        "and answer are enclosed within <think></think> and <answer></answer> tags, respectively, i.e., "
        "<think>Since 1 + 1 = 2, so the answer is 2. </think><answer>The answer is $\\boxed{2}$ </answer>, "
        "which means the final answer assistant's output should start with <answer> and end with </answer>."
    ),
    "mmeureka_32b": (
        "Solve the question. The user asks a question, and you solves it. You first thinks about the reasoning "
        "process in the mind and then provides the user with the answer. The answer is in latex format and "
        "wrapped in $...$. The final answer must be wrapped using the \\boxed{} command. Th answer should be "
        "enclosed within <answer> </answer> tags, i.e., Since $1+1=2$, so the answer is $2$. <answer> The "
        "answer is $\\boxed{2}$ </answer>, which means the final answer assistant's output should start with "
        "<answer> and end with </answer>."
    ),
    "none": None,
}


def build_messages(problem: dict, template: str = "cpgd_7b", *, multimodal: bool | None = None) -> list[dict]:
    """Chat messages for one problem row.

    Args:
        problem: a row with `question` and optionally `image` (PIL image, path or bytes; None = text only).
        template: a key of SYSTEM_PROMPTS.
        multimodal: add the image item (default: iff the row has an image).
    Returns:
        [{"role": "system", "content": [text]}]? + [{"role": "user", "content": [image?, text]}].
    """
    if template not in SYSTEM_PROMPTS:
        raise ValueError(f"prompt_template: unknown {template!r}; allowed: {', '.join(SYSTEM_PROMPTS)}")
    if multimodal is None:
        multimodal = problem.get("image") is not None
    messages = []
    if SYSTEM_PROMPTS[template] is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPTS[template]}]})
    user = ([{"type": "image"}] if multimodal else []) + [{"type": "text", "text": problem["question"]}]
    messages.append({"role": "user", "content": user})
    return messages


def apply_template(processor_or_tokenizer, messages: list[dict]) -> str:
    """Prompt text ready for generation (chat template + assistant header), not tokenized."""
    return processor_or_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_text(processor_or_tokenizer, problem: dict, template: str = "cpgd_7b", **kwargs) -> str:
    """`apply_template(build_messages(problem, template))` in one call."""
    return apply_template(processor_or_tokenizer, build_messages(problem, template, **kwargs))
