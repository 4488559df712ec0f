"""Public path of the policy losses (`eureka_kit.losses.policy_loss`); they live in `eureka_kit.algos.losses`."""

from eureka_kit.algos.losses import policy_loss

__all__ = ["policy_loss"]
