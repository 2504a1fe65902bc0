"""The one error type for bad input: a config field, an option or an input file that cannot work.

A `ConfigError` names what is wrong (the field, option or file) and what is allowed. It is raised
before long work wherever the check can run early; raised inside a Ray Tune trial it ends that trial
without a retry (a retry would fail the same way), unlike a crash, which is retried.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input: a config field out of range, an unknown name, an unreadable or inconsistent file."""


class DivergedError(ConfigError):
    """A trial's training or TTT diverged under its hyperparameters (NaN or infinite logits): bad input in a grid
    (its options must change), but in a hyperparameter search the worst outcome of that point of the space, which
    the searcher is told as such (harness/distributed/sweep.py) instead of the search being ended."""


# Errors that no retry can cure: the same input fails the same way again.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, KeyError)
