"""Algorithm self-check: every preset on one synthetic off-policy batch, with its identities verified.

`eureka-kit selfcheck` prints one row per preset: the slots it uses, its loss, clip fractions, and
whether (a) at r = 1 its gradient is -A * grad(logp) times the aggregation weight (times `ON_POLICY_FACTOR`
where an objective rescales or detaches tokens by design: luspo, clip_cov), (b) masked tokens get zero gradient.
Takes a second on a CPU; a quick way to see the library is sound on a new machine.
"""

from __future__ import annotations

import torch

from eureka_kit.algos import advantages, losses
from eureka_kit.config import PRESETS, RunConfig


def _batch(seed: int = 0, num_groups: int = 4, group_size: int = 4, length: int = 6):
    gen = torch.Generator().manual_seed(seed)
    batch = num_groups * group_size
    rewards = torch.randint(0, 2, (batch,), generator=gen).float()
    lengths = torch.randint(2, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    old_logp = -torch.rand(batch, length, generator=gen) * 3
    drifted = old_logp + 0.4 * torch.randn(batch, length, generator=gen)
    return rewards, mask, old_logp, drifted


def _aggregation_weights(mask: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
    """d aggregate(x) / d x for a per-token x: the weight each token gets under cfg.aggregation."""
    x = torch.zeros_like(mask, requires_grad=True)
    losses.aggregate(x, mask, cfg.aggregation, group_size=cfg.group_size, max_len=cfg.max_len).backward()
    return x.grad


# The on-policy (r = 1) gradient is -A * grad(logp) * the aggregation weight * a per-token factor, 1 unless an
# objective rescales or detaches tokens by design: surrogate -> factor(mask, surrogate info) ([B, T] or [B, 1]).
ON_POLICY_FACTOR = {
    "luspo": lambda mask, info: mask.sum(dim=1, keepdim=True),  # each response's loss times its length
    "clip_cov": lambda mask, info: 1.0 - info["cov_selected"].to(mask.dtype),  # the drawn tokens are detached
}


def check_preset(name: str, seed: int = 0) -> dict[str, object]:
    rewards, mask, old_logp, drifted = _batch(seed)
    cfg = RunConfig.from_preset(name, group_size=4, max_len=32)
    lengths = mask.sum(dim=1)
    adv = advantages.compute(rewards, cfg.group_size, cfg.advantage_estimator, std_eps=cfg.std_eps, lengths=lengths)
    ref = old_logp if cfg.kl_coef > 0 else None

    # (a) on-policy: r = 1, ref = old => drift and KL gradients vanish, so grad = -A * weight (* s/|y| for GSPO).
    logp = old_logp.clone().requires_grad_()
    loss, _ = losses.policy_loss(logp, old_logp, adv, mask, cfg=cfg, ref_logp=ref)
    loss.backward()
    # GSPO and GMPO too: their 1/|y_k| gradient factor equals seq-mean-token-mean's own token weight.
    fmask, logp_v, _, log_ratio, adv_t = losses.masked_inputs(logp.detach(), old_logp, adv, mask)
    _, info = losses.surrogate(log_ratio, adv_t, fmask, cfg, logp=logp_v)
    factor = ON_POLICY_FACTOR.get(cfg.surrogate, lambda mask, info: 1.0)(mask, info)
    expected = -adv[:, None] * _aggregation_weights(mask, cfg) * factor
    on_policy_ok = torch.allclose(logp.grad * mask, expected * mask, atol=1e-6)

    # (b) off-policy batch: loss, clip fractions, zero gradient on padding.
    logp = drifted.clone().requires_grad_()
    loss, stats = losses.policy_loss(logp, old_logp, adv, mask, cfg=cfg, ref_logp=ref)
    loss.backward()
    padding_ok = bool((logp.grad[mask == 0] == 0).all())
    return {
        "preset": name,
        "estimator": cfg.advantage_estimator,
        "surrogate": cfg.surrogate + (f"+dual{cfg.dual_clip:g}" if cfg.dual_clip else ""),
        "drift": cfg.drift_coef,
        "kl": cfg.kl_coef,
        "aggregation": cfg.aggregation,
        "loss": loss.item(),
        "clip_low": stats["policy/clipfrac_low"],
        "clip_high": stats["policy/clipfrac_high"],
        "ok": on_policy_ok and padding_ok and bool(torch.isfinite(logp.grad).all()),
    }


def run(seed: int = 0) -> list[dict[str, object]]:
    return [check_preset(name, seed) for name in PRESETS]


def main(seed: int = 0) -> int:
    from rich.console import Console
    from rich.table import Table

    rows = run(seed)
    table = Table(title="eureka_kit algorithm self-check (synthetic off-policy batch, 4 groups x 4)")
    for column in rows[0]:
        table.add_column(column, justify="right" if column in ("loss", "clip_low", "clip_high", "drift", "kl") else "left")
    for row in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else ("PASS" if v is True else "FAIL" if v is False else str(v))
                        for v in row.values()])
    Console(width=160).print(table)
    failed = [r["preset"] for r in rows if not r["ok"]]
    print(f"selfcheck: {len(rows) - len(failed)}/{len(rows)} presets pass" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
