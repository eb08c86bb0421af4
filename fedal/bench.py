"""``fedal bench sampling``: the cost of every query strategy on one synthetic pool.

Part of the application layer (with :mod:`fedal.cli` and :mod:`fedal.preflight`): it
imports the query strategies. Heavy imports (torch, the strategies) happen when the
command runs, so building the CLI parser stays cheap.

Setup: ``pool`` random 32x32x3 uint8 images as candidates plus ``labelled`` random
images with uniformly random labels over 10 classes (no protected samples; the private
unlabelled view is the pool). Each scorer model (``resnet8``, optionally ``resnet18``)
is built once from the seed, with dropout before the head so the MC-dropout strategies
run, and left untrained: the bench measures cost, not selection quality. Every strategy
gets a fresh instance with default options and a fresh, identically seeded context.

What is measured, per scorer and strategy (wall clock; CUDA synchronised):

- ``forward_s``: one :func:`strategies.scoring.predict_logits` pass of the scorer over
  the pool, timed once per scorer after a warm-up batch. The least a score-based
  strategy pays.
- ``fit_s``: ``strategy.fit(ctx)``, the training of a strategy's private networks (PSL's
  peers, PAL's scoring network, LHD's main/EMA pair, ADS's heads); zero for the others.
  Reported on its own: it is training, like the helper's, not selection.
- ``select_s``: ``strategy.select(ctx, budget)``, split by an
  :func:`strategies.scoring.inference_clock` into ``inference_s`` (the network passes
  over views, ``inference_passes`` of them: PSL runs one per peer, PAL one per rotation
  batch set, LHD two) and ``selection_s = select_s - inference_s``, the selection work
  after the forward passes (scores, distances, k-means, PAL's sub-query fine-tuning).
- ``selection_ratio = selection_s / forward_s`` and ``meets_targets``: the issue's
  targets, selection work after the forward pass at most one forward pass
  (``selection_ratio <= 1``) and peak extra memory under 2 GB (CPU and CUDA).
- ``peak_rss_mib``: CPU memory high-water mark during fit+select minus the resident
  set before it. On Linux the kernel's ``VmHWM`` is reset through
  ``/proc/self/clear_refs`` first, so this counts every CPU allocation (numpy and
  torch alike) that needed new resident pages (memory the allocator kept from earlier
  work and reuses is not counted again); elsewhere it is the growth of ``ru_maxrss``
  beyond the process's earlier peak, a lower bound (``memory_method`` in the JSON
  says which).
- ``peak_cuda_mib``: ``torch.cuda.max_memory_allocated`` during fit+select minus the
  memory allocated before (tensors only, not the caching allocator's reserve); null on
  the CPU.
- ``sampling_params``: ``strategy.sampling_parameters()`` where the strategy scores with
  its own networks (PSL's peers, PAL's, ADS's and LHD's private networks), else the
  scorer's trainable parameter count.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from rich.console import Console
    from torch import nn

    from strategies.base import RoundContext

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
CLEAR_REFS = Path("/proc/self/clear_refs")
PROC_STATUS = Path("/proc/self/status")
MIB = 2**20
TABLE_WIDTH = 180
MAX_SELECTION_RATIO = 1.0
MAX_PEAK_MIB = 2048.0


@dataclass(frozen=True)
class BenchSettings:
    """What ``fedal bench sampling`` runs."""

    pool: int = 50_000
    budget: int = 1000
    labelled: int = 1000
    strategies: tuple[str, ...] = ()
    models: tuple[str, ...] = ("resnet8",)
    device: str = "auto"
    batch_size: int = 512
    dropout: float = 0.3
    seed: int = 0


# ---------------------------------------------------------------------------- CLI


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fedal bench sampling`` on the ``fedal`` command's subparsers."""
    bench = subparsers.add_parser("bench", help="benchmarks")
    kinds = bench.add_subparsers(dest="bench", required=True)
    sampling = kinds.add_parser("sampling", help="time every query strategy on one synthetic pool")
    defaults = BenchSettings()
    sampling.add_argument("--pool", type=int, default=defaults.pool, help="candidate images")
    sampling.add_argument("--budget", type=int, default=defaults.budget, help="labels to select")
    sampling.add_argument("--labelled", type=int, default=defaults.labelled)
    sampling.add_argument("--strategies", "--strategy", help="comma-separated names (default: all)")
    sampling.add_argument("--models", default="resnet8", help="scorers, e.g. resnet8,resnet18")
    sampling.add_argument("--output", default="bench.json", help="JSON results file")
    sampling.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, cuda:1")
    sampling.add_argument("--batch-size", type=int, default=defaults.batch_size)
    sampling.add_argument("--dropout", type=float, default=defaults.dropout)
    sampling.add_argument("--seed", type=int, default=defaults.seed)
    sampling.set_defaults(handler=cmd_bench_sampling)


