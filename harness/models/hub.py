"""Loading HF models from a local folder or the hub, honouring `HF_HUB_OFFLINE`.

With network (HF_HUB_OFFLINE unset or false) a hub name that is not cached is downloaded. With
HF_HUB_OFFLINE=1 only local folders and the local HF cache are used: `from_pretrained` gets
`local_files_only=True`, and a name that is not on disk fails at once with a message saying how to
provide it, without touching the network.
"""

from __future__ import annotations

import os
from pathlib import Path

_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of a boolean environment variable


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE says hub downloads are off (read at call time, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def pretrained_kwargs() -> dict[str, bool]:
    """Extra `from_pretrained` arguments: `local_files_only=True` only when offline."""
    return {"local_files_only": True} if hub_offline() else {}


def is_local_path(name: str) -> bool:
    """A folder on disk, or a string that can only mean one (absolute, ./, ~, or not of the form owner/name)."""
    p = Path(name).expanduser()
    return p.exists() or p.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1


def check_available(name: str, filename: str = "config.json") -> None:
    """Raise FileNotFoundError now for what cannot load: a missing folder, or (offline) an uncached hub name."""
    p = Path(name).expanduser()
    if p.is_dir():
        if filename != "config.json" and not (p / filename).exists():
            raise FileNotFoundError(f"{filename} not found in {p}")
        return
    if is_local_path(name):
        raise FileNotFoundError(f"model path {p} does not exist")
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, filename), str):
            raise FileNotFoundError(missing_message(name, FileNotFoundError("not in the local HF cache")))


def missing_message(name: str, err: Exception) -> str:
    """Why `name` could not be loaded, and what to do about it."""
    why = f"{type(err).__name__}: {str(err)[:200]}"
    if hub_offline():
        return (f"model {name!r} is not available locally ({why}); HF_HUB_OFFLINE is set, so nothing is "
                f"downloaded: pass a local folder with config.json and weights, or pre-fill the HF cache")
    return (f"model {name!r} is neither a local folder nor loadable from the HF hub ({why}); pass a local "
            f"folder with config.json and weights, or check the name and the network")
