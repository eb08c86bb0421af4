"""``fedal bench sampling``: the cost of every query strategy on one synthetic pool.

The measuring half of the bench: it imports torch and the query strategies, so
:mod:`fedal.app.bench.cli` imports it only when the command runs (building the CLI
parser stays cheap), and :mod:`fedal.app.bench.render` draws its rows.

Setup: ``pool`` random 32x32x3 uint8 images as candidates plus ``labelled`` random
images with uniformly random labels over 10 classes (no protected samples; the private
unlabelled view is the pool). Each scorer model (``resnet8``, optionally ``resnet18``)
is built once from the seed, with dropout before the head so the MC-dropout strategies
run, and left untrained: the bench measures cost, not selection quality. A second one,
seeded with ``seed + 1``, is the context's ``global_model``, as under
``query.scoring_model = "both"`` (KAFAL, FEAL and LoGo score with it; the others ignore
it). Every strategy gets a fresh instance with default options and a fresh, identically
seeded context.

What is measured, per scorer and strategy (wall clock; CUDA synchronised):

- ``forward_s``: one :func:`strategies.scoring.predict_logits` pass of the scorer over
  the pool, timed once per scorer after a warm-up batch. The least a score-based
  strategy pays. Per scorer the report's ``forwards`` also give the pass's arithmetic
  (``gflop_per_image``, counted by :class:`torch.utils.flop_counter.FlopCounterMode`),
  the achieved ``tflops`` and, on a CUDA device with a known bf16 peak
  (:data:`fedal.compute.BF16_PEAK_TFLOPS`), ``peak_fraction``.
- ``fit_s``: ``strategy.fit(ctx)``, the training of a strategy's private networks (PSL's
  peers, PAL's scoring network, LHD's main/EMA pair, ADS's heads); zero for the others.
  Reported on its own: it is training, like the helper's, not selection.
- ``select_s``: ``strategy.select(ctx, budget)``, split by an
  :func:`strategies.scoring.inference_clock` into ``inference_s`` (the network passes
  over views, ``inference_passes`` of them: PSL runs one per peer, PAL one per rotation
  batch set, LHD two) and ``selection_s = select_s - inference_s``, the selection work
  after the forward passes (scores, distances, k-means, PAL's sub-query fine-tuning).
- ``selection_ratio = selection_s / forward_s`` and ``meets_targets``: the targets of
  experiments/README.md ("Sampling cost"), selection work after the forward pass at
  most one forward pass (``selection_ratio <= 1``) and peak extra memory under 2 GB
  (CPU and CUDA).
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

Everything runs as the clients compute (:mod:`fedal.compute`): under bf16 autocast and
in the channels_last layout on CUDA unless ``--bf16 off`` / ``--channels-last off`` (or
on the CPU too with ``always``), cuDNN autotuning.

Results are typed: a :class:`StrategyCost` per measured scorer and strategy, a
:class:`StrategyFailure` where fit or select raised, and a :class:`SamplingReport`
around them. Their ``as_dict()`` is the JSON the command writes, with the keys of
experiments/results/bench_sampling_*.json.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from fedal.choices import ComputeSwitch
from fedal.compute import bf16_peak_tflops, compute_context, place, synchronise
from fedal.models import Classifier, build_model, count_parameters
from fedal.views import InputSpec, SampleView
from strategies import RoundContext, available, build_strategy
from strategies.scoring import inference_clock, predict_logits

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
CLEAR_REFS = Path("/proc/self/clear_refs")
PROC_STATUS = Path("/proc/self/status")
MIB = 2**20
MAX_SELECTION_RATIO = 1.0
MAX_PEAK_MIB = 2048.0

T = TypeVar("T")


@dataclass(frozen=True)
class SamplingSettings:
    """What ``fedal bench sampling`` runs; :mod:`fedal.app.bench.cli` holds the defaults.

    An empty ``strategies`` means every registered strategy.
    """

    pool: int
    budget: int
    labelled: int
    strategies: tuple[str, ...]
    models: tuple[str, ...]
    device: str
    batch_size: int
    dropout: float
    seed: int
    bf16: ComputeSwitch = "cuda"
    channels_last: ComputeSwitch = "cuda"


@dataclass(frozen=True)
class ForwardCost:
    """One scorer's forward pass over the pool (the module docstring's ``forwards``)."""

    model: str
    seconds: float
    gflop_per_image: float
    tflops: float
    peak_tflops: float | None
    peak_fraction: float | None


@dataclass(frozen=True)
class StrategyCost:
    """One strategy measured with one scorer; the fields are the module docstring's."""

    model: str
    strategy: str
    forward_s: float
    fit_s: float
    select_s: float
    selected: int
    inference_s: float
    inference_passes: int
    selection_s: float
    selection_ratio: float
    peak_rss_mib: float
    peak_cuda_mib: float | None
    meets_targets: bool
    sampling_params: int

    def as_dict(self) -> dict[str, Any]:
        """The row as written to the JSON report."""
        return asdict(self)

    def summary(self) -> str:
        """One progress line: the timings."""
        return (
            f"fit {self.fit_s:.2f}s, select {self.select_s:.2f}s "
            f"(inference {self.inference_s:.2f}s, selection {self.selection_s:.2f}s)"
        )


