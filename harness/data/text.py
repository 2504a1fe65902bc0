"""Text corpora: Pile-format JSONL (optionally .zst), plain text, HF `datasets` saved to disk; a generated
topical corpus for tests and smoke runs. Texts are kept as they are, newlines and indentation included (code
and LaTeX depend on them); S3 retrieves whole documents and the TTT engine cuts them into token chunks.

A Pile line is `{"text": "...", "meta": {"pile_set_name": "..."}}`. Readers return a `Corpus`:
the texts, their subset names, where each text starts in its file (`Corpus.where(i)`: its line or row, so an
error about one text can name it), and the lines that were skipped (their line numbers): corrupt lines, and
blank texts (empty or whitespace only: nothing to retrieve, nothing to score), so a corrupt shard never
silently shrinks the study. `skipped_summary` says what was skipped (studies print it); `require_text`
refuses a corpus left with no text, naming its file.

Optional packages: `zstandard` for .zst files, `datasets` for HF dataset folders (`pip install datasets`,
in the `lm` extra); each is imported only by the reader that needs it.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from harness.errors import ConfigError


class CorruptLineError(ValueError):
    """A JSONL line that is not a JSON object with a string `text` field."""


@dataclasses.dataclass
class Corpus:
    texts: list[str]
    subsets: list[str]  # Pile `meta.pile_set_name` per text ("" when absent)
    skipped_lines: list[int] = dataclasses.field(default_factory=list)  # 1-based numbers of corrupt lines
    source: str = ""
    blank_lines: list[int] = dataclasses.field(default_factory=list)  # 1-based numbers of blank texts (skipped)
    lines: list[int] = dataclasses.field(default_factory=list)  # 1-based line (HF dataset: row) where each text starts

    def __len__(self) -> int:
        return len(self.texts)

    def where(self, i: int) -> str:
        """Where text i is in its file, for messages: "line 13" (a HF dataset folder: "row 13")."""
        unit = "row" if Path(self.source).is_dir() else "line"
        return f"{unit} {self.lines[i]}" if i < len(self.lines) else f"text {i + 1}"


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".zst":
        import zstandard

        raw = open(path, "rb")
        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.TextIOWrapper(reader, encoding="utf-8", errors="strict")
    return open(path, encoding="utf-8")


def iter_jsonl(path: str | os.PathLike, on_error: str = "skip") -> Iterator[tuple[int, str, str] | int]:
    """Yield (line_no, text, subset) per good line; for a bad line yield its line_no (on_error="skip")
    or raise CorruptLineError naming file and line (on_error="raise"). Blank lines are ignored."""
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    with _open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text = row["text"]
                if not isinstance(text, str):
                    raise TypeError(f"'text' is {type(text).__name__}, not str")
                meta = row.get("meta") or {}
                subset = meta.get("pile_set_name", "") if isinstance(meta, dict) else ""
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                if on_error == "raise":
                    raise CorruptLineError(f"{path}: line {line_no} is not a Pile JSON record ({e})") from None
                yield line_no
                continue
            yield line_no, text, subset


def read_jsonl(path: str | os.PathLike, on_error: str = "skip", limit: int | None = None) -> Corpus:
    """Read a Pile-format .jsonl or .jsonl.zst file; `limit` stops after that many good texts.

    A blank text (empty or whitespace only) is skipped and its line number recorded in `blank_lines`."""
    corpus = Corpus([], [], [], source=str(path))
    for item in iter_jsonl(path, on_error):
        if isinstance(item, int):
            corpus.skipped_lines.append(item)
            continue
        line_no, text, subset = item
        if not text.strip():
            corpus.blank_lines.append(line_no)
            continue
        corpus.texts.append(text)
        corpus.subsets.append(subset)
        corpus.lines.append(line_no)
        if limit is not None and len(corpus.texts) >= limit:
            break
    return corpus


def read_hf_dataset(path: str | os.PathLike, split: str | None = None, text_field: str = "text",
                    on_error: str = "skip", limit: int | None = None) -> Corpus:
    """Read a HF `datasets` dataset saved with `save_to_disk` (needs the `datasets` package).

    Like `read_jsonl`: a row whose text is not a string (null) is skipped and its 1-based row number
    recorded in `skipped_lines` (on_error="skip"), or raises CorruptLineError (on_error="raise");
    `limit` stops after that many good texts. Subsets come from a `meta.pile_set_name` column ("" if absent/null).
    A blank text (empty or whitespace only) is skipped and its row number recorded in `blank_lines`.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    try:
        import datasets
    except ImportError as e:  # optional dependency
        raise ImportError("reading HF datasets needs `pip install datasets`") from e
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset folder {path} does not exist")
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split is None or split not in ds:
            raise KeyError(f"{path} holds splits {list(ds)}; pass split=one of them")
        ds = ds[split]
    if text_field not in ds.column_names:
        raise KeyError(f"{path} has no column {text_field!r} (columns: {ds.column_names})")
    feature = ds.features[text_field]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise TypeError(f"{path}: column {text_field!r} is {feature}, not a string column")
    metas = ds["meta"] if "meta" in ds.column_names else itertools.repeat(None)
    corpus = Corpus([], [], [], source=str(path))
    for i, (text, m) in enumerate(zip(ds[text_field], metas, strict=False)):
        if not isinstance(text, str):
            if on_error == "raise":
                raise CorruptLineError(f"{path}: row {i + 1} has no {text_field!r} text ({text!r})")
            corpus.skipped_lines.append(i + 1)
            continue
        if not text.strip():
            corpus.blank_lines.append(i + 1)
            continue
        corpus.texts.append(text)
        corpus.subsets.append((m.get("pile_set_name") or "") if isinstance(m, dict) else "")
        corpus.lines.append(i + 1)
        if limit is not None and len(corpus.texts) >= limit:
            break
    return corpus


