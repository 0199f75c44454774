"""``bench.suite``'s report: rows (value per configuration, paired ratios against runc-v2,
target met or not), the markdown table and document, and the chart (matplotlib, optional)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.suite_env import CONFIGS, REFERENCE

MIB_KIB = 1024
CONFIG_NAMES = tuple(config.name for config in CONFIGS)


@dataclass(frozen=True)
class Target:
    """A goal for pyshim's figure: its value (or its ratio to runc-v2 with ``on_ratio``) must be
    at most (``upper``) or at least ``bound``."""

    text: str
    bound: float
    upper: bool = True
    on_ratio: bool = True

    def met(self, value: float | None, ratio: float | None) -> bool | None:
        subject = ratio if self.on_ratio else value
        if subject is None or math.isnan(subject):
            return None
        return subject <= self.bound if self.upper else subject >= self.bound

    def as_ratio(self, reference: float | None) -> float | None:
        """The bound in units of the reference's value (for the chart)."""
        if self.on_ratio:
            return self.bound
        if not reference:
            return None
        return self.bound / reference


@dataclass
class Row:
    label: str
    unit: str
    digits: int
    values: dict[str, float | None]
    ratio: float | None = None
    ratio_cold: float | None = None
    target: Target | None = None
    #: Short name on the chart's ratio panel (None: not drawn there).
    chart: str | None = None
    higher_is_better: bool = False
    notes: list[str] = field(default_factory=list)
    #: What the ratios divide by (the conmon phase's rows: conmon).
    reference: str = REFERENCE.name


def median_or_none(values: Sequence[float]) -> float | None:
    finite = [value for value in values if math.isfinite(value)]
    return statistics.median(finite) if finite else None


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float | None:
    """Median over rounds of the per-round ratio."""
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)
              if b and math.isfinite(a) and math.isfinite(b)]
    return statistics.median(ratios) if ratios else None


def series_row(label: str, unit: str, digits: int, series: dict[str, list[float]],
               target: Target | None = None, chart: str | None = None,
               higher_is_better: bool = False, columns: Sequence[str] = CONFIG_NAMES,
               reference: str = REFERENCE.name) -> Row:
    """A row from per-round values of every configuration (same rounds, same order)."""
    values = {name: median_or_none(series[name]) for name in columns}
    return Row(label, unit, digits, values,
               ratio=paired_ratio(series["pyshim"], series[reference]),
               ratio_cold=paired_ratio(series["pyshim-cold"], series[reference]),
               target=target, chart=chart, higher_is_better=higher_is_better,
               reference=reference)


def single_row(label: str, unit: str, digits: int, values: dict[str, float],
               target: Target | None = None, chart: str | None = None,
               columns: Sequence[str] = CONFIG_NAMES, reference_name: str = REFERENCE.name
               ) -> Row:
    """A row from one measurement per configuration (ratio: value / the reference's)."""
    reference = values.get(reference_name)

    def ratio(name: str) -> float | None:
        value = values.get(name)
        return value / reference if value is not None and reference else None

    return Row(label, unit, digits, {name: values.get(name) for name in columns},
               ratio=ratio("pyshim"), ratio_cold=ratio("pyshim-cold"), target=target,
               chart=chart, reference=reference_name)


def _number(value: float | None, digits: int, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "n/a"
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}" if unit else text


def _verdict(row: Row) -> str:
    if row.target is None:
        return ""
    pyshim = row.target.met(row.values.get("pyshim"), row.ratio)
    cold = row.target.met(row.values.get("pyshim-cold"), row.ratio_cold)
    words = {True: "met", False: "not met", None: "n/a"}
    return f"{row.target.text}: **{words[pyshim]}** (cold: {words[cold]})"


