"""Rich tables of bench results, drawn from the typed rows of :mod:`fedal.app.bench.sampling`
and :mod:`fedal.app.bench.federation`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from fedal.app.bench.federation import FederationReport
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
    out = console or _wide_console()
    out.print(table)
    for forward in report.forwards:
        peak = (
            f", {forward.peak_fraction:.0%} of the {forward.peak_tflops:g} TFLOP/s bf16 peak"
            if forward.peak_fraction is not None
            else ""
        )
        out.print(
            f"{forward.model} forward: {forward.seconds:.3f} s, "
            f"{forward.gflop_per_image:.3f} GFLOP/image, {forward.tflops:.2f} TFLOP/s{peak} "
            f"(bf16 autocast: {report.bf16}, channels_last: {report.channels_last})"
        )


def render_federation_report(report: FederationReport, console: Console | None = None) -> None:
    """Print a federation bench report: the phases, then the derived figures."""
    table = Table(
        title=f"federation bench | {report.config} | {report.clients} clients x "
        f"{report.rounds} rounds | {report.device}, {report.slots} slot(s) | "
        f"wall {report.wall_seconds:.1f} s"
    )
    table.add_column("measure", no_wrap=True)
    table.add_column("value", justify="right")
    slot_seconds = report.wall_seconds * report.slots
    for phase, seconds in report.phases.items():
        table.add_row(f"{phase} s", f"{seconds:.2f} ({seconds / slot_seconds:.1%} of slot time)")
    flow = report.throughput
    gpu = report.gpu_utilisation_mean
    rows = {
        "framework share": f"{report.framework_share:.3f}",
        "framework share, rounds >= 2": (
            "-" if report.later_framework_share is None else f"{report.later_framework_share:.3f}"
        ),
        "client rounds / s": f"{report.client_rounds_per_second:.2f}",
        "worker processes (starts by round)": (
            f"{report.worker_processes} ({', '.join(map(str, report.worker_starts_by_round))})"
        ),
        "host MiB per client (state MiB)": (
            f"{report.host_mib_per_client:.1f} ({report.state_mib_per_client:.3f})"
        ),
        "first contact / later round": (
            "-" if report.first_contact_ratio is None else f"{report.first_contact_ratio:.2f}"
        ),
        "images / s (alone: train, inference)": (
            f"{flow.achieved_images_per_second:.0f} ({flow.alone_train_images_per_second:.0f}, "
            f"{flow.alone_inference_images_per_second:.0f})"
        ),
        "device efficiency": f"{flow.device_efficiency:.3f}",
        "GPU utilisation % (peak MiB)": (
            report.gpu_note or "-"
            if gpu is None
            else f"{gpu:.0f} ({report.gpu_memory_peak_mib or 0:.0f})"
        ),
    }
    for name, value in rows.items():
        table.add_row(name, value)
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
