"""``fedal diagnose psl``: measure what Peer Study Learning's peers learn and pick.

The check behind the PSL paper's Figure 7 and section 3.3, run with fedal's own ``psl``
strategy on a centralised split of one dataset: a teacher (the task learner) is trained
on ``labels`` random training samples; ``psl.fit`` studies with it on those labels and on
``unlabelled`` other training samples; then the peers and the teacher score
``candidates`` further held-out training samples, whose true labels are used only here,
for measurement. Per option set and seed it reports

- each peer's accuracy on the candidates next to the teacher's (a peer that collapses
  under out-of-class study shows up here), and against the in-class-only reference run;
- the consensus share (equation 3's S_A over the candidates);
- Figure 7: candidates sorted by peer discrepancy, split into five equal groups; per
  group the accuracy of consensus and of non-consensus predictions;
- for the top-``budget`` picks of ``psl``, of the teacher's entropy and of random
  sampling: the teacher's accuracy on them (informative picks are the ones it gets
  wrong) and the class histogram of their true labels.

See experiments/README.md ("PSL's out-of-class study") for what it found.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedal.config import ConfigError, parse_override

if TYPE_CHECKING:
    import torch

    from fedal.datasets import LoadedDataset
    from fedal.models import Classifier
    from fedal.statistics import PairedComparison
    from fedal.views import SampleView

QUINTILES = 5
REFERENCE_OPTIONS = "out_of_class=false"
# psl options that only act in out-of-class study: dropped from the in-class-only twin
OUT_OF_CLASS_ONLY = (
    "ranking",
    "margin",
    "study_steps",
    "unlabelled_batchnorm",
    "unlabelled_batches_per_epoch",
)


@dataclass(frozen=True)
class DiagnoseSettings:
    """What ``fedal diagnose psl`` runs: data sizes, the teacher, the peers' options."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    labels: int = 1000
    unlabelled: int = 10000
    candidates: int = 3000
    budget: int = 100
    teacher_model: str = "resnet8"
    teacher_epochs: int = 15
    teacher_lr: float = 0.05
    teacher_batch_size: int = 32
    psl_epochs: int = 15
    unlabelled_batches: int = 20
    seeds: tuple[int, ...] = (0,)
    option_sets: tuple[str, ...] = ("",)
    reference: str = REFERENCE_OPTIONS
    device: str = "auto"
    batch_size: int = 512


@dataclass(frozen=True)
class StudySplit:
    """Disjoint labelled / unlabelled / candidate views of one dataset's training set.

    ``candidates`` carries no labels (as in a round); ``truth`` holds them for measuring.
    """

    labelled: SampleView
    unlabelled: SampleView
    candidates: SampleView
    truth: np.ndarray
    num_classes: int


@dataclass(frozen=True)
class PickReport:
    """The teacher's accuracy on a strategy's top-b picks and their true classes."""

    teacher_accuracy: float
    class_histogram: list[int]
    largest_class_share: float


@dataclass(frozen=True)
class QuintileReport:
    """One discrepancy group of Figure 7 (ascending discrepancy)."""

    consensus: int
    consensus_accuracy: float | None
    non_consensus: int
    non_consensus_accuracy: float | None


@dataclass(frozen=True)
class StudyReport:
    """One (option set, seed) run of the diagnosis."""

    options: str
    seed: int
    teacher_accuracy: float
    peer_accuracy: list[float]
    consensus_share: float | None
    quintiles: list[QuintileReport]
    picks: dict[str, PickReport]
    reference_peer_accuracy: float | None = None
    fit_seconds: float = 0.0

    @property
    def worst_peer_gap(self) -> float | None:
        """The lowest peer accuracy minus the in-class-only peers' mean (None without one)."""
        if self.reference_peer_accuracy is None:
            return None
        return min(self.peer_accuracy) - self.reference_peer_accuracy


# ---------------------------------------------------------------------------- measuring


def parse_option_set(text: str) -> dict[str, Any]:
    """``"ranking=paper out_of_class=false"`` -> ``{"ranking": "paper", "out_of_class": False}``
    (values read as TOML values, like ``--set``)."""
    return dict(parse_override(part) for part in text.split())


