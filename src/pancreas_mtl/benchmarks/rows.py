"""The inference benchmark's rows, in order: what each one measures, and how the plots draw it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchmarkRow:
    name: str  # the row's key in the benchmark's files (their "path" column)
    what: str  # what it measures (docs/benchmarks.md and the summary use the same words)
    label: str  # its legend entry
    tick: str  # its bar's tick label
    colour: str  # an Okabe-Ito colour name (pancreas_mtl.report.plots.OKABE_ITO)


BENCHMARK_ROWS = (
    BenchmarkRow(
        "stock_segmentation", "stock nnU-Net, defaults, masks only", "1 stock segmentation", "1 stock\nseg.", "black"
    ),
    BenchmarkRow(
        "baseline",
        "stock nnU-Net + second classification pass",
        "2 baseline (stock + class pass)",
        "2 base-\nline",
        "grey",
    ),
    BenchmarkRow(
        "optimized_stock_settings",
        "optimized at the stock's settings (all mirrors, step 0.5)",
        "3 optimized, stock settings",
        "3 opt.\nstock set.",
        "sky_blue",
    ),
    BenchmarkRow("optimized", "optimized, configured settings", "4 optimized", "4 opti-\nmized", "blue"),
    BenchmarkRow("one_pass", "compute-only bound", "5 one pass (compute bound)", "5 one\npass", "orange"),
    BenchmarkRow(
        "end_to_end_bound",
        "end-to-end bound (read + compute + write)",
        "6 end-to-end bound",
        "6 end-to-\nend bound",
        "yellow",
    ),
)
#: row name -> what it measures, in order
ROWS = {row.name: row.what for row in BENCHMARK_ROWS}
