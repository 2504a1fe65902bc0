"""How the report draws each study: its paper figure's axes, and the paper's predictions to overlay.

A study's summary rows (harness.results.schema.summarise) become charts by one rule: `x` on the horizontal
axis, one line per method (and per `series` value), 90% CI bands, one chart per metric. A study without
an entry here is drawn by the same rule with its axis guessed (`view_for`); a study without an `x` (Tables
1 and 2) is drawn as bars.

    VIEWS.get("model_scaling")   # StudyView(code="S1", title="MNIST model scaling", x="model_size", ...)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import polars as pl

from harness.registry import Registry


@dataclasses.dataclass(frozen=True)
class Reference:
    """A line of the paper's prediction drawn beside the measured values (x, y in the chart's units)."""

    name: str
    x: list[float]
    y: list[float]
    metric: str


@dataclasses.dataclass(frozen=True)
class StudyView:
    """What the report needs to know about a study to draw it as the paper does."""

    study: str
    code: str  # "S1"
    title: str
    source: str  # the paper's figure or table ("Fig 4 left")
    x: str | None  # summary column on the horizontal axis (None: bars per method)
    xlabel: str = ""
    logx: bool = True
    logy: bool = False
    series: tuple[str, ...] | None = None  # columns splitting a method's lines (None: those that vary)
    derive: Callable[[pl.DataFrame], pl.DataFrame] | None = None  # adds columns the axes need (S11: d2/d1)
    references: Callable[[pl.DataFrame], list[Reference]] | None = None  # the paper's predictions

    def prepare(self, table: pl.DataFrame) -> pl.DataFrame:
        """`table` with the view's derived columns (a no-op for most studies)."""
        return self.derive(table) if self.derive is not None and not table.is_empty() else table


VIEWS: Registry[StudyView] = Registry("study view")


def _register(view: StudyView) -> None:
    VIEWS.register(view.study)(view)


def _lrh_columns(table: pl.DataFrame) -> pl.DataFrame:
    """S11: d1, s and σ from the dataset tag (lrh-d1=128-s=1-noise=0.1), d2 = model_size, and d2/d1."""
    return table.with_columns(
        d1=pl.col("dataset").str.extract(r"d1=(\d+)").cast(pl.Int64),
        s=pl.col("dataset").str.extract(r"-s=(\d+)").cast(pl.Int64),
        noise=pl.col("dataset").str.extract(r"noise=([0-9.eE+-]+)").cast(pl.Float64),
    ).with_columns(d2_over_d1=pl.col("model_size") / pl.col("d1"))


def _lrh_references(table: pl.DataFrame) -> list[Reference]:
    """§C.3: the global model's error 1 − d2/d1 (s = 1, noiseless target) and TTT's rate σ² s log(d1/s) / k."""
    from harness.trials.lrh import global_error_prediction, ttt_rate  # imports torch: only for S11's section

    out = []
    ours = table.filter(pl.col("source") == "this run") if "source" in table.columns else table
    for d1 in sorted(ours.filter(pl.col("s") == 1)["d1"].unique().drop_nulls().to_list()):
        xs = sorted(ours.filter((pl.col("d1") == d1) & (pl.col("s") == 1))["d2_over_d1"].unique().to_list())
        out.append(Reference(f"1 − d2/d1 (§C.3 global, d1={d1})", xs,
                             [global_error_prediction(d1, round(x * d1)) for x in xs], "squared_error"))
    ttt = ours.filter((pl.col("method") == "ttt") & pl.col("k").is_not_null())
    for (d1, s, k, noise), part in ttt.group_by("d1", "s", "k", "noise", maintain_order=True):
        xs = sorted(part["d2_over_d1"].unique().to_list())
        if noise is None or not xs:
            continue
        rate = ttt_rate(noise, s, d1, k)
        out.append(Reference(f"σ²s·log(d1/s)/k (§C.3 TTT, d1={d1}, s={s}, k={k})", [xs[0], xs[-1]], [rate, rate],
                             "squared_error"))
    return out


PAPER_ORDER = (
    StudyView("model_scaling", "S1", "MNIST model scaling", "Fig 4 left", "model_size", "Number of parameters"),
    StudyView("mlp_scaling", "S2", "MLP heads on embeddings", "Fig 4 middle", "model_size", "Hidden dimension"),
    StudyView("lm_scaling", "S3", "LM model scaling (LoRA TTT)", "Fig 4 right", "model_size", "Number of parameters"),
    StudyView("data_scaling", "S4", "Dataset scaling", "Fig 5 left/middle", "fraction",
              "Fraction of the training set"),
    StudyView("neighbourhood_size", "S5", "Neighbourhood size", "Fig 5 right", "k", "Number of neighbours k"),
    StudyView("moe_scaling", "S6", "MNIST MoE scaling", "Fig 7", "experts", "Number of experts"),
    StudyView("local_vs_global", "S7", "Local vs global TTT heads", "Table 2", None),
    StudyView("concept_space", "S8", "TTT in the SAE's concept space", "Table 1, §3", None),
    StudyView("mnist_sae", "S9", "Masked TTT on an MNIST SAE", "§E.2", None),
    StudyView("cross_entropy", "S10", "Cross-entropy ablation", "Fig 6", "model_size", "Hidden dimension"),
    StudyView("theory_check", "S11", "Theory check on synthetic LRH data", "§5, §C.3", "d2_over_d1", "d2 / d1",
              logy=True, series=("d1", "s", "k"), derive=_lrh_columns, references=_lrh_references),
    StudyView("tune_ttt", "Tune", "TTT hyperparameter search (validation split)", "Table 4", "ttt_lr",
              "TTT learning rate"),
)
for _view in PAPER_ORDER:
    _register(_view)
ORDER = {v.study: i for i, v in enumerate(PAPER_ORDER)}  # sections in the paper's order (S1 ... S11, Tune)
AXIS_GUESSES = ("model_size", "k", "experts", "fraction")


def view_for(study: str, summary: pl.DataFrame) -> StudyView:
    """The registered view of `study`, else one whose axis is the first coordinate the summary varies in."""
    if study in VIEWS:
        return VIEWS.get(study)
    x = next((c for c in AXIS_GUESSES if c in summary.columns and summary[c].drop_nulls().n_unique() > 1), None)
    return StudyView(study, "", study.replace("_", " "), "", x, x or "")


PERCENT_METRICS = ("error", "accuracy", "agreement", "dead_fraction")
METRIC_LABELS = {"error": "Test error", "accuracy": "Accuracy", "cross_entropy": "Cross-entropy (nats)",
                 "bits_per_byte": "Bits per byte", "squared_error": "Squared error"}


def is_percent(metric: str) -> bool:
    """Whether `metric` (a fraction) is shown in percent: errors, accuracies and their variants."""
    return metric.startswith(PERCENT_METRICS)


def metric_label(metric: str) -> str:
    base = METRIC_LABELS.get(metric, metric.replace("_", " ").capitalize())
    return base + (" (%)" if is_percent(metric) else "")


def metric_order(metrics: list[str]) -> list[str]:
    """The paper's headline metric first (error, accuracy, bits per byte, squared error), the rest after."""
    head = ("error", "accuracy", "bits_per_byte", "squared_error", "cross_entropy")
    return sorted(metrics, key=lambda m: (head.index(m) if m in head else len(head), m))


def scale(metric: str) -> float:
    return 100.0 if is_percent(metric) else 1.0


def fmt(value: float | None, metric: str) -> str:
    """A value in the metric's display unit (percent with 2 decimals, else 4 significant digits)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.2f}" if is_percent(metric) else f"{value:.4g}"
