"""Command lines generated from config dataclasses (tyro), and the `ttt-harness` console entry point.

Why tyro: it builds the parser from the dataclass itself (types, defaults, `Literal` choices) and takes
each option's help from the comment beside the field, so a study's config is the single source of its
options; nested option groups (the shared `RayOptions`) flatten to plain `--address`, `--resume`, ...

    cfg = parse_config(ModelScaling, argv, presets={"paper": PAPER}, doc=__doc__)

A preset is a named instance of the config (`--paper`, `--smoke-test`): it replaces the defaults, and
options given beside it override it field by field. A bad value exits with the config's own message
(a ConfigError naming the option) before any work.

    ttt-harness list                       # the studies, one line each
    ttt-harness model_scaling --sizes 280  # = python studies/model_scaling.py --sizes 280
    ttt-harness report results/            # = python -m dashboards.report results/ (the HTML report)
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from harness.errors import ConfigError

C = TypeVar("C")
STUDIES_DIR = Path(__file__).resolve().parents[1] / "studies"


@dataclasses.dataclass(frozen=True)
class Invocation:
    """How a config came from a command line: the preset it started from and the options given beside it."""

    preset: str  # a preset's name ("paper", "smoke_test") or "default" (the study's embedded default)
    options: tuple[str, ...]  # the command-line arguments given beside the preset


# the configs parse_config returned in this process, by id (each held, so an id is never reused), and their
# invocation: the run record (harness.distributed.study) says which preset a study ran with
_PARSED: dict[int, tuple[Any, Invocation]] = {}


def invocation(cfg: Any) -> Invocation | None:
    """The preset and options `cfg` was parsed from by parse_config in this process (None: built in code)."""
    entry = _PARSED.get(id(cfg))
    return entry[1] if entry is not None and entry[0] is cfg else None


def _preset_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_config(cls: type[C], argv: Sequence[str] | None = None, *, presets: Mapping[str, C] | None = None,
                 default: C | None = None, doc: str | None = None, prog: str | None = None) -> C:
    """Parse `argv` (default sys.argv[1:]) into a `cls` instance, starting from a preset when one is named,
    else from `default` (None: `cls()`)."""
    import tyro

    presets = dict(presets or {})
    args = list(sys.argv[1:] if argv is None else argv)
    named = [p for p in presets if _preset_flag(p) in args]
    if len(named) > 1:
        raise ConfigError(f"choose one preset, got {[_preset_flag(p) for p in named]}")
    base = presets[named[0]] if named else (default if default is not None else cls())
    args = [a for a in args if a not in {_preset_flag(p) for p in presets}]
    lines = [doc.strip() if doc else ""]
    if presets:
        lines.append("presets (give one; options beside it override its values): "
                     + ", ".join(_preset_flag(p) for p in presets))
    if named:
        lines.append(f"defaults shown are those of {_preset_flag(named[0])}")
    try:
        cfg = tyro.cli(tyro.conf.OmitArgPrefixes[cls], default=base, args=args,
                       description="\n\n".join(lines), prog=prog)
    except (ValueError, TypeError) as e:  # a field's own check (ConfigError) or a constructor's
        raise ConfigError(str(e)) from None
    _PARSED[id(cfg)] = (cfg, Invocation(named[0] if named else "default", tuple(args)))
    return cfg


def study_parser(cls: type[C], presets: Mapping[str, C], doc: str | None,
                 default: C | None = None) -> Callable[[Sequence[str] | None], C]:
    """A study's `parse(argv)`: its options from the command line (a preset, then the options beside it)."""

    def parse(argv: Sequence[str] | None = None) -> C:
        return parse_config(cls, argv, presets=presets, default=default, doc=doc)

    parse.__doc__ = f"{cls.__name__} from the command line (presets: {', '.join(map(_preset_flag, presets))})."
    return parse


def run_main(main: Callable[[list[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run a study's main; bad input prints its message (no traceback) and exits 2."""
    try:
        main(None if argv is None else list(argv))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def study_names() -> dict[str, str]:
    """{study name: first line of its docstring} for every script in studies/ (read, not imported)."""
    out = {}
    for path in sorted(STUDIES_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        out[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`ttt-harness list`, `ttt-harness report RESULTS...` or `ttt-harness <study> [options]`."""
    args = list(sys.argv[1:] if argv is None else argv)
    studies = study_names()
    if args and args[0] == "report":  # the presentation layer, imported by name: harness never imports it
        return importlib.import_module("dashboards.report").main(args[1:])
    if not args or args[0] in ("-h", "--help", "list"):
        print("usage: ttt-harness <study> [options]   (ttt-harness <study> --help for its options)\n"
              "       ttt-harness report RESULTS... [--serve]   (the HTML report of study outputs)\n\nstudies:")
        width = max(map(len, studies), default=0)
        for name, line in studies.items():
            print(f"  {name:<{width}}  {line}")
        return 0
    name = args[0].replace("-", "_")
    if name not in studies:
        import difflib

        close = difflib.get_close_matches(name, studies, n=1)
        print(f"error: unknown study {args[0]!r}{f'; did you mean {close[0]!r}?' if close else ''} "
              f"(ttt-harness list shows them)", file=sys.stderr)
        return 2
    if str(STUDIES_DIR.parent) not in sys.path:
        sys.path.insert(0, str(STUDIES_DIR.parent))
    module = importlib.import_module(f"studies.{name}")
    sys.argv = [f"ttt-harness {name}", *args[1:]]
    return run_main(module.main, args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
