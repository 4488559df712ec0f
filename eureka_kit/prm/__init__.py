"""The process-reward feature: step parsing, PRM data and model, best-of-N, and the PRM training signal.

May import: config, algos, data, models, engine. It plugs into the loop by registering a signal (`engine.signals`).
"""

from eureka_kit.prm import process_adv  # noqa: F401 - registers the PRM signal with the loop's hook
