"""Training and evaluation data: the toy world, MMK12 from a local folder, prompt templates, rule-based rewards.

May import: `eureka_kit.config` (never the algorithms, models, engine or anything above).
"""
