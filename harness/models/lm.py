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

# The Qwen2.5 base models' shapes (their config.json on the hub): enough to build a random-weight model of the
# real size on any device, or an empty one on the meta device to count parameters, without a download.
# Parameter counts (tied embeddings once): 494,032,768 / 1,543,714,304 / 3,085,938,688 / 7,615,616,512 /
# 14,770,033,664 / 32,763,876,352.
_SMALL = dict(vocab_size=151_936, tie_word_embeddings=True, max_position_embeddings=32_768)
_LARGE = dict(vocab_size=152_064, tie_word_embeddings=False, max_position_embeddings=131_072)
QWEN25_SHAPES: dict[str, dict[str, int | bool | float]] = {  # size label -> Qwen2Config fields
    "0.5B": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, **_SMALL),
    "1.5B": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, **_SMALL),
    "3B": dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
               intermediate_size=11008, **_SMALL),
    "7B": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
               intermediate_size=18944, **_LARGE),
    "14B": dict(hidden_size=5120, num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8,
                intermediate_size=13824, **_LARGE),
    "32B": dict(hidden_size=5120, num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8,
                intermediate_size=27648, **_LARGE),
}
for _shape in QWEN25_SHAPES.values():
    _shape.update(rope_theta=1_000_000.0, rms_norm_eps=1e-6)  # the same in every Qwen2.5 base config


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


def qwen25_config(label: str):
    """The Qwen2Config of a Qwen2.5 size label (QWEN25_SHAPES), SDPA attention; KeyError naming the labels."""
    from transformers import Qwen2Config

    if label not in QWEN25_SHAPES:
        raise KeyError(f"no Qwen2.5 shape {label!r}; known: {', '.join(QWEN25_SHAPES)}")
    config = Qwen2Config(**QWEN25_SHAPES[label])
    config._attn_implementation = "sdpa"
    return config


def model_config(name_or_path: str):
    """The model's config without loading weights: a Qwen2.5 size label or its hub name from QWEN25_SHAPES, a
    folder's config.json, else (a hub name) from the hub or the HF cache. ValueError when it cannot be read."""
    from transformers import AutoConfig

    label = {v: k for k, v in QWEN25_SIZES.items()}.get(name_or_path, name_or_path)
    if label in QWEN25_SHAPES:
        return qwen25_config(label)
    try:
        return AutoConfig.from_pretrained(name_or_path, **pretrained_kwargs())
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read the config of {name_or_path!r}: {type(e).__name__}: {str(e)[:200]}") from None


def model_skeleton(name_or_path: str) -> torch.nn.Module:
    """The causal LM with every tensor on the meta device (no memory, no weights read): its module names and
    parameter shapes, e.g. to check LoRA targets or count parameters before any work."""
    from transformers import AutoModelForCausalLM

    config = model_config(name_or_path)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def random_qwen25(label: str, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                  seed: int = 0, device_map: str | None = None) -> torch.nn.Module:
    """A random-weight Qwen2ForCausalLM of the real Qwen2.5 shape `label`, built in `dtype` on `device` (no
    download; for benchmarks: the speed of a step does not depend on the weights' values). Eval mode, frozen.

    device_map="auto" spreads it over every visible GPU as load_causal_lm(device_map="auto") does (accelerate's
    balanced map of whole decoder layers, hooks moving the activations between GPUs), e.g. 32B on 2 GPUs: the
    weights are drawn on their own GPU (N(0, 0.02), norms 1), never held whole anywhere."""
    from transformers import Qwen2ForCausalLM

    config = qwen25_config(label)
    torch.manual_seed(seed)
    if device_map is not None:
        return _spread_random(Qwen2ForCausalLM, config, dtype, device_map)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built directly in dtype: no fp32 copy of a 7B / 32B model first
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(before)
    model.eval()
    model.requires_grad_(False)
    return model


def _spread_random(model_cls: type, config, dtype: torch.dtype, device_map: str) -> torch.nn.Module:
    """model_cls(config) with random weights placed by accelerate's `device_map` over the visible GPUs."""
    from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
    from accelerate.utils import get_balanced_memory, set_module_tensor_to_device

    with init_empty_weights():  # parameters on the meta device, buffers (rotary frequencies) real
        model = model_cls(config).to(dtype)
    no_split = list(model._no_split_modules)
    memory = get_balanced_memory(model, dtype=dtype, no_split_module_classes=no_split) if device_map == "auto" else None
    placement = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split, dtype=dtype)
    for name, param in list(model.named_parameters()):
        owner = max((m for m in placement if m == "" or name == m or name.startswith(m + ".")), key=len)
        value = torch.empty(param.shape, dtype=dtype, device=placement[owner])
        value.fill_(1.0) if "norm" in name else value.normal_(0.0, 0.02)
        set_module_tensor_to_device(model, name, placement[owner], value=value)
    model = dispatch_model(model, device_map=placement)
    model.eval()
    model.requires_grad_(False)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Parameter count (tied weights once): the `model_size` of S3's result rows."""
    return int(sum(p.numel() for p in model.parameters()))