def markdown_table(rows: Sequence[Row], columns: Sequence[str] = CONFIG_NAMES) -> str:
    header = ["figure", *columns, "ratio", "ratio cold", "target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{row.label} ({row.unit})",
                 *(_number(row.values.get(name), row.digits) for name in columns),
                 _number(row.ratio, 2), _number(row.ratio_cold, 2), _verdict(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- chart


def draw_chart(rows: Sequence[Row], memory: dict[str, dict[str, float]], pss_target_mib: float,
               path: Path, title: str) -> str | None:
    """Write the PNG; returns None, or why the chart was skipped (matplotlib missing)."""
    try:
        # Optional (the `bench` extra): type-checked where installed, Any where not.
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
        import matplotlib.ticker  # type: ignore[import-not-found, unused-ignore]
    except ImportError as error:
        return f"chart skipped: matplotlib is not importable ({error}); ./scripts/bench installs it"

    colors = {"pyshim": "#1f77b4", "pyshim-cold": "#9ecae1", "runc-v2": "#7f7f7f"}
    charted = [row for row in rows if row.chart is not None]
    figure, (left, right) = plt.subplots(1, 2, figsize=(15, 0.55 * len(charted) + 3.2),
                                         gridspec_kw={"width_ratios": [1.35, 1]})
    figure.suptitle(title, fontsize=11)

    # Ratios against runc-v2 = 1.0, with each target drawn as a red mark.
    height = 0.38
    labels = []
    target_labelled = False
    for position, row in enumerate(reversed(charted)):
        better = "higher" if row.higher_is_better else "lower"
        labels.append(f"{row.chart}\n({better} is better)")
        for offset, (name, ratio) in ((height / 2, ("pyshim", row.ratio)),
                                      (-height / 2, ("pyshim-cold", row.ratio_cold))):
            if ratio is None:
                continue
            left.barh(position + offset, ratio, height, color=colors[name],
                      label=name if position == 0 else None)
            left.text(ratio, position + offset, f" {ratio:.2f}", va="center", fontsize=7)
        if row.target is not None:
            bound = row.target.as_ratio(row.values.get(row.reference))
            if bound is not None:
                left.plot([bound, bound], [position - 0.45, position + 0.45], color="red",
                          linewidth=2, label=None if target_labelled else "target")
                target_labelled = True
    left.axvline(1.0, color="black", linewidth=1, linestyle="--", label="reference = 1.0")
    left.set_yticks(range(len(charted)), labels, fontsize=8)
    left.set_xlabel("ratio to the reference (paired median over rounds)")
    left.set_title("pyshim / runc-v2 (podman rows: pyshim-conmon / conmon)", fontsize=10)
    left.legend(fontsize=8, loc="lower right")
    left.grid(axis="x", alpha=0.3)

    # Memory: PSS per container.
    groups = list(memory)
    width = 0.8 / len(CONFIGS)
    top = 0.0
    for index, config in enumerate(CONFIGS):
        xs = [group + (index - (len(CONFIGS) - 1) / 2) * width for group in range(len(groups))]
        heights = [memory[name].get(config.name, math.nan) for name in groups]
        right.bar(xs, heights, width, color=colors[config.name], label=config.name)
        for x, value in zip(xs, heights, strict=True):
            if math.isfinite(value):
                top = max(top, value)
                right.text(x, value, f"{value:.1f}", ha="center", va="bottom", fontsize=7)
    right.axhline(pss_target_mib, color="red", linewidth=1.5, linestyle="--",
                  label=f"target {pss_target_mib} MiB (N=50 with KSM)")
    right.set_xticks(range(len(groups)), groups, fontsize=8)
    right.set_ylabel("shim PSS per container (MiB)")
    if top > 20 * pss_target_mib:
        right.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
        right.yaxis.set_major_formatter(plain)
        right.yaxis.set_minor_formatter(plain)
    right.set_title("memory: shim PSS / container (pyshim incl. fork-server)", fontsize=10)
    right.legend(fontsize=8)
    right.grid(axis="y", alpha=0.3)

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None
