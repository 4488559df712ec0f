"""Validation of notebook parameters: one call at the top of each notebook, one clear error for a bad value.

papermill injects parameters as plain Python literals (`-p presets grpo,cpgd` arrives as the string
"grpo,cpgd"), so list parameters accept a list or a comma-separated string. Each rule is a small function
`rule(name, value) -> normalised value` that raises `NotebookParameterError` naming the parameter, the
allowed values and what it got.

    from eureka_kit.workbench import notebook_params as P
    p = P.validate(dict(num_steps=num_steps, presets=presets),
                   num_steps=P.positive_int, presets=P.choices(PRESETS))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

Rule = Callable[[str, Any], Any]


class NotebookParameterError(ValueError):
    """A notebook parameter is invalid; the message names the parameter and the allowed values."""


def _fail(name: str, what: str, value: Any) -> None:
    raise NotebookParameterError(f"parameter {name!r}: {what}, got {value!r}")


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _fail(name, "must be a positive integer", value)
    return value


def non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        _fail(name, "must be an integer >= 0", value)
    return value


def positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        _fail(name, "must be a number > 0", value)
    return float(value)


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(name, "must be True or False", value)
    return value


def as_list(value: Any) -> list:
    """A list/tuple as a list; a string as its comma-separated items; a scalar as a one-item list."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def choice(allowed: Iterable[str]) -> Rule:
    allowed = tuple(allowed)

    def rule(name: str, value: Any) -> str:
        if value not in allowed:
            _fail(name, f"must be one of {', '.join(map(str, allowed))}", value)
        return value

    return rule


def choices(allowed: Iterable[str], *, min_items: int = 1) -> Rule:
    """A non-empty list (or comma string) whose items are all in `allowed`, without duplicates."""
    allowed = tuple(allowed)

    def rule(name: str, value: Any) -> list[str]:
        items = as_list(value)
        bad = [v for v in items if v not in allowed]
        if bad:
            _fail(name, f"unknown item(s) {bad}; allowed: {', '.join(map(str, allowed))}", value)
        if len(items) < min_items:
            _fail(name, f"needs at least {min_items} item(s)", value)
        if len(set(items)) != len(items):
            _fail(name, "has duplicate items", value)
        return items

    return rule


def int_list(name: str, value: Any) -> list[int]:
    """A non-empty list of integers >= 0 (seeds); "0,1,2" is accepted."""
    items = as_list(value)
    try:
        out = [int(v) for v in items]
    except (TypeError, ValueError):
        _fail(name, "must be a list of integers (or a comma-separated string)", value)
    if not out or any(v < 0 for v in out) or any(isinstance(v, bool) for v in items):
        _fail(name, "must be a non-empty list of integers >= 0", value)
    return out


def model_name(name: str, value: Any) -> str:
    """'toy' or a local folder holding a transformers model (config.json)."""
    if value == "toy":
        return value
    if not isinstance(value, str) or not os.path.isfile(os.path.join(os.path.expanduser(value), "config.json")):
        _fail(name, "must be 'toy' or a local model folder containing config.json", value)
    return value


def optional_dir(name: str, value: Any) -> str | None:
    """None or an existing local folder (a dataset)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not os.path.isdir(os.path.expanduser(value)):
        _fail(name, "must be None or an existing local folder", value)
    return value


def output_dir(name: str, value: Any) -> str:
    """A non-empty path string: the folder that runs are written under (created when missing)."""
    if not isinstance(value, str) or not value.strip():
        _fail(name, "must be a non-empty folder path (created if missing)", value)
    return value


def validate(params: dict[str, Any], **rules: Rule) -> dict[str, Any]:
    """Apply `rules[name]` to `params[name]`; return the normalised parameters (unruled ones unchanged).

    Raises NotebookParameterError for the first bad value, or when a rule names a missing parameter.
    """
    missing = sorted(set(rules) - set(params))
    if missing:
        raise NotebookParameterError(f"parameters {missing}: have rules but were not passed to validate()")
    out = dict(params)
    for name, rule in rules.items():
        out[name] = rule(name, params[name])
    return out