def reference_options(option_text: str, reference: str) -> str:
    """The in-class-only twin of an option set: its options with ``reference`` on top,
    without those that only act in out-of-class study (so twins are shared)."""
    own = {k: v for k, v in parse_option_set(option_text).items() if k not in OUT_OF_CLASS_ONLY}
    merged = {**own, **parse_option_set(reference)}
    return " ".join(f"{key}={json.dumps(value)}" for key, value in merged.items())


def draw_split(dataset: LoadedDataset, settings: DiagnoseSettings, seed: int) -> StudySplit:
    """Random disjoint labelled, unlabelled and candidate rows of the training set."""
    from fedal.views import SampleView

    sizes = (settings.labels, settings.unlabelled, settings.candidates)
    if sum(sizes) > len(dataset.train_y):
        raise ConfigError(
            f"diagnose: labels + unlabelled + candidates = {sum(sizes)} exceeds the "
            f"{len(dataset.train_y)} training samples of {dataset.meta.name}"
        )
    order = np.random.default_rng(seed).permutation(len(dataset.train_y))
    labelled, unlabelled, candidates = np.split(order[: sum(sizes)], np.cumsum(sizes)[:2])
    spec, images, targets = dataset.input_spec, dataset.train_x, dataset.train_y
    return StudySplit(
        labelled=SampleView(images, labelled, spec, targets[labelled]),
        unlabelled=SampleView(images, unlabelled, spec),
        candidates=SampleView(images, candidates, spec),
        truth=np.asarray(targets[candidates]),
        num_classes=dataset.meta.num_classes,
    )


def study(
    teacher: Classifier,
    split: StudySplit,
    options: Mapping[str, Any],
    *,
    label: str,
    seed: int,
    budget: int,
    build_model: Callable[..., Classifier],
    device: torch.device,
    batch_size: int = 512,
) -> StudyReport:
    """Fit ``psl`` with ``options`` against ``teacher`` on ``split``, then measure it."""
    import time

    import torch

    from strategies.base import RoundContext, top_k
    from strategies.psl import PeerStudyLearning
    from strategies.psl_losses import consensus_mask, discrepancy
    from strategies.scoring import entropy, predict_logits

    ctx = RoundContext(
        model=teacher,
        labelled=split.labelled,
        candidates=split.candidates,
        private_unlabelled=split.unlabelled,
        num_classes=split.num_classes,
        device=device,
        generator=torch.Generator().manual_seed(seed),
        rng=np.random.default_rng(seed),
        round=1,
        batch_size=batch_size,
        build_model=build_model,
    )
    psl = PeerStudyLearning(options)
    started = time.perf_counter()
    psl.fit(ctx)
    fit_seconds = time.perf_counter() - started
    peer_logits = psl.peer_logits(ctx, split.candidates)
    predictions = peer_logits.argmax(dim=-1).numpy()
    teacher_logits = predict_logits(teacher, split.candidates, device, batch_size)
    truth = split.truth
    correct_teacher = teacher_logits.argmax(dim=1).numpy() == truth

    consensus_share, quintiles = None, []
    if len(predictions) > 1:
        agreed = consensus_mask(torch.as_tensor(predictions)).numpy()
        consensus_share = float(agreed.mean())
        quintiles = _quintiles(discrepancy(peer_logits).numpy(), agreed, predictions, truth)

    pick_rng = np.random.default_rng([seed, 1])
    picks = {
        "psl": psl.select(ctx, budget),
        "entropy": top_k(entropy(torch.softmax(teacher_logits, dim=1)), budget),
        "random": pick_rng.choice(len(truth), size=min(budget, len(truth)), replace=False),
    }
    return StudyReport(
        options=label,
        seed=seed,
        teacher_accuracy=float(correct_teacher.mean()),
        peer_accuracy=[float((row == truth).mean()) for row in predictions],
        consensus_share=consensus_share,
        quintiles=quintiles,
        picks={
            name: _pick_report(rows, correct_teacher, truth, split.num_classes)
            for name, rows in picks.items()
        },
        fit_seconds=fit_seconds,
    )


