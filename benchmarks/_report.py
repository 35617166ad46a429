"""Sections of the results: a table each, written to Markdown, charts with matplotlib."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Section:
    title: str
    what: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    chart: tuple[str, str, list[str], list[float]] | None = None  # file, y label, names, values

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", self.what, ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
        if self.notes:
            lines.append("")
            lines.extend(f"- {note}" for note in self.notes)
        if self.chart is not None:
            lines += ["", f"![{self.title}](charts/{self.chart[0]})"]
        return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def draw(section: Section, folder: Path) -> bool:
    """Draw the section's bar chart; False when matplotlib is not installed."""
    if section.chart is None:
        return False
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]  # the bench extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return False
    name, label, names, values = section.chart
    folder.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(7, 0.6 * len(names) + 1.2))
    colors = ["#2a7ab0" if n.startswith("ghl_async") else "#9aa5b1" for n in names]
    bars = axes.barh(names[::-1], values[::-1], color=colors[::-1])
    axes.bar_label(bars, labels=[_cell(v) for v in values[::-1]], padding=3)
    axes.set_xlabel(label)
    axes.set_title(section.title)
    axes.margins(x=0.18)
    figure.tight_layout()
    figure.savefig(folder / name, dpi=110)
    plt.close(figure)
    return True
