"""Public path of the advantage estimators (`eureka_kit.advantages.compute`); they live in `eureka_kit.algos.advantages`."""

from eureka_kit.algos.advantages import clip_filter_like_weights, compute, for_config

__all__ = ["clip_filter_like_weights", "compute", "for_config"]
