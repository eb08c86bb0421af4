"""``fedal bench sampling`` on a tiny pool: the JSON fields and the table (no timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedal.cli import main
from strategies.scoring import inference_clock, inference_pass

ROW_FIELDS = {
    "model",
    "strategy",
    "forward_s",
    "fit_s",
    "select_s",
    "inference_s",
    "inference_passes",
    "selection_s",
    "selection_ratio",
    "selected",
    "peak_rss_mib",
    "peak_cuda_mib",
    "sampling_params",
    "meets_targets",
}


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
    assert (report["pool"], report["budget"], report["labelled"]) == (64, 8, 16)
    assert report["device"] == "cpu"
    assert report["memory_method"]["cpu"] in ("vmhwm", "ru_maxrss")
    assert [(row["model"], row["strategy"]) for row in report["results"]] == [
        ("resnet8", "random"),
        ("resnet8", "coreset"),
        ("resnet8", "psl"),
    ]
    for row in report["results"]:
        assert set(row) == ROW_FIELDS
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


@pytest.mark.parametrize(
    ("option", "value"),
    [("--strategies", "nope"), ("--models", "vgg"), ("--pool", "0"), ("--budget", "-1")],
)
def test_bench_rejects_bad_settings_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    output = tmp_path / "bench.json"
    assert main(["bench", "sampling", option, value, "--output", str(output)]) == 2
    assert value in capsys.readouterr().err
    assert not output.exists()


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
