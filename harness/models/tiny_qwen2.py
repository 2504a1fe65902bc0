"""An offline stand-in LM for tests, smoke runs and the demo: a tiny random-weight Qwen2 and its tokenizer.

Nothing here downloads: the byte-level BPE tokenizer is trained on the given texts with `tokenizers`
(which comes with transformers), the model is a random-weight `Qwen2ForCausalLM` saved with
`save_pretrained`, so the real loading path (harness.models.lm) is exercised. The matching generated
text is harness.data.text.topical_corpus.
"""

from __future__ import annotations

import os
from pathlib import Path

EOS = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int = 400):
    """Byte-level BPE trained on `texts` (any UTF-8 text encodes), wrapped as PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def make_tiny_qwen2(out_dir: str | os.PathLike, texts: list[str], hidden: int = 32, layers: int = 2,
                    heads: int = 4, kv_heads: int = 2, intermediate: int = 64, vocab_size: int = 400,
                    seed: int = 0) -> Path:
    """Save a random-weight Qwen2ForCausalLM and its tokenizer to out_dir; return the folder."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(texts, vocab_size)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         intermediate_size=intermediate, max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def pretrain_globally(model, tokenizer, texts: list[str], steps: int = 150, lr: float = 3e-3,
                      batch: int = 8, max_tokens: int = 128, seed: int = 0) -> list[float]:
    """A short full-parameter AdamW run on `texts`: the demo's "globally trained" model. -> losses."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens] for t in texts]
    ids = [x for x in ids if len(x) >= 2]
    model.requires_grad_(True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        pick = torch.randint(len(ids), (batch,), generator=g).tolist()
        t = min(len(ids[i]) for i in pick)
        x = torch.tensor([ids[i][:t] for i in pick])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    model.requires_grad_(False)
    return losses
