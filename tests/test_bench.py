"""``fedal bench sampling`` on a tiny pool: the JSON fields and the table (no timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedal.cli import main

ROW_FIELDS = {
    "model",
    "strategy",
    "forward_s",
    "fit_s",
    "select_s",
    "overhead_s",
    "selected",
    "peak_rss_mib",
    "peak_cuda_mib",
    "sampling_params",
}


def test_bench_sampling_writes_json_and_prints_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "bench.json"
    status = main(
        [
            "bench", "sampling", "--pool", "64", "--budget", "8", "--labelled", "16",
            "--strategies", "random,coreset", "--batch-size", "32", "--device", "cpu",
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
    ]
    for row in report["results"]:
        assert set(row) == ROW_FIELDS
        assert row["selected"] == 8
        assert row["peak_cuda_mib"] is None
        assert row["sampling_params"] > 0
        assert row["overhead_s"] >= 0
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
