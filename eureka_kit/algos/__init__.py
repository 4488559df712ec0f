"""The algorithms as pure math on tensors: advantages, policy losses, filters, log-prob ops, diagnostics.

May import: `eureka_kit.config` only (and torch/numpy). Nothing here knows about models, data or runs.
"""
