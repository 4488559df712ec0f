"""Public path of the RL loop (`from eureka_kit.train import train`); it lives in `eureka_kit.engine.loop`.

Importing it also imports the PRM feature, which registers its signal (`engine.signals`), so a PRM preset
(`RunConfig.from_preset("cpgd_prm")`) trains through `train(cfg)` here.
"""

import eureka_kit.prm  # noqa: F401 - registers the PRM signal with the loop's hook
from eureka_kit.engine.loop import VerifierFailure, train
from eureka_kit.engine.runs import Run

__all__ = ["Run", "VerifierFailure", "train"]