def read_text_file(path: str | os.PathLike, doc_chars: int = 2000) -> Corpus:
    """A plain-text file (e.g. Debian's bible-kjv) as documents: its paragraphs (split at blank lines, each kept
    as written, line breaks included) packed in order into documents of <= doc_chars characters, joined by a
    blank line; a longer paragraph is a document of its own. A document's line is that of its first paragraph."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"corpus file {p} does not exist")
    text = p.read_text(encoding="utf-8", errors="replace")
    parts = re.split(r"(\n[ \t]*\n)", text)  # paragraph, separator, paragraph, ..., paragraph
    paragraphs, line = [], 1  # (first line, paragraph) of each paragraph with text
    for piece, sep in zip(parts[::2], [*parts[1::2], ""], strict=True):
        par = piece.strip("\n").rstrip()
        if par.strip():
            paragraphs.append((line + len(piece) - len(piece.lstrip("\n")), par))
        line += piece.count("\n") + sep.count("\n")
    docs = _pack(paragraphs, doc_chars, sep="\n\n")
    return Corpus([d for _, d in docs], [""] * len(docs), [], source=str(p), lines=[n for n, _ in docs])


def read_corpus(path: str | os.PathLike, on_error: str = "skip", split: str | None = None,
                limit: int | None = None) -> Corpus:
    """Dispatch on the path: .jsonl / .jsonl.zst / .json, a .txt file, else a HF dataset folder."""
    p = Path(path)
    if p.is_dir():
        return read_hf_dataset(p, split=split, on_error=on_error, limit=limit)
    if p.name.endswith(".txt"):
        return read_text_file(p)
    if p.name.endswith((".jsonl", ".jsonl.zst", ".json", ".zst")):
        return read_jsonl(p, on_error=on_error, limit=limit)
    raise ValueError(f"cannot read corpus {p}: expected a .jsonl / .jsonl.zst / .txt file or a HF dataset folder")


def _numbers(kind: str, numbers: list[int], shown: int = 5) -> str:
    head = ", ".join(map(str, numbers[:shown])) + (", ..." if len(numbers) > shown else "")
    return f"{kind}{'s' if len(numbers) > 1 else ''} {head}"


def skipped_summary(corpus: Corpus) -> str:
    """What the reader skipped, e.g. "skipped 2 corrupt lines (lines 3, 7) and 1 blank text (line 5)"; "" if nothing."""
    unit = "row" if Path(corpus.source).is_dir() else "line"  # HF dataset folders have rows
    parts = [f"{len(numbers)} {what}{'s' if len(numbers) > 1 else ''} ({_numbers(unit, numbers)})"
             for what, numbers in ((f"corrupt {unit}", corpus.skipped_lines), ("blank text", corpus.blank_lines))
             if numbers]
    return "skipped " + " and ".join(parts) if parts else ""


def require_text(corpus: Corpus, option: str) -> None:
    """Raise ConfigError naming `option` and the corpus file when no usable text is left in it."""
    if not corpus.texts:
        why = skipped_summary(corpus) or "it holds no text"
        raise ConfigError(f"{option} {corpus.source}: no usable text ({why})")


def write_jsonl(path: str | os.PathLike, texts: Iterable[str], subsets: Iterable[str] | None = None) -> Path:
    """Write texts as Pile-format JSONL (`{"text", "meta": {"pile_set_name"}}` per line), readable by read_jsonl."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = itertools.repeat("") if subsets is None else subsets
    with open(path, "w", encoding="utf-8") as f:
        for text, subset in zip(texts, names, strict=False):
            row = {"text": text, "meta": {"pile_set_name": subset}} if subset else {"text": text}
            f.write(json.dumps(row) + "\n")
    return path


