"""The one error type for bad input: a config field, an option or an input file that cannot work.

A `ConfigError` names what is wrong (the field, option or file) and what is allowed. It is raised
before long work wherever the check can run early; raised inside a Ray Tune trial it ends that trial
without a retry (a retry would fail the same way), unlike a crash, which is retried.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input: a config field out of range, an unknown name, an unreadable or inconsistent file."""


# Errors that no retry can cure: the same input fails the same way again.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, KeyError)
