"""``fedal bench sampling`` on a tiny pool: the JSON fields, the typed rows and the table
(no timings)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fedal.app.bench.cli import add_bench_parser
from fedal.app.bench.render import render_sampling_report
from fedal.app.bench.sampling import (
    SamplingSettings,
    StrategyCost,
    StrategyFailure,
    run_sampling_bench,
)
from fedal.cli import main
from strategies.scoring import inference_clock, inference_pass

# A report written before the bench became a package: new reports keep its keys, in order.
STORED_REPORT = Path(__file__).parents[1] / "experiments/results/bench_sampling_resnet8_50k.json"


def test_bench_sampling_writes_json_and_prints_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "bench.json"
    status = main(
        [
            "bench", "sampling", "--pool", "64", "--budget", "8", "--labelled", "16",
            "--strategies", "random,coreset,psl", "--batch-size", "32", "--device", "cpu",
            "--output", str(output),
        ]
    )  # fmt: skip

    assert status == 0
    report = json.loads(output.read_text())
    stored = json.loads(STORED_REPORT.read_text())
    # the stored report predates the compute switches and the forward-pass rows
    newer = ("bf16", "channels_last", "forwards")
    assert [key for key in report if key not in newer] == list(stored)
    assert report["bf16"] == report["channels_last"] == "cuda"
    assert report["forwards"][0]["model"] == "resnet8"
    assert list(report["memory_method"]) == list(stored["memory_method"])
    assert (report["pool"], report["budget"], report["labelled"]) == (64, 8, 16)
    assert report["image_shape"] == [3, 32, 32]
    assert report["device"] == "cpu"
    assert report["memory_method"]["cpu"] in ("vmhwm", "ru_maxrss")
    assert report["memory_method"]["cuda"] is None
    assert [(row["model"], row["strategy"]) for row in report["results"]] == [
        ("resnet8", "random"),
        ("resnet8", "coreset"),
        ("resnet8", "psl"),
    ]
    for row in report["results"]:
        assert list(row) == list(stored["results"][0])
        assert row["selected"] == 8
        assert row["peak_cuda_mib"] is None
        assert row["sampling_params"] > 0
        assert row["selection_s"] == pytest.approx(row["select_s"] - row["inference_s"])
        assert row["selection_ratio"] == pytest.approx(row["selection_s"] / row["forward_s"])
        within = row["selection_ratio"] <= 1.0 and row["peak_rss_mib"] < 2048
        assert row["meets_targets"] is within
    passes = {row["strategy"]: row["inference_passes"] for row in report["results"]}
    # random runs no network; coreset embeds the pool and the labelled set; PSL runs
    # one pass per peer (two by default)
    assert passes == {"random": 0, "coreset": 2, "psl": 2}
    printed = capsys.readouterr().out
    for text in ("sampling bench", "strategy", "random", "coreset", "resnet8", str(output)):
        assert text in printed


def small_settings(**changes: Any) -> SamplingSettings:
    """A pool of 64 on the CPU with a dropout-free ResNet-8 scorer, then ``changes``."""
    settings = SamplingSettings(
        pool=64,
        budget=8,
        labelled=16,
        strategies=(),
        models=("resnet8",),
        device="cpu",
        batch_size=32,
        dropout=0.0,
        seed=0,
    )
    return dataclasses.replace(settings, **changes)


def test_a_failing_strategy_is_a_row_and_the_bench_goes_on() -> None:
    # without dropout in the scorer, MC-dropout's select raises (fit, a no-op, finished)
    progress: list[str] = []
    report = run_sampling_bench(small_settings(strategies=("bald", "random")), progress.append)

    failed, measured = report.results
    assert isinstance(failed, StrategyFailure)
    assert isinstance(measured, StrategyCost)
    assert (failed.strategy, measured.strategy) == ("bald", "random")
    assert failed.error.startswith("ValueError: MC-dropout strategies")
    assert failed.fit_s is not None
    assert list(failed.as_dict()) == ["model", "strategy", "forward_s", "fit_s", "error"]
    assert measured.selected == 8
    assert measured.forward_s == failed.forward_s  # one forward pass per scorer
    assert [line.split(":")[0] for line in progress] == [
        "resnet8",
        "resnet8 | bald",
        "resnet8 | random",
    ]
    assert failed.error in progress[1]

    console = Console(record=True, width=250)
    render_sampling_report(report, console)
    table = console.export_text()
    assert "ValueError: MC-dropout strategies" in table
    random_row = next(line for line in table.splitlines() if "random" in line)
    assert "met" in random_row


def test_a_failure_before_fit_finished_has_no_fit_time() -> None:
    failure = StrategyFailure("resnet8", "psl", 1.5, None, "RuntimeError: out of memory")
    assert failure.as_dict() == {
        "model": "resnet8",
        "strategy": "psl",
        "forward_s": 1.5,
        "error": "RuntimeError: out of memory",
    }


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--strategies", "nope"),
        ("--models", "vgg"),
        ("--pool", "0"),
        ("--budget", "-1"),
        ("--dropout", "1.0"),
    ],
)
def test_bench_rejects_bad_settings_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    output = tmp_path / "bench.json"
    assert main(["bench", "sampling", option, value, "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert value in error
    assert error.count("\n") == 1
    assert not output.exists()


def test_building_the_bench_parser_imports_neither_torch_nor_the_strategies() -> None:
    script = (
        "import argparse, sys\n"
        "from fedal.app.bench.cli import add_bench_parser\n"
        "add_bench_parser(argparse.ArgumentParser().add_subparsers())\n"
        "print(sorted({'torch', 'strategies', 'rich'} & set(sys.modules)))\n"
    )
    imported = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert imported.strip() == "[]"


def test_bench_sampling_parser_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "sampling"])
    assert (args.pool, args.budget, args.labelled, args.models) == (50_000, 1000, 1000, "resnet8")
    assert (args.device, args.batch_size, args.dropout, args.seed) == ("auto", 512, 0.3, 0)
    assert (args.strategies, args.output) == (None, "bench.json")


def test_inference_clock_counts_outermost_passes_inside_its_block() -> None:
    with inference_clock() as clock:
        with inference_pass(), inference_pass():
            pass
        with inference_pass():
            pass
    with inference_pass():
        pass

    assert clock.passes == 2
    assert clock.seconds >= 0
    assert not clock.running


def test_the_scoring_forward_is_counted_and_the_bench_runs_the_cuda_path() -> None:
    """bf16 autocast and channels_last everywhere (the CUDA path, here on the CPU): the
    strategies still select, and the forward pass reports its arithmetic (no peak known
    for a CPU)."""
    report = run_sampling_bench(
        small_settings(strategies=("entropy", "badge"), bf16="always", channels_last="always")
    )
    assert report.bf16 == report.channels_last == "always"
    assert all(isinstance(row, StrategyCost) and row.selected == 8 for row in report.results)
    (forward,) = report.forwards
    assert forward.model == "resnet8" and forward.gflop_per_image > 0.01
    assert forward.tflops == pytest.approx(forward.gflop_per_image * 64 / forward.seconds / 1000)
    assert forward.peak_tflops is None and forward.peak_fraction is None
    assert report.as_dict()["forwards"][0]["model"] == "resnet8"