@dataclass(frozen=True)
class StrategyFailure:
    """A strategy whose fit or select raised; ``fit_s`` is None when fit did."""

    model: str
    strategy: str
    forward_s: float
    fit_s: float | None
    error: str

    def as_dict(self) -> dict[str, Any]:
        """The row as written to the JSON report (``fit_s`` only where fit finished)."""
        row = asdict(self)
        if self.fit_s is None:
            del row["fit_s"]
        return row

    def summary(self) -> str:
        """One progress line: the error."""
        return self.error


StrategyRow = StrategyCost | StrategyFailure


@dataclass(frozen=True)
class MemoryMethod:
    """How the peaks were measured (the module docstring's ``peak_*_mib``)."""

    cpu: Literal["vmhwm", "ru_maxrss"]
    cuda: Literal["max_memory_allocated"] | None


@dataclass(frozen=True)
class SamplingReport:
    """One bench run: its setup and a row per scorer and strategy, in run order."""

    pool: int
    budget: int
    labelled: int
    num_classes: int
    image_shape: tuple[int, int, int]
    device: str
    torch_threads: int
    batch_size: int
    seed: int
    bf16: ComputeSwitch
    channels_last: ComputeSwitch
    memory_method: MemoryMethod
    forwards: tuple[ForwardCost, ...]
    results: tuple[StrategyRow, ...]

    def as_dict(self) -> dict[str, Any]:
        """The JSON report ``fedal bench sampling`` writes."""
        return {
            **{field.name: getattr(self, field.name) for field in fields(self)},
            "image_shape": list(self.image_shape),
            "memory_method": asdict(self.memory_method),
            "forwards": [asdict(forward) for forward in self.forwards],
            "results": [row.as_dict() for row in self.results],
        }


def run_sampling_bench(
    settings: SamplingSettings, progress: Callable[[str], None] = lambda _: None
) -> SamplingReport:
    """Time every requested strategy with every requested scorer."""
    names = settings.strategies or tuple(available())
    device = _resolve_device(settings.device)
    images, labels = _synthetic_pool(settings)
    rows: list[StrategyRow] = []
    forwards: list[ForwardCost] = []
    with compute_context(device, settings):
        for model_name in settings.models:
            scorer = _scorer(model_name, settings.seed, settings, device)
            scorers = scorer, _scorer(model_name, settings.seed + 1, settings, device)
            forward = _time_forward(model_name, _context(scorers, images, labels, settings, device))
            forwards.append(forward)
            progress(
                f"{model_name}: forward pass over {settings.pool} images "
                f"{forward.seconds:.2f}s ({forward.tflops:.2f} TFLOP/s)"
            )
            for name in names:
                ctx = _context(scorers, images, labels, settings, device)
                row = _bench_strategy(model_name, name, ctx, settings.budget, forward.seconds)
                rows.append(row)
                progress(f"{model_name} | {name}: {row.summary()}")
    return SamplingReport(
        pool=settings.pool,
        budget=settings.budget,
        labelled=settings.labelled,
        num_classes=NUM_CLASSES,
        image_shape=IMAGE_SHAPE,
        device=str(device),
        torch_threads=torch.get_num_threads(),
        batch_size=settings.batch_size,
        seed=settings.seed,
        bf16=settings.bf16,
        channels_last=settings.channels_last,
        memory_method=MemoryMethod(
            cpu="vmhwm" if _can_reset_hwm() else "ru_maxrss",
            cuda="max_memory_allocated" if device.type == "cuda" else None,
        ),
        forwards=tuple(forwards),
        results=tuple(rows),
    )