def corpus_name(path: str | os.PathLike, corpus: Corpus) -> str:
    """The dataset name of result rows: "pile" when every text carries a Pile subset name, else the file's
    stem (its folder's name when the stem is only a split name such as "test")."""
    if corpus.subsets and all(corpus.subsets):
        return "pile"
    p = Path(path)
    stem = p.name.split(".")[0]
    return p.resolve().parent.name if stem in ("train", "test", "val", "validation") else stem


def _pack(pieces: Iterable[tuple[int, str]], limit: int, sep: str = " ") -> list[tuple[int, str]]:
    """Greedily join (tag, piece) pairs' pieces with `sep` into strings of at most `limit` characters (a piece
    longer than `limit` stands alone), in order. -> (tag of its first piece, string) per string."""
    out: list[tuple[int, str]] = []
    tag, current = 0, ""
    for piece_tag, piece in pieces:
        if current and len(current) + len(sep) + len(piece) > limit:
            out.append((tag, current))
            tag, current = piece_tag, piece
        elif current:
            current = f"{current}{sep}{piece}"
        else:
            tag, current = piece_tag, piece
    if current:
        out.append((tag, current))
    return out


_TOPICS = {
    "astronomy": "star planet orbit comet galaxy telescope nebula moon solar eclipse gravity light year",
    "cooking": "flour butter oven recipe sugar knife simmer garlic onion bake pepper salt dough",
    "sailing": "boat sail wind harbour mast anchor tide rope deck keel starboard port wave",
    "chess": "pawn knight bishop rook queen king castle gambit opening endgame check mate board",
    "botany": "leaf root stem flower seed pollen soil moss fern bark branch petal sprout",
    "music": "chord melody rhythm piano violin tempo note scale harmony drum choir song bass",
}


def topical_corpus(n_docs: int, words_per_doc: int = 120, seed: int = 0) -> tuple[list[str], list[str]]:
    """n_docs generated documents cycling through 6 topics, each drawn mostly (85%) from its topic's
    13 words, else from common function words. -> (texts, topic names). Offline stand-in for the Pile."""
    rng = np.random.default_rng(seed)
    topics = sorted(_TOPICS)
    common = "the a of and to in is was on with for as by at it".split()
    texts, labels = [], []
    for i in range(n_docs):
        topic = topics[i % len(topics)]
        vocab = _TOPICS[topic].split()
        words = [vocab[rng.integers(len(vocab))] if rng.random() < 0.85 else common[rng.integers(len(common))]
                 for _ in range(words_per_doc)]
        texts.append(" ".join(words).capitalize() + ".")
        labels.append(topic)
    return texts, labels
