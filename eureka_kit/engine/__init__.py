"""The training engine: rollouts, the learner, distributed plumbing, checkpoints, the RL loop, SFT, evaluation.

May import: config, algos, data, models. Never prm or workbench; features plug in through `engine.signals`.
"""