def _quintiles(
    scores: np.ndarray, agreed: np.ndarray, predictions: np.ndarray, truth: np.ndarray
) -> list[QuintileReport]:
    """Figure 7: ascending discrepancy in five equal groups; consensus predictions are the
    peers' most common class, non-consensus accuracy is the peers' mean accuracy."""
    from scipy.stats import mode

    majority = mode(predictions, axis=0, keepdims=False).mode
    reports = []
    for rows in np.array_split(np.argsort(scores, kind="stable"), QUINTILES):
        inside = agreed[rows]
        consensus_rows, other_rows = rows[inside], rows[~inside]
        reports.append(
            QuintileReport(
                consensus=len(consensus_rows),
                consensus_accuracy=_mean_or_none(majority[consensus_rows] == truth[consensus_rows]),
                non_consensus=len(other_rows),
                non_consensus_accuracy=_mean_or_none(
                    predictions[:, other_rows] == truth[other_rows]
                ),
            )
        )
    return reports


def _pick_report(
    rows: np.ndarray, correct_teacher: np.ndarray, truth: np.ndarray, num_classes: int
) -> PickReport:
    histogram = np.bincount(truth[rows], minlength=num_classes)
    return PickReport(
        teacher_accuracy=float(correct_teacher[rows].mean()),
        class_histogram=histogram.tolist(),
        largest_class_share=float(histogram.max() / max(len(rows), 1)),
    )


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def train_teacher(
    dataset: LoadedDataset, split: StudySplit, settings: DiagnoseSettings, seed: int, device: Any
) -> Classifier:
    """The task learner: ``teacher_model`` trained on the split's labelled samples."""
    import torch

    from fedal.config import TrainingSection
    from fedal.models import build_for_dataset
    from fedal.training import train_supervised

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        teacher = build_for_dataset(settings.teacher_model, dataset).to(device)
    training = TrainingSection(
        epochs=settings.teacher_epochs,
        lr=settings.teacher_lr,
        batch_size=settings.teacher_batch_size,
        schedule="cosine",
    )
    train_supervised(teacher, split.labelled, training, device, torch.Generator().manual_seed(seed))
    return teacher.eval()


def run_diagnosis(settings: DiagnoseSettings) -> list[StudyReport]:
    """Every option set for every seed, each after its in-class-only twin (if a reference
    is set; twins shared by several option sets run once per seed)."""
    from fedal.datasets import load_dataset
    from fedal.training import default_device

    device = default_device() if settings.device == "auto" else _device(settings.device)
    dataset = load_dataset(settings.dataset, settings.data_dir)
    reports = []
    for seed in settings.seeds:
        split = draw_split(dataset, settings, seed)
        teacher = train_teacher(dataset, split, settings, seed, device)
        references: dict[str, StudyReport] = {}
        for text in settings.option_sets:
            report = _study_on(dataset, teacher, split, text, seed, settings, device)
            if settings.reference:
                reference_text = reference_options(text, settings.reference)
                if reference_text not in references:
                    references[reference_text] = _study_on(
                        dataset, teacher, split, reference_text, seed, settings, device
                    )
                    reports.append(references[reference_text])
                    print(_progress(references[reference_text]), flush=True)
                accuracy = float(np.mean(references[reference_text].peer_accuracy))
                report = replace(report, reference_peer_accuracy=accuracy)
            reports.append(report)
            print(_progress(report), flush=True)
    return reports


def _study_on(
    dataset: LoadedDataset,
    teacher: Classifier,
    split: StudySplit,
    option_text: str,
    seed: int,
    settings: DiagnoseSettings,
    device: torch.device,
) -> StudyReport:
    """:func:`study` with the settings' epochs and unlabelled batches under ``option_text``."""
    from fedal.models import build_for_dataset

    options = {
        "epochs": settings.psl_epochs,
        "unlabelled_batches_per_epoch": settings.unlabelled_batches,
        **parse_option_set(option_text),
    }
    return study(
        teacher,
        split,
        options,
        label=option_text or "(defaults)",
        seed=seed,
        budget=settings.budget,
        build_model=lambda name, dropout=0.0: build_for_dataset(name, dataset, dropout),
        device=device,
        batch_size=settings.batch_size,
    )


def _device(name: str) -> Any:
    import torch

    return torch.device(name)