def cmd_bench_sampling(args: argparse.Namespace) -> int:
    """Run the sampling bench, print the table, write the JSON."""
    settings = BenchSettings(
        pool=args.pool,
        budget=args.budget,
        labelled=args.labelled,
        strategies=_split(args.strategies),
        models=_split(args.models),
        device=args.device,
        batch_size=args.batch_size,
        dropout=args.dropout,
        seed=args.seed,
    )
    _validate(settings)
    report = run_sampling_bench(settings, progress=lambda line: print(line, file=sys.stderr))
    render_report(report)
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(args.output)
    return 0


def _validate(settings: BenchSettings) -> None:
    """Bad sizes and unknown strategy or model names are configuration errors."""
    from fedal.config import ConfigError
    from fedal.models import available_models
    from strategies import strategy_class

    sizes = {"pool": settings.pool, "batch-size": settings.batch_size}
    counts = {"budget": settings.budget, "labelled": settings.labelled}
    bad = [f"--{k} {v} (must be >= 1)" for k, v in sizes.items() if v < 1]
    bad += [f"--{k} {v} (must be >= 0)" for k, v in counts.items() if v < 0]
    if not 0 <= settings.dropout < 1:
        bad.append(f"--dropout {settings.dropout} (must be in [0, 1))")
    if bad:
        raise ConfigError(f"bench sampling: {'; '.join(bad)}")

    for name in settings.strategies:
        try:
            strategy_class(name)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    unknown = sorted(set(settings.models) - set(available_models()))
    if unknown:
        raise ConfigError(f"unknown model(s) {unknown}; available: {', '.join(available_models())}")


def _split(names: str | None) -> tuple[str, ...]:
    return tuple(name.strip() for name in (names or "").split(",") if name.strip())


# ---------------------------------------------------------------------------- bench


