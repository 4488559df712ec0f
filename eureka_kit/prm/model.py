"""The process reward model: the policy architecture reading P("Yes") at a step marker (MM-PRM's released code, github.com/ModalMinds/MM-PRM).

No value head: the LM head is reused. The sequence is MM-PRM's layout, an empty user turn and an assistant
turn `Question: {q}\\nProcess: {step}<prm>\\n\\n{step}<prm>`; the logits *at* each `<prm>` position (no shift),
restricted to the ids of "Yes" and "No", give P(Yes) = softmax([l_yes, l_no])[0], the step score.
Loss: cross-entropy against the soft target [y, 1 - y] (y = the step's MC value), mean over all markers
in the batch, = BCE(sigmoid(l_yes - l_no), y).

Tokens: `<prm>` is added to the tokenizer as one special token, its embedding row set to the mean of the
old rows (MM-PRM `internvl_chat_finetune.py`); "Yes"/"No" are the *first* token of each word, which is the
whole word in Qwen/InternLM vocabularies and the single chars 'Y'/'N' in the toy char tokenizer (so nothing
else is added). The vision tower is frozen (`models.freeze_vision`). The training loop is a plain AdamW loop
in the spirit of `base_policy.sft` (base_policy.sft_step needs the model's own next-token loss, which a PRM does not use).
Scoring uses MM-PRM's inference layout (markers with no "\\n\\n" after them) unless `sep` is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from eureka_kit.models import freeze_vision, tokenizer_of
from eureka_kit.prm.data import PRM_TAG

REWARD_TOKENS = ("Yes", "No")


@dataclass(frozen=True)
class PRMTrainConfig:
    """Defaults are MM-PRM's PRM script (MM-PRM's released code, github.com/ModalMinds/MM-PRM); `TOY_PRM` overrides them for the 0.45M toy."""

    epochs: int = 3
    lr: float = 2e-6
    warmup_ratio: float = 0.03
    weight_decay: float = 0.05
    batch_size: int = 512
    max_seq_len: int = 8192
    grad_clip: float = 1.0


TOY_PRM = dict(epochs=3, lr=1e-3, batch_size=32, max_seq_len=256)


# ---------------------------------------------------------------------------------------------
# Pure math
def soft_ce(yes_no_logits: Tensor, labels: Tensor) -> Tensor:
    """Per-marker loss -(y log p_yes + (1 - y) log p_no) with p = softmax([l_yes, l_no]).

    Args:
        yes_no_logits: (M, 2) float, the logits of "Yes" and "No" at M marker positions.
        labels: (M,) float in [0, 1], soft MC labels.
    Returns:
        (M,) float per-marker loss. Example: logits [0, 0] -> ln 2 = 0.6931 for any y.
    """
    logp = torch.log_softmax(yes_no_logits.float(), dim=-1)
    return -(labels * logp[:, 0] + (1 - labels) * logp[:, 1])


def prm_loss(logits: Tensor, targets: Tensor, yes_id: int, no_id: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean soft-label CE over the marker positions of a batch.

    Args:
        logits: (B, T, V) LM logits (no shift: position t scores the marker at t).
        targets: (B, T) float, the soft label at marker positions and -100 everywhere else.
        yes_id, no_id: vocabulary ids of the reward tokens.
    Returns:
        (scalar loss, {"num_markers", "p_yes_mean", "label_mean"}).
    """
    at = targets != -100  # (B, T)
    yes_no = logits[at][:, [yes_id, no_id]]  # (M, 2)
    y = targets[at].float()
    per_marker = soft_ce(yes_no, y)
    with torch.no_grad():
        p_yes = torch.softmax(yes_no.float(), dim=-1)[:, 0]
    return per_marker.mean(), {"num_markers": at.sum(), "p_yes_mean": p_yes.mean(), "label_mean": y.mean()}


# ---------------------------------------------------------------------------------------------
# Tokens and encoding
def reward_token_ids(tok) -> tuple[int, int]:
    """Ids of the first token of "Yes" and of "No" (toy char tokenizer: 'Y', 'N')."""
    yes, no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in REWARD_TOKENS)
    if yes == no:
        raise ValueError("reward tokens: 'Yes' and 'No' start with the same token in this tokenizer")
    return yes, no


def add_marker(model, processor) -> int:
    """Add `<prm>` as one special token (if missing), new embedding rows = mean of the old; returns its id."""
    tok = tokenizer_of(processor)
    if PRM_TAG not in tok.get_vocab():
        tok.add_tokens([PRM_TAG], special_tokens=True)
        old = model.get_input_embeddings().weight.shape[0]
        model.resize_token_embeddings(len(tok), mean_resizing=False)
        with torch.no_grad():
            for emb in {model.get_input_embeddings(), model.get_output_embeddings()}:
                emb.weight[old:] = emb.weight[:old].mean(dim=0)
    return tok.convert_tokens_to_ids(PRM_TAG)


def init_prm(model, processor):
    """Turn a policy into an untrained PRM in place: add the marker, freeze the vision tower."""
    add_marker(model, processor)
    freeze_vision(model)
    return model


def prm_text(processor, question: str, process: str) -> str:
    """MM-PRM's layout: empty user turn, assistant turn `Question: {q}\\nProcess: {process}`."""
    messages = [{"role": "user", "content": [{"type": "text", "text": ""}]},
                {"role": "assistant", "content": [{"type": "text", "text": f"Question: {question}\nProcess: {process}"}]}]
    return processor.apply_chat_template(messages, tokenize=False)