def _bench_strategy(
    model: str, name: str, ctx: RoundContext, budget: int, forward_s: float
) -> StrategyRow:
    """Fit and select once, timing each and tracking peak memory; errors are recorded."""
    strategy = build_strategy(name)
    fit_s: float | None = None
    with _peak_memory(ctx.device) as peaks:
        try:
            _, fit_s = _timed(lambda: strategy.fit(ctx), ctx.device)
            with inference_clock() as inference:
                picks, select_s = _timed(lambda: strategy.select(ctx, budget), ctx.device)
        except (RuntimeError, ValueError) as error:
            message = f"{type(error).__name__}: {error}"
            return StrategyFailure(model, name, forward_s, fit_s, message)
    selection_s = max(0.0, select_s - inference.seconds)
    selection_ratio = selection_s / forward_s
    within_memory = all(
        peak is None or peak < MAX_PEAK_MIB for peak in (peaks.rss_mib, peaks.cuda_mib)
    )
    own_parameters = strategy.sampling_parameters()
    return StrategyCost(
        model=model,
        strategy=name,
        forward_s=forward_s,
        fit_s=fit_s,
        select_s=select_s,
        selected=len(picks),
        inference_s=inference.seconds,
        inference_passes=inference.passes,
        selection_s=selection_s,
        selection_ratio=selection_ratio,
        peak_rss_mib=peaks.rss_mib,
        peak_cuda_mib=peaks.cuda_mib,
        meets_targets=selection_ratio <= MAX_SELECTION_RATIO and within_memory,
        sampling_params=count_parameters(ctx.model) if own_parameters is None else own_parameters,
    )


# ---------------------------------------------------------------------------- setup


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _synthetic_pool(settings: SamplingSettings) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random uint8 images (labelled rows first, then the pool) and labels."""
    rng = np.random.default_rng(settings.seed)
    total = settings.labelled + settings.pool
    images = rng.integers(0, 256, size=(total, *IMAGE_SHAPE), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=settings.labelled).astype(np.int64)
    return images, labels


def _build(name: str, dropout: float = 0.0) -> Classifier:
    """A fresh network for the synthetic images (the context's ``build_model``)."""
    return build_model(
        name,
        in_channels=IMAGE_SHAPE[0],
        num_classes=NUM_CLASSES,
        image_size=IMAGE_SHAPE[1:],
        dropout=dropout,
    )


def _scorer(name: str, seed: int, settings: SamplingSettings, device: torch.device) -> Classifier:
    """An untrained scoring model, seeded with ``seed``, in eval mode on ``device``."""
    torch.manual_seed(seed)
    return place(_build(name, settings.dropout), device).eval()


def _context(
    scorers: tuple[Classifier, Classifier],
    images: np.ndarray,
    labels: np.ndarray,
    settings: SamplingSettings,
    device: torch.device,
) -> RoundContext:
    """A fresh round context over the synthetic pool, seeded with ``settings.seed``;
    ``scorers`` are its ``model`` and its ``global_model``.

    The global torch seed is reset too, so strategies drawing from it start alike.
    """
    spec = InputSpec(mean=(0.5,) * IMAGE_SHAPE[0], std=(0.25,) * IMAGE_SHAPE[0])
    labelled_rows = np.arange(settings.labelled)
    pool_rows = np.arange(settings.labelled, len(images))
    candidates = SampleView(images, pool_rows, spec)
    torch.manual_seed(settings.seed)
    scorer, received = scorers
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
        global_model=received,
    )


# ---------------------------------------------------------------------------- measuring


def _time_forward(model: str, ctx: RoundContext) -> ForwardCost:
    """One scorer pass over the candidates, after a warm-up batch whose arithmetic is
    counted: its seconds, FLOPs and the share of the device's bf16 peak."""
    warm_up = ctx.candidates.subset(np.arange(min(ctx.batch_size, len(ctx.candidates))))
    with FlopCounterMode(display=False) as counter:
        predict_logits(ctx.model, warm_up, ctx.device, ctx.batch_size)
    flop_per_image = counter.get_total_flops() / max(1, len(warm_up))
    _, seconds = _timed(
        lambda: predict_logits(ctx.model, ctx.candidates, ctx.device, ctx.batch_size),
        ctx.device,
    )
    tflops = flop_per_image * len(ctx.candidates) / seconds / 1e12
    peak = bf16_peak_tflops(ctx.device)
    return ForwardCost(
        model=model,
        seconds=seconds,
        gflop_per_image=flop_per_image / 1e9,
        tflops=tflops,
        peak_tflops=peak,
        peak_fraction=None if peak is None else tflops / peak,
    )


def _timed(work: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """``work()``'s result and its wall time in seconds (CUDA synchronised)."""
    synchronise(device)
    started = time.perf_counter()
    result = work()
    synchronise(device)
    return result, time.perf_counter() - started


@dataclass
class _Peaks:
    """Peak extra memory in MiB, filled in when :func:`_peak_memory` exits."""

    rss_mib: float = 0.0
    cuda_mib: float | None = None


@contextmanager
def _peak_memory(device: torch.device) -> Iterator[_Peaks]:
    """Yield the peaks of CPU (and, on CUDA, device) memory above their level on entry."""
    peaks = _Peaks()
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    cpu_baseline = _reset_cpu_peak()
    yield peaks
    peaks.rss_mib = max(0, _cpu_peak() - cpu_baseline) / MIB
    if use_cuda:
        peaks.cuda_mib = (torch.cuda.max_memory_allocated(device) - cuda_before) / MIB


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