def run_sampling_bench(
    settings: BenchSettings, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Time every requested strategy with every requested scorer; the JSON report."""
    import torch

    import strategies

    names = settings.strategies or tuple(strategies.available())
    device = _resolve_device(settings.device)
    images, labels = _synthetic_pool(settings)
    rows = []
    for model_name in settings.models:
        scorer = _scorer(model_name, settings, device)
        forward_s = _time_forward(scorer, _context(scorer, images, labels, settings, device))
        progress(f"{model_name}: forward pass over {settings.pool} images {forward_s:.2f}s")
        for name in names:
            ctx = _context(scorer, images, labels, settings, device)
            row = _bench_strategy(name, ctx, settings.budget, forward_s)
            rows.append({"model": model_name, **row})
            progress(f"{model_name} | {name}: {_progress_summary(row)}")
    return {
        "pool": settings.pool,
        "budget": settings.budget,
        "labelled": settings.labelled,
        "num_classes": NUM_CLASSES,
        "image_shape": list(IMAGE_SHAPE),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "memory_method": {
            "cpu": "vmhwm" if _can_reset_hwm() else "ru_maxrss",
            "cuda": "max_memory_allocated" if device.type == "cuda" else None,
        },
        "results": rows,
    }


def _bench_strategy(name: str, ctx: RoundContext, budget: int, forward_s: float) -> dict[str, Any]:
    """Fit and select once, timing each and tracking peak memory; errors are recorded."""
    from fedal.models import count_parameters
    from strategies import build_strategy
    from strategies.scoring import inference_clock

    strategy = build_strategy(name)
    row: dict[str, Any] = {"strategy": name, "forward_s": forward_s}
    with _peak_memory(ctx.device) as peaks:
        try:
            row["fit_s"] = _timed(lambda: strategy.fit(ctx), ctx.device)[1]
            with inference_clock() as inference:
                picks, row["select_s"] = _timed(lambda: strategy.select(ctx, budget), ctx.device)
        except (RuntimeError, ValueError) as error:
            row["error"] = f"{type(error).__name__}: {error}"
            return row
    row["selected"] = len(picks)
    row["inference_s"] = inference.seconds
    row["inference_passes"] = inference.passes
    row["selection_s"] = max(0.0, row["select_s"] - inference.seconds)
    row["selection_ratio"] = row["selection_s"] / forward_s
    row.update(peaks)
    row["meets_targets"] = row["selection_ratio"] <= MAX_SELECTION_RATIO and all(
        peak is None or peak < MAX_PEAK_MIB for peak in peaks.values()
    )
    own_parameters = strategy.sampling_parameters()
    row["sampling_params"] = (
        count_parameters(ctx.model) if own_parameters is None else own_parameters
    )
    return row


def _progress_summary(row: dict[str, Any]) -> str:
    if "error" in row:
        return row["error"]
    return (
        f"fit {row['fit_s']:.2f}s, select {row['select_s']:.2f}s "
        f"(inference {row['inference_s']:.2f}s, selection {row['selection_s']:.2f}s)"
    )


# ---------------------------------------------------------------------------- setup


def _resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _synthetic_pool(settings: BenchSettings) -> tuple[Any, Any]:
    """Uniform random uint8 images (labelled rows first, then the pool) and labels."""
    import numpy as np

    rng = np.random.default_rng(settings.seed)
    total = settings.labelled + settings.pool
    images = rng.integers(0, 256, size=(total, *IMAGE_SHAPE), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=settings.labelled).astype(np.int64)
    return images, labels


def _build(name: str, dropout: float = 0.0) -> nn.Module:
    from fedal.models import build_model

    return build_model(
        name,
        in_channels=IMAGE_SHAPE[0],
        num_classes=NUM_CLASSES,
        image_size=IMAGE_SHAPE[1:],
        dropout=dropout,
    )


def _scorer(name: str, settings: BenchSettings, device: torch.device) -> nn.Module:
    """The untrained scoring model, seeded, in eval mode on ``device``."""
    import torch

    torch.manual_seed(settings.seed)
    return _build(name, settings.dropout).to(device).eval()


def _context(
    scorer: nn.Module, images: Any, labels: Any, settings: BenchSettings, device: torch.device
) -> RoundContext:
    """A fresh round context over the synthetic pool, seeded with ``settings.seed``.

    The global torch seed is reset too, so strategies drawing from it start alike.
    """
    import numpy as np
    import torch

    from fedal.views import InputSpec, SampleView
    from strategies.base import RoundContext

    spec = InputSpec(mean=(0.5,) * IMAGE_SHAPE[0], std=(0.25,) * IMAGE_SHAPE[0])
    labelled_rows = np.arange(settings.labelled)
    pool_rows = np.arange(settings.labelled, len(images))
    candidates = SampleView(images, pool_rows, spec)
    torch.manual_seed(settings.seed)
    return RoundContext(
        model=scorer,
        labelled=SampleView(images, labelled_rows, spec, labels),
        candidates=candidates,
        private_unlabelled=candidates,
        num_classes=NUM_CLASSES,
        device=device,
        generator=torch.Generator().manual_seed(settings.seed),
        rng=np.random.default_rng(settings.seed),
        round=1,
        batch_size=settings.batch_size,
        build_model=_build,
    )


# ---------------------------------------------------------------------------- measuring


def _time_forward(scorer: nn.Module, ctx: RoundContext) -> float:
    """Seconds of one ``predict_logits`` pass over the candidates, after a warm-up batch."""
    import numpy as np

    from strategies.scoring import predict_logits

    warm_up = ctx.candidates.subset(np.arange(min(ctx.batch_size, len(ctx.candidates))))
    predict_logits(scorer, warm_up, ctx.device, ctx.batch_size)
    forward = _timed(
        lambda: predict_logits(scorer, ctx.candidates, ctx.device, ctx.batch_size), ctx.device
    )
    return forward[1]


def _timed(work: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``work()``'s result and its wall time in seconds (CUDA synchronised)."""
    _synchronise(device)
    started = time.perf_counter()
    result = work()
    _synchronise(device)
    return result, time.perf_counter() - started


def _synchronise(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    """Yield a dict filled on exit with ``peak_rss_mib`` and ``peak_cuda_mib``."""
    import torch

    peaks: dict[str, float | None] = {}
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    cpu_baseline = _reset_cpu_peak()
    yield peaks
    peaks["peak_rss_mib"] = max(0, _cpu_peak() - cpu_baseline) / MIB
    peaks["peak_cuda_mib"] = (
        (torch.cuda.max_memory_allocated(device) - cuda_before) / MIB if use_cuda else None
    )


def _can_reset_hwm() -> bool:
    return CLEAR_REFS.exists() and PROC_STATUS.exists()


def _reset_cpu_peak() -> int:
    """Reset the kernel's RSS high-water mark where possible; the baseline in bytes.

    The baseline is the resident set after the reset, or, where the peak cannot be
    reset, the process's earlier peak (``ru_maxrss``).
    """
    if _can_reset_hwm():
        CLEAR_REFS.write_text("5")
        return _proc_status_bytes("VmRSS")
    return _cpu_peak()


def _cpu_peak() -> int:
    """The process's peak resident set in bytes."""
    if _can_reset_hwm():
        return _proc_status_bytes("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _proc_status_bytes(field: str) -> int:
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{PROC_STATUS} has no {field}")


# ---------------------------------------------------------------------------- output


def render_report(report: dict[str, Any], console: Console | None = None) -> None:
    """Print the bench results as a rich table."""
    from rich.table import Table

    table = Table(
        title=f"sampling bench | pool {report['pool']} | budget {report['budget']} | "
        f"labelled {report['labelled']} | {report['device']} "
        f"({report['torch_threads']} threads)"
    )
    columns = (
        "model", "strategy", "sampling params", "forward s", "fit s", "select s",
        "passes", "inference s", "selection s", "selection / forward", "peak RSS MiB",
        "peak CUDA MiB", "targets",
    )  # fmt: skip
    for column in columns:
        text = column in ("model", "strategy")
        table.add_column(column, justify="left" if text else "right", no_wrap=text)
    for row in report["results"]:
        cells = _cells(row)
        table.add_row(*cells, *[""] * (len(columns) - len(cells)))
    (console or _wide_console()).print(table)


def _wide_console() -> Console:
    """A console for the table: the terminal's width, at least ``TABLE_WIDTH`` when piped."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, TABLE_WIDTH))


def _cells(row: dict[str, Any]) -> list[str]:
    if "error" in row:
        return [row["model"], row["strategy"], "", f"{row['forward_s']:.2f}", row["error"]]
    cuda = row["peak_cuda_mib"]
    return [
        row["model"],
        row["strategy"],
        f"{row['sampling_params']:,}",
        f"{row['forward_s']:.2f}",
        f"{row['fit_s']:.2f}",
        f"{row['select_s']:.2f}",
        str(row["inference_passes"]),
        f"{row['inference_s']:.2f}",
        f"{row['selection_s']:.2f}",
        f"{row['selection_ratio']:.2f}",
        f"{row['peak_rss_mib']:.0f}",
        "-" if cuda is None else f"{cuda:.0f}",
        "met" if row["meets_targets"] else "missed",
    ]
