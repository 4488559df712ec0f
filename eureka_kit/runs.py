"""Public path of run directories (`eureka_kit.runs.open(path)`); they live in `eureka_kit.engine.runs`."""

from eureka_kit.engine.runs import RunDir, open, open_run  # noqa: A004 - `runs.open(path)` reads naturally

__all__ = ["RunDir", "open", "open_run"]
