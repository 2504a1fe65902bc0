"""Causal-LM loading: a local HF folder, a hub name already in the local cache, or a GGUF file.

No hub downloads are attempted (`local_files_only=True`): a name that is not on disk fails with a
message that says how to provide it.
"""

from __future__ import annotations

from pathlib import Path

import torch

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


def load_tokenizer(name_or_path: str, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    name = resolve_model_name(name_or_path)
    _check_exists(name, gguf_file)
    try:
        tok = AutoTokenizer.from_pretrained(name, gguf_file=gguf_file, local_files_only=True)
    except OSError as e:
        raise FileNotFoundError(_missing_message(name, e)) from None
    return tok


def load_causal_lm(name_or_path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                   gguf_file: str | None = None, device_map: str | None = None):
    """Load a causal LM (eval mode, base weights frozen) with SDPA attention.

    name_or_path: a local folder, a size label of QWEN25_SIZES, or a cached hub name.
    gguf_file: a GGUF file name inside the folder (dequantised to `dtype` by transformers + `gguf`).
    device_map: e.g. "auto" to spread a large model (14B, 32B) over all visible GPUs.
    """
    from transformers import AutoModelForCausalLM

    name = resolve_model_name(name_or_path)
    _check_exists(name, gguf_file)
    kwargs = dict(dtype=dtype, local_files_only=True, attn_implementation="sdpa")
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if device_map:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except OSError as e:
        raise FileNotFoundError(_missing_message(name, e)) from None
    if not device_map:
        model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))



def _check_exists(name: str, gguf_file: str | None) -> None:
    """Fail fast, without touching the network, when neither a folder nor a cached hub copy exists."""
    p = Path(name).expanduser()
    if p.is_dir():
        if gguf_file and not (p / gguf_file).exists():
            raise FileNotFoundError(f"GGUF file {gguf_file} not found in {p}")
        return
    if p.is_absolute() or name.startswith(".") or name.count("/") != 1:
        raise FileNotFoundError(f"model path {p} does not exist")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, gguf_file or "config.json")
    if not isinstance(cached, str):
        raise FileNotFoundError(_missing_message(name, FileNotFoundError("not in the local HF cache")))


def _missing_message(name: str, err: Exception) -> str:
    return (f"model {name!r} is not available locally ({type(err).__name__}: {str(err)[:200]}); "
            f"hub downloads are off: pass a local folder with config.json and weights, or pre-fill the HF cache")
