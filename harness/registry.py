"""Name -> component registries (after lm-evaluation-harness's `Registry`), and the trial kinds.

Register by decorator, refuse duplicate names, suggest the closest name for an unknown one.
Heavy backends stay lazy: register a *factory* that imports inside its body.

Trial kinds: a frozen config dataclass and the pure function config -> result rows, registered by name.

    @register_trial("mnist", MnistTrialConfig, shardable=True)
    def mnist_trial(cfg: MnistTrialConfig, images=None, *, sharding=None, on_epoch=None) -> pl.DataFrame: ...

The sweep layer (`harness.distributed.sweep`) looks a config's kind up by its type, runs `run(cfg, **shared)`
inside a Ray Tune trial, and caches the rows by the config's hash, its input files and the code version.
A config may name the files it reads with `input_files() -> tuple[str, ...]`; a shardable kind's `run`
takes `sharding=` (a ShardingConfig, or None to evaluate in the trial's own process).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of components of one kind (datasets, retrievers, engines, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._entries))})"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class TrialKind:
    name: str
    config: type  # a frozen dataclass, validated in __post_init__
    run: Callable[..., Any]  # run(cfg, **shared) -> rows of the shared schema (a polars DataFrame)
    shardable: bool = False  # run takes sharding= (head-TTT evaluation over Ray Data actors)


TRIALS: Registry[TrialKind] = Registry("trial kind")
_BY_CONFIG: dict[type, TrialKind] = {}


def register_trial(name: str, config: type, *, shardable: bool = False) -> Callable[[F], F]:
    """Register `run` as the trial function of `config` under `name` (duplicates refused)."""
    if not (dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise TypeError(f"trial config {config.__name__} must be a frozen dataclass")

    def decorator(run: F) -> F:
        kind = TrialKind(name, config, run, shardable)
        TRIALS.register(name)(kind)
        _BY_CONFIG[config] = kind
        return run

    return decorator


def trial_kind(cfg: Any) -> TrialKind:
    """The registered kind of a trial config instance."""
    kind = _BY_CONFIG.get(type(cfg))
    if kind is None:
        from harness.errors import ConfigError

        raise ConfigError(f"{type(cfg).__name__} is not a registered trial config (known: {TRIALS.names()})")
    return kind


def input_files(cfg: Any) -> tuple[str, ...]:
    """The files a trial config reads (its `input_files()`), or () when it reads none."""
    method = getattr(cfg, "input_files", None)
    return tuple(method()) if method is not None else ()
