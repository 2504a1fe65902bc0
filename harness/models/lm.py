"""Causal-LM loading: a local HF folder, a Qwen2.5 size label or hub name, or a GGUF file in a folder.

Hub names download unless HF_HUB_OFFLINE=1 (then only folders and the local HF cache are used; see
harness.models.hub). GGUF files need the `gguf` package (`pip install gguf`, in the `lm` extra);
transformers dequantises them to the requested dtype. LoRA adapters for TTT are harness.models.lora
(stacked, for the batched engine) or peft (harness.ttt.lora).
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness.models.hub import check_available, hub_offline, is_local_path, missing_message, pretrained_kwargs

QWEN25_SIZES: dict[str, str] = {  # S3 sweep: size label -> HF name
    "0.5B": "Qwen/Qwen2.5-0.5B",
    "1.5B": "Qwen/Qwen2.5-1.5B",
    "3B": "Qwen/Qwen2.5-3B",
    "7B": "Qwen/Qwen2.5-7B",
    "14B": "Qwen/Qwen2.5-14B",
    "32B": "Qwen/Qwen2.5-32B",
}


def resolve_model_name(name_or_path: str) -> str:
    """A size label ("0.5B") -> its Qwen2.5 name; anything else unchanged."""
    return QWEN25_SIZES.get(name_or_path, name_or_path)


def unloadable_reason(name_or_path: str) -> str | None:
    """Why `name_or_path` cannot load as a causal LM, found without loading or downloading anything; None if it may.

    A Qwen2.5 size label may load (its weights may be cached on the nodes that load it); a folder must hold
    config.json; a hub name (owner/name) may load, except with HF_HUB_OFFLINE set when the local HF cache
    lacks it; anything else names a folder that does not exist."""
    if name_or_path in QWEN25_SIZES:
        return None
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return None if (folder / "config.json").exists() else f"the folder {folder} holds no config.json"
    if is_local_path(name_or_path):
        return f"no folder {folder} exists, and it is no Qwen2.5 size label"
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
            return "HF_HUB_OFFLINE is set and the local HF cache does not hold it"
    return None


def load_tokenizer(name_or_path: str, gguf_file: str | None = None):
    """The tokenizer of a model named as for load_causal_lm."""
    from transformers import AutoTokenizer

    name = resolve_model_name(name_or_path)
    check_available(name, gguf_file or "config.json")
    try:
        return AutoTokenizer.from_pretrained(name, gguf_file=gguf_file, **pretrained_kwargs())
    except OSError as e:
        raise FileNotFoundError(missing_message(name, e)) from None


def load_causal_lm(name_or_path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                   gguf_file: str | None = None, device_map: str | None = None):
    """Load a causal LM (eval mode, base weights frozen) with SDPA attention.

    name_or_path: a local folder, a size label of QWEN25_SIZES, or a hub name.
    gguf_file: a GGUF file name inside the folder (dequantised to `dtype` by transformers + `gguf`).
    device_map: e.g. "auto" to spread a large model (14B, 32B) over all visible GPUs.
    """
    from transformers import AutoModelForCausalLM

    name = resolve_model_name(name_or_path)
    check_available(name, gguf_file or "config.json")
    kwargs = dict(dtype=dtype, attn_implementation="sdpa", **pretrained_kwargs())
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if device_map:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except OSError as e:
        raise FileNotFoundError(missing_message(name, e)) from None
    if not device_map:
        model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Parameter count (tied weights once): the `model_size` of S3's result rows."""
    return int(sum(p.numel() for p in model.parameters()))
