"""The package version; a module of its own so that any layer may read it (it keys the cached toy models)."""

__version__ = "0.1.0"
