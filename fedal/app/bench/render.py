"""Rich tables of bench results, drawn from the typed rows of :mod:`fedal.app.bench.sampling`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from fedal.app.bench.sampling import SamplingReport, StrategyFailure, StrategyRow

TABLE_WIDTH = 180
SAMPLING_COLUMNS = (
    "model", "strategy", "sampling params", "forward s", "fit s", "select s",
    "passes", "inference s", "selection s", "selection / forward", "peak RSS MiB",
    "peak CUDA MiB", "targets",
)  # fmt: skip


def render_sampling_report(report: SamplingReport, console: Console | None = None) -> None:
    """Print a sampling bench report as one table, a line per scorer and strategy."""
    table = Table(
        title=f"sampling bench | pool {report.pool} | budget {report.budget} | "
        f"labelled {report.labelled} | {report.device} ({report.torch_threads} threads)"
    )
    for column in SAMPLING_COLUMNS:
        text = column in ("model", "strategy")
        table.add_column(column, justify="left" if text else "right", no_wrap=text)
    for row in report.results:
        cells = _sampling_cells(row)
        table.add_row(*cells, *[""] * (len(SAMPLING_COLUMNS) - len(cells)))
    (console or _wide_console()).print(table)


def _wide_console() -> Console:
    """A console for a table: the terminal's width, at least ``TABLE_WIDTH`` when piped."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, TABLE_WIDTH))


def _sampling_cells(row: StrategyRow) -> list[str]:
    """A row's cells; a failure's error takes the ``fit s`` cell and the rest stay empty."""
    if isinstance(row, StrategyFailure):
        return [row.model, row.strategy, "", f"{row.forward_s:.2f}", row.error]
    cuda = row.peak_cuda_mib
    return [
        row.model,
        row.strategy,
        f"{row.sampling_params:,}",
        f"{row.forward_s:.2f}",
        f"{row.fit_s:.2f}",
        f"{row.select_s:.2f}",
        str(row.inference_passes),
        f"{row.inference_s:.2f}",
        f"{row.selection_s:.2f}",
        f"{row.selection_ratio:.2f}",
        f"{row.peak_rss_mib:.0f}",
        "-" if cuda is None else f"{cuda:.0f}",
        "met" if row.meets_targets else "missed",
    ]