def _progress(report: StudyReport) -> str:
    peers = ", ".join(f"{value:.3f}" for value in report.peer_accuracy)
    picks = " ".join(f"{name} {pick.teacher_accuracy:.2f}" for name, pick in report.picks.items())
    return (
        f"seed {report.seed} [{report.options}] teacher {report.teacher_accuracy:.3f} "
        f"peers {peers} | pick accuracy {picks} | fit {report.fit_seconds:.0f}s"
    )


# ---------------------------------------------------------------------------- summarising


def summarise(reports: Sequence[StudyReport]) -> list[dict[str, Any]]:
    """Per option set over seeds: mean peer gap, consensus share, pick accuracies, and the
    paired difference of psl's pick accuracy minus random's (t interval, Wilcoxon)."""
    from fedal.statistics import paired_comparison

    groups: dict[str, list[StudyReport]] = {}
    for report in reports:
        groups.setdefault(report.options, []).append(report)
    rows = []
    for options, group in groups.items():
        psl = [r.picks["psl"].teacher_accuracy for r in group]
        random = [r.picks["random"].teacher_accuracy for r in group]
        gaps = [r.worst_peer_gap for r in group if r.worst_peer_gap is not None]
        rows.append(
            {
                "options": options,
                "seeds": len(group),
                "teacher_accuracy": float(np.mean([r.teacher_accuracy for r in group])),
                "min_peer_accuracy": float(np.mean([min(r.peer_accuracy) for r in group])),
                "worst_peer_gap": float(min(gaps)) if gaps else None,
                "consensus_share": _mean_present([r.consensus_share for r in group]),
                "pick_accuracy": {
                    name: float(np.mean([r.picks[name].teacher_accuracy for r in group]))
                    for name in group[0].picks
                },
                "largest_class_share_psl": float(
                    max(r.picks["psl"].largest_class_share for r in group)
                ),
                "psl_minus_random": _comparison(paired_comparison(psl, random)),
            }
        )
    return rows


def _comparison(comparison: PairedComparison) -> dict[str, Any]:
    return {**asdict(comparison), "describe": comparison.describe()}


