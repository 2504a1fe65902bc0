"""Check a Ray cluster launcher YAML (cluster.yaml, cluster.local.yaml) before `ray up` starts anything.

`ray submit cluster.yaml studies/x.py` copies only the script, so every node must get the project
from the YAML itself: a file mount of the checkout and a setup command that pip-installs it. This
checks that, the type of every section (`provider: aws` is a string where a mapping belongs), the keys
the launcher needs for the provider (AWS region, local head_ip, ...), the node types, and finally Ray's own
JSON schema. Every problem is reported at once, each naming its key.

    python -m harness.distributed.cluster check cluster.yaml cluster.local.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

PROVIDER_KEYS = {"aws": ("region",), "gcp": ("region", "project_id"), "azure": ("location", "resource_group"),
                 "local": ("head_ip",)}
START_KEYS = ("head_start_ray_commands", "worker_start_ray_commands")
PROJECT_MARKER = "pyproject.toml"  # what a mounted checkout of this project holds
COMMANDS = "a list of shell commands"
SECTION_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {  # top-level key -> (its type, how to write it)
    "cluster_name": (str, "a string"),
    "provider": (dict, "a mapping (type: aws, region: ..., or type: local, head_ip: ...)"),
    "auth": (dict, "a mapping (ssh_user: ...)"),
    "file_mounts": (dict, "a mapping of remote path: local path"),
    "available_node_types": (dict, "a mapping of node type name: {node_config, min_workers, max_workers}"),
    "head_node_type": (str, "a node type name"),
    "docker": (dict, "a mapping (image: ..., container_name: ...)"),
    "max_workers": (int, "an integer"),
    "idle_timeout_minutes": ((int, float), "a number"),
    "upscaling_speed": ((int, float), "a number"),
    "rsync_exclude": (list, "a list of patterns"),
    "rsync_filter": (list, "a list of file names"),
    "cluster_synced_files": (list, "a list of paths"),
    **{key: (list, COMMANDS) for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                                         "worker_setup_commands", *START_KEYS)},
}
NODE_TYPE_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "node_config": (dict, "a mapping (the provider's instance settings; {} for none)"),
    "resources": (dict, "a mapping of resource name: amount"),
    "min_workers": (int, "an integer"),
    "max_workers": (int, "an integer"),
}


def _type_problem(key: str, value: Any, types: type | tuple[type, ...], what: str) -> str | None:
    """'key must be <what>, got <type> <value>' when value has another type (None, an empty YAML entry, passes;
    no key takes a YAML boolean, which Python counts as an int)."""
    if value is None or (isinstance(value, types) and not isinstance(value, bool)):
        return None
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return f"{key} must be {what}, got {type(value).__name__} {shown}"


def section_type_problems(config: dict) -> dict[str, str]:
    """Top-level key -> why its value has the wrong type (the other checks then skip that key)."""
    found = {key: _type_problem(key, config.get(key), *SECTION_TYPES[key]) for key in SECTION_TYPES if key in config}
    return {key: why for key, why in found.items() if why is not None}


def cluster_config_problems(config: Any, base_dir: Path) -> list[str]:
    """Every problem found in a parsed cluster YAML, each naming its key; [] when it looks launchable."""
    if not isinstance(config, dict):
        return [f"the file must hold a YAML mapping, got {type(config).__name__}"]
    wrong = section_type_problems(config)
    problems = list(wrong.values())
    config = {k: v for k, v in config.items() if k not in wrong}  # checked no further: their type is named
    for key in ("cluster_name", "provider", "auth", "setup_commands", "file_mounts", *START_KEYS):
        if key not in config and key not in wrong:
            problems.append(f"{key} is missing")
    provider = config.get("provider") or {}
    ptype = provider.get("type")
    if "provider" in config and (not isinstance(ptype, str) or ptype not in PROVIDER_KEYS):
        problems.append(f"provider.type must be one of {sorted(PROVIDER_KEYS)}, got {ptype!r}")
    required = PROVIDER_KEYS.get(ptype, ()) if isinstance(ptype, str) else ()  # YAML of another type names none
    for key in required:
        if not provider.get(key):
            problems.append(f"provider.{key} is missing (required for provider.type {ptype!r})")
    if ptype == "local" and not isinstance(provider.get("worker_ips", []), list):
        problems.append("provider.worker_ips must be a list of addresses")
    if "auth" in config and not (config.get("auth") or {}).get("ssh_user"):
        problems.append("auth.ssh_user is missing")

    node_types = config.get("available_node_types")
    if ptype == "local":  # the launcher derives the node types from head_ip / worker_ips
        if node_types is not None:
            problems.append("available_node_types is not supported for provider.type 'local' (list hosts in "
                            "provider.head_ip / provider.worker_ips instead)")
    elif "available_node_types" in wrong:
        pass
    elif not isinstance(node_types, dict) or not node_types:
        problems.append("available_node_types is missing or empty")
    else:
        head = config.get("head_node_type")
        if "head_node_type" not in wrong and head not in node_types:
            problems.append(f"head_node_type {head!r} is not one of available_node_types {sorted(node_types)}")
        for name, spec in node_types.items():
            spec = {} if spec is None else spec
            why = _type_problem(f"available_node_types.{name}", spec, dict,
                                "a mapping (node_config, min_workers, max_workers)")
            if why is not None:
                problems.append(why)
                continue
            field_types = {k: _type_problem(f"available_node_types.{name}.{k}", spec.get(k), *t)
                           for k, t in NODE_TYPE_TYPES.items()}
            problems += [why for why in field_types.values() if why is not None]
            if "node_config" not in spec:
                problems.append(f"available_node_types.{name}.node_config is missing")
            lo, hi = spec.get("min_workers", 0), spec.get("max_workers", 0)
            if field_types["min_workers"] is None and field_types["max_workers"] is None and not (
                    isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi):
                problems.append(f"available_node_types.{name}: need 0 <= min_workers <= max_workers, got {lo} and {hi}")

    mounts = config.get("file_mounts") or {}
    project_mounts, project_dirs = [], []
    for remote, local in mounts.items():
        path = Path(str(local)).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.exists():
            problems.append(f"file_mounts[{remote!r}]: local path {local!r} does not exist (relative to {base_dir})")
        elif (path / PROJECT_MARKER).exists():
            project_mounts.append(str(remote))
            project_dirs.append(path)
    for pattern in config.get("rsync_exclude") or []:  # rsync matches an unanchored name at any depth
        pattern = str(pattern)
        tops = [t for d in project_dirs for t in d.iterdir() if t.is_dir() and not t.name.startswith(".")]
        hits = [str(p.relative_to(t.parent)) for t in tops if "/" not in pattern for p in t.rglob(pattern)]
        if hits:
            problems.append(f"rsync_exclude {pattern!r} also drops {hits[0]} from the mounted project; "
                            f"anchor it as '/{pattern}'")
    if "file_mounts" in config and not project_mounts:
        problems.append("file_mounts must mount the project checkout (a folder holding pyproject.toml) on every node")
    setup = [str(c) for c in config.get("setup_commands") or []]
    if (project_mounts and "setup_commands" not in wrong
            and not any("pip install" in c and any(m in c for m in project_mounts) for c in setup)):
        problems.append(f"setup_commands must pip-install the mounted project ({project_mounts[0]}) on every node: "
                        "ray submit copies only the script")
    for key in START_KEYS:
        if key in config and not any("ray start" in str(c) for c in config.get(key) or []):
            problems.append(f"{key} must run `ray start`")
    if not problems:  # the launcher's own schema, once ours passes (it reports one problem at a time)
        try:
            from ray.autoscaler._private.util import prepare_config, validate_config

            validate_config(prepare_config(config))  # the launcher's defaults merged in, as `ray up` does
        except ImportError:
            pass
        except Exception as err:  # jsonschema.ValidationError / ValueError
            problems.append(f"Ray's cluster schema: {str(err).splitlines()[0]}")
    return problems


def check_cluster_yaml(path: str | Path) -> dict:
    """Parse and check a cluster YAML; return the config, or raise ValueError listing every problem."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cluster config {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    problems = cluster_config_problems(config, path.resolve().parent)
    if problems:
        raise ValueError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    return config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["check"])
    p.add_argument("paths", nargs="+", help="cluster YAML files")
    a = p.parse_args(argv)
    failed = 0
    for path in a.paths:
        try:
            config = check_cluster_yaml(path)
            nodes = sorted(config.get("available_node_types") or [config["provider"].get("head_ip")])
            print(f"{path}: ok ({config['provider']['type']} provider, nodes {nodes})")
        except (ValueError, FileNotFoundError) as err:
            print(err, file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
