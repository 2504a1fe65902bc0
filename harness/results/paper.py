"""The paper's published numbers as summary rows, so every table and figure can show them beside ours.

A study's `summary.parquet` holds our rows (`source` "this run": mean and 90% bootstrap CI) and, where
the paper publishes a number for the same (method, metric, ...), a row with `source` "paper": its value
in `mean`, its bootstrap standard error in `se` (Tables 1 and 2 report ± s.e.; null where none is given),
no CI, and `where` naming the table or section it comes from. Values are fractions, like ours
(accuracy 0.9857 for the paper's "98.57").

    summary = beside_paper(summarise(rows, by=["method", "metric"]), "local_vs_global", dataset="mnist")

Only numbers the paper prints are here: Figures 4, 5 and 7 are plots without published values, and
Table 6 publishes hyperparameters only (S6 uses them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import polars as pl

SOURCE_OURS = "this run"
SOURCE_PAPER = "paper"


@dataclasses.dataclass(frozen=True)
class PaperNumber:
    """One published value: the study, the coordinates it shares with our summary rows, value and s.e."""

    study: str
    method: str
    metric: str
    value: float  # a fraction (accuracy 0.9857), or a count (mask sizes)
    where: str  # "Table 2, MNIST", "§E.2", ...
    se: float | None = None  # the paper's bootstrap standard error, same unit as value
    coords: tuple[tuple[str, Any], ...] = ()  # extra summary columns, e.g. (("dataset", "mnist"),)


def _table2(dataset: str, values: tuple[float, ...], ses: tuple[float, ...]) -> list[PaperNumber]:
    """Table 2's row of `dataset`: MNIST is the paper's 280-parameter LeNet, ImageNet a linear head on CLIP."""
    cells = (("global", "accuracy"), ("ttt", "accuracy"), ("ttt", "accuracy_neighbourhood"),
             ("ttt", "accuracy_test_set"))
    where, coords = ("Table 2, MNIST (LeNet-280)", (("dataset", "mnist"), ("model_size", 280))) \
        if dataset == "mnist" else ("Table 2, ImageNet (linear head on CLIP)", (("dataset", "imagenet"),))
    return [PaperNumber("local_vs_global", m, k, v / 100, where, s / 100, coords)
            for (m, k), v, s in zip(cells, values, ses, strict=True)]


_PHI = (("space", "phi_hat"),)  # S8 / S9: in the SAE's concept space
_CNN = (("space", "cnn"),)  # S9: the dense LeNet's features

PAPER_NUMBERS: tuple[PaperNumber, ...] = (
    # S7 (Table 2): global, TTT on the test sample, TTT on its neighbourhood, ten TTT heads on the whole test set
    *_table2("mnist", (98.57, 99.01, 100.00, 36.38), (0.12, 0.10, 0.00, 0.16)),
    *_table2("imagenet", (78.33, 79.39, 95.19, 77.04), (0.19, 0.18, 0.00, 0.06)),
    # S8 (Table 1): ImageNet accuracy of global linear heads and TTT in the SAE's concept space (Φ̂: its TTT column
    # is masked TTT, §3 O2) and on its reconstructions (Ψ̂); §3 O2 / O3 and §E.1: mask sizes, the agreement of
    # Ψ̂-TTT with masked Φ̂-TTT, the fitted temperature
    PaperNumber("concept_space", "global", "accuracy", 0.7145, "Table 1, Φ̂", 0.0021, _PHI),
    PaperNumber("concept_space", "masked_ttt", "accuracy", 0.7264, "Table 1, Φ̂ (masked TTT)", 0.0020, _PHI),
    PaperNumber("concept_space", "global", "accuracy", 0.7126, "Table 1, Ψ̂", 0.0020, (("space", "psi_hat"),)),
    PaperNumber("concept_space", "ttt", "accuracy", 0.7256, "Table 1, Ψ̂", 0.0019, (("space", "psi_hat"),)),
    PaperNumber("concept_space", "masked_ttt", "mask_size", 40.0, "§3 O2: ‖m‖₀ ≈ 40", coords=_PHI),
    PaperNumber("concept_space", "masked_ttt", "neighbourhood_concepts", 180.0, "§3 O2: concepts active in the "
                "neighbourhood ≈ 180", coords=_PHI),
    PaperNumber("concept_space", "masked_ttt", "test_point_concepts_in_mask", 11.0, "§3 O2: ‖Φ̂(x*) ⊙ m‖₀ ≈ 11",
                coords=_PHI),
    PaperNumber("concept_space", "masked_ttt", "accuracy_own_concepts", 0.7151, "§3 O2: mask fixed to x*'s concepts",
                coords=_PHI),
    PaperNumber("concept_space", "masked_ttt", "agreement", 0.89, "§3 O3: Ψ̂-TTT and Φ̂-TTT agree ≈ 89 %", coords=_PHI),
    PaperNumber("concept_space", "masked_ttt", "temperature", 0.8, "§E.1: τ ≈ 0.8 (s.d. ≈ 0.1 over points)",
                coords=_PHI),
    PaperNumber("concept_space", "sae", "dead_fraction", 0.04, "§3.1: 4 % dead concepts"),
    # S9 (§E.2): MNIST, LeNet-600 (size_scale 0.5) global and TTT vs masked TTT on a JumpReLU SAE
    PaperNumber("mnist_sae", "global", "accuracy", 0.9451, "§E.2: LeNet (scale 0.5) test accuracy", coords=_CNN),
    PaperNumber("mnist_sae", "ttt", "accuracy", 0.9762, "§E.2: LeNet CNN TTT", coords=_CNN),
    PaperNumber("mnist_sae", "masked_ttt", "accuracy", 0.9772, "§E.2: masked SAE TTT", coords=_PHI),
    PaperNumber("mnist_sae", "masked_ttt", "mask_size", 24.5, "§E.2: E‖m‖₀ ≈ 24.5", coords=_PHI),
    PaperNumber("mnist_sae", "masked_ttt", "neighbourhood_concepts", 144.5, "§E.2: E|∪ m_i| ≈ 144.5", coords=_PHI),
    PaperNumber("mnist_sae", "masked_ttt", "test_point_concepts_in_mask", 7.9, "§E.2: E|m_x* ∩ m| ≈ 7.9", coords=_PHI),
    PaperNumber("mnist_sae", "masked_ttt", "neighbourhood_concepts_in_mask", 7.1, "§E.2: E|∪ (m_i ∩ m)| ≈ 7.1",
                coords=_PHI),
    PaperNumber("mnist_sae", "masked_ttt", "test_point_concepts_in_neighbourhood", 8.3,
                "§E.2: E|∪ (m_i ∩ m_x*)| ≈ 8.3", coords=_PHI),
    PaperNumber("mnist_sae", "sae", "active_concepts", 18.9, "§E.2: E‖Φ̂‖₀ ≈ 18.9"),
)


def paper_numbers(study: str, **coords: Any) -> list[PaperNumber]:
    """The published numbers of `study` whose coordinates agree with `coords` (a coordinate the number
    does not carry matches anything)."""
    out = []
    for p in PAPER_NUMBERS:
        have = dict(p.coords)
        if p.study == study and all(have.get(k, v) == v for k, v in coords.items()):
            out.append(p)
    return out


def paper_summary(study: str, **coords: Any) -> pl.DataFrame:
    """Summary-shaped rows (method, metric, coordinates, mean, se, where, source "paper") of `study`."""
    rows = [{"method": p.method, "metric": p.metric, **dict(p.coords), **coords, "mean": p.value, "se": p.se,
             "where": p.where, "source": SOURCE_PAPER} for p in paper_numbers(study, **coords)]
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


def beside_paper(summary: pl.DataFrame, study: str, **coords: Any) -> pl.DataFrame:
    """Our summary (source "this run") followed by the paper's rows for the same study and coordinates.

    Only paper rows whose (method, metric) also appear in ours are kept, so a table never shows a
    published number for something this run did not compute. `coords` describe this run: a coordinate our
    summary has no column for (e.g. dataset="mnist") is written into our rows too, so both sides match."""
    ours = summary.with_columns(pl.lit(SOURCE_OURS).alias("source"),
                                *(pl.lit(v).alias(k) for k, v in coords.items() if k not in summary.columns))
    paper = paper_summary(study, **coords)
    if paper.is_empty():
        return ours
    computed = ours.select("method", "metric").unique()
    paper = paper.join(computed, on=["method", "metric"], how="semi")
    return pl.concat([ours, paper], how="diagonal_relaxed")


def ours(summary: pl.DataFrame) -> pl.DataFrame:
    """The rows of a summary computed by this run (all of them, for summaries written before `source`)."""
    return summary.filter(pl.col("source") == SOURCE_OURS) if "source" in summary.columns else summary