def process_for_scoring(steps: list[str], sep: str = "") -> str:
    """MM-PRM's released code (github.com/ModalMinds/MM-PRM): '<prm>'.join(steps) + '<prm>' (sep='\\n\\n' reproduces the training layout instead)."""
    return "".join(f"{s.strip()}{PRM_TAG}{sep}" for s in steps).removesuffix(sep) if steps else ""


def encode_example(processor, question: str, process: str, labels: list[float] | None = None):
    """(input_ids list, targets list: label at each marker, -100 elsewhere). Marker count must match labels."""
    tok = tokenizer_of(processor)
    ids = tok(prm_text(processor, question, process), add_special_tokens=False)["input_ids"]
    marker = tok.convert_tokens_to_ids(PRM_TAG)
    where = [i for i, t in enumerate(ids) if t == marker]
    if labels is not None and len(where) != len(labels):
        raise ValueError(f"labels: {len(labels)} labels for {len(where)} {PRM_TAG} markers")
    targets = [-100.0] * len(ids)
    for i, y in zip(where, labels if labels is not None else [0.0] * len(where), strict=True):
        targets[i] = float(y)
    return ids, targets


def pad_batch(encoded: list[tuple[list[int], list[float]]], pad_id: int) -> dict[str, Tensor]:
    """Right-padded input_ids/attention_mask (B, T) int64 and targets (B, T) float (-100 on padding)."""
    T = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), T), pad_id)
    mask = torch.zeros((len(encoded), T), dtype=torch.long)
    targets = torch.full((len(encoded), T), -100.0)
    for i, (seq, tgt) in enumerate(encoded):
        ids[i, :len(seq)], mask[i, :len(seq)], targets[i, :len(seq)] = torch.tensor(seq), 1, torch.tensor(tgt)
    return dict(input_ids=ids, attention_mask=mask, targets=targets)


# ---------------------------------------------------------------------------------------------
# Training and scoring
def train_prm(model, processor, examples: list[dict], cfg: PRMTrainConfig = PRMTrainConfig(), *, seed: int = 0,
              progress: bool = True) -> list[float]:
    """Train `model` (an `init_prm`'d policy) in place on {"question", "process", "labels"}; returns losses.

    AdamW, linear warm-up over `warmup_ratio` of the steps then cosine to 0 (MM-PRM's schedule); batches
    drawn without replacement per epoch from a generator seeded by `seed`. Longer-than-max sequences are
    dropped, never truncated (a cut marker would misalign the labels).
    """
    tok = tokenizer_of(processor)
    yes_id, no_id = reward_token_ids(tok)
    init_prm(model, processor)
    encoded = [encode_example(processor, ex["question"], ex["process"], ex["labels"]) for ex in examples]
    encoded = [e for e in encoded if len(e[0]) <= cfg.max_seq_len]
    if not encoded:
        raise ValueError("examples: none to train on (empty, or all longer than max_seq_len)")
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = max(1, round(cfg.warmup_ratio * total))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if s < warmup else
                                              0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    device = next(model.parameters()).device
    losses = []
    bar = tqdm(total=total, desc="prm train", disable=not progress)
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(encoded), generator=gen).tolist()
        for i in range(0, len(order), cfg.batch_size):
            batch = pad_batch([encoded[j] for j in order[i:i + cfg.batch_size]], tok.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss, _ = prm_loss(logits, batch["targets"], yes_id, no_id)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    bar.close()
    model.eval()
    return losses


@torch.no_grad()
def score_processes(prm, processor, items: list[tuple[str, str]], *, batch_size: int = 64) -> list[list[float]]:
    """P(Yes) at every marker of each (question, process) pair; one list per item (empty if no marker)."""
    tok = tokenizer_of(processor)
    yes_id, no_id = reward_token_ids(tok)
    device = next(prm.parameters()).device
    prm.eval()
    out: list[list[float]] = []
    for i in range(0, len(items), batch_size):
        encoded = [encode_example(processor, q, p) for q, p in items[i:i + batch_size]]
        batch = pad_batch(encoded, tok.pad_token_id)
        logits = prm(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        p_yes = torch.softmax(logits[..., [yes_id, no_id]].float(), dim=-1)[..., 0].cpu()  # (B, T)
        at = batch["targets"] != -100
        out += [p_yes[b][at[b]].tolist() for b in range(len(encoded))]
    return out


def score_steps(prm, processor, problem: dict, steps: list[str], *, sep: str = "") -> list[float]:
    """P(Yes) per step of one candidate solution (include the answer as the last step, as MM-PRM does).

    Example: score_steps(prm, tok, problem, ["40*7=280", "7*7=49", "280+49=329", "329"]) -> 4 floats.
    """
    if not steps:
        return []
    scores = score_processes(prm, processor, [(problem["question"], process_for_scoring(steps, sep))])[0]
    assert len(scores) == len(steps), "a step contains the marker text"
    return scores


def calibration(prm, processor, examples: list[dict]) -> list[dict]:
    """Predicted P(Yes) next to the MC label at every marker of `examples`: [{"id", "position", "label", "p_yes"}]."""
    scores = score_processes(prm, processor, [(ex["question"], ex["process"]) for ex in examples])
    return [dict(id=ex.get("id"), position=k, label=y, p_yes=p)
            for ex, s in zip(examples, scores, strict=True) for k, (y, p) in enumerate(zip(ex["labels"], s, strict=True))]
