"""mkdocs hook: publish the benchmark charts, kept in benchmarks/charts/, as charts/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

CHARTS = Path(__file__).resolve().parent.parent / "benchmarks" / "charts"


def on_files(files: Files, config: Any) -> Files:
    """Add each chart, so pages link ``charts/NAME.png`` and ``--strict`` checks it."""
    for chart in sorted(CHARTS.glob("*.png")):
        files.append(File.generated(config, f"charts/{chart.name}", abs_src_path=str(chart)))
    return files