def _mean_present(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def render(reports: Sequence[StudyReport], summary: Sequence[Mapping[str, Any]]) -> None:
    """Per-run table, Figure 7 per run, and the per-option-set summary (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    runs = Table(title="PSL diagnosis: per run")
    for column in ("options", "seed", "teacher", "peers", "consensus", "psl", "entropy", "random"):
        runs.add_column(column)
    for r in reports:
        runs.add_row(
            r.options,
            str(r.seed),
            f"{r.teacher_accuracy:.3f}",
            ", ".join(f"{a:.3f}" for a in r.peer_accuracy),
            "-" if r.consensus_share is None else f"{r.consensus_share:.2f}",
            *(
                f"{p.teacher_accuracy:.2f} (max class {p.largest_class_share:.2f})"
                for p in r.picks.values()
            ),
        )
    console.print(runs)
    figure7 = Table(
        title="Figure 7: accuracy of consensus / non-consensus predictions "
        "by discrepancy group (low -> high)"
    )
    figure7.add_column("options")
    figure7.add_column("seed")
    for group in range(QUINTILES):
        figure7.add_column(f"group {group + 1}")
    for r in reports:
        figure7.add_row(r.options, str(r.seed), *(_quintile_cell(q) for q in r.quintiles))
    console.print(figure7)
    classes = Table(title="True classes of the top-b picks (count per class)")
    for column in ("options", "seed", *next(iter(reports)).picks):
        classes.add_column(column)
    for r in reports:
        counts = (" ".join(map(str, p.class_histogram)) for p in r.picks.values())
        classes.add_row(r.options, str(r.seed), *counts)
    console.print(classes)
    table = Table(
        title="PSL diagnosis: over seeds (pick accuracy = teacher's accuracy on top-b picks)"
    )
    for column in (
        "options",
        "seeds",
        "min peer",
        "worst gap vs in-class only",
        "consensus",
        "psl picks",
        "random picks",
        "psl - random [95% CI], Wilcoxon p",
    ):
        table.add_column(column)
    for row in summary:
        diff = row["psl_minus_random"]
        table.add_row(
            row["options"],
            str(row["seeds"]),
            f"{row['min_peer_accuracy']:.3f}",
            "-" if row["worst_peer_gap"] is None else f"{row['worst_peer_gap']:+.3f}",
            "-" if row["consensus_share"] is None else f"{row['consensus_share']:.2f}",
            f"{row['pick_accuracy']['psl']:.3f}",
            f"{row['pick_accuracy']['random']:.3f}",
            diff["describe"],
        )
    console.print(table)


def _quintile_cell(q: QuintileReport) -> str:
    def fmt(value: float | None, count: int) -> str:
        return "-" if value is None else f"{value:.2f} ({count})"

    consensus = fmt(q.consensus_accuracy, q.consensus)
    return f"{consensus} / {fmt(q.non_consensus_accuracy, q.non_consensus)}"


# ---------------------------------------------------------------------------- CLI


def add_diagnose_parser(subparsers: argparse._SubParsersAction) -> None:
    """``fedal diagnose psl ...``."""
    diagnose = subparsers.add_parser("diagnose", help="measure a strategy's mechanism")
    kinds = diagnose.add_subparsers(dest="kind", required=True)
    psl = kinds.add_parser("psl", help="what PSL's peers learn and pick (PSL Figure 7)")
    defaults = DiagnoseSettings()
    psl.add_argument("--dataset", default=defaults.dataset)
    psl.add_argument("--data-dir")
    psl.add_argument("--labels", type=int, default=defaults.labels, help="teacher's labels")
    psl.add_argument("--unlabelled", type=int, default=defaults.unlabelled)
    psl.add_argument("--candidates", type=int, default=defaults.candidates)
    psl.add_argument("--budget", type=int, default=defaults.budget, help="top-b picks")
    psl.add_argument("--teacher-model", default=defaults.teacher_model)
    psl.add_argument("--teacher-epochs", type=int, default=defaults.teacher_epochs)
    psl.add_argument("--psl-epochs", type=int, default=defaults.psl_epochs)
    psl.add_argument("--unlabelled-batches", type=int, default=defaults.unlabelled_batches)
    psl.add_argument("--seeds", default="0", help="comma-separated seeds")
    psl.add_argument(
        "--options",
        action="append",
        metavar="'KEY=VALUE ...'",
        help="a psl option set (repeatable); empty = the defaults",
    )
    psl.add_argument(
        "--reference",
        default=REFERENCE_OPTIONS,
        help="option set of the in-class-only reference run ('' for none)",
    )
    psl.add_argument("--device", default=defaults.device)
    psl.add_argument("-o", "--output", help="write every run and the summary as JSON")
    psl.set_defaults(handler=cmd_diagnose_psl)


def cmd_diagnose_psl(args: argparse.Namespace) -> int:
    """Run the diagnosis, print the tables, save the JSON."""
    settings = DiagnoseSettings(
        dataset=args.dataset,
        data_dir=args.data_dir,
        labels=args.labels,
        unlabelled=args.unlabelled,
        candidates=args.candidates,
        budget=args.budget,
        teacher_model=args.teacher_model,
        teacher_epochs=args.teacher_epochs,
        psl_epochs=args.psl_epochs,
        unlabelled_batches=args.unlabelled_batches,
        seeds=_seeds(args.seeds),
        option_sets=tuple(args.options or [""]),
        reference=args.reference,
        device=args.device,
    )
    _check(settings)
    reports = run_diagnosis(settings)
    summary = summarise(reports)
    render(reports, summary)
    if args.output:
        payload = {
            "settings": asdict(settings),
            "runs": [{**asdict(r), "worst_peer_gap": r.worst_peer_gap} for r in reports],
            "summary": summary,
        }
        Path(args.output).write_text(json.dumps(payload, indent=2))
        print(args.output)
    return 0


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--seeds: {text!r} is not a comma-separated list of integers") from None


def _check(settings: DiagnoseSettings) -> None:
    """Sizes and option sets fail here with one line, before any training."""
    from strategies.psl import PeerStudyLearning

    for name in ("labels", "unlabelled", "candidates", "budget", "psl_epochs", "teacher_epochs"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1")
    if not settings.seeds:
        raise ConfigError("--seeds: give at least one seed")
    for text in (*settings.option_sets, settings.reference):
        try:
            PeerStudyLearning.parse_options(parse_option_set(text))
        except (ValueError, TypeError) as error:
            raise ConfigError(f"--options {text!r}: {error}") from None
