"""``fedal diagnose psl`` on the four-moons toy: what it measures and saves, and its
input errors (the numbers it found on Fashion-MNIST are in experiments/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedal.app.diagnose import QUINTILES, reference_options
from fedal.cli import main

TOY = [
    "diagnose", "psl", "--dataset", "four-moons", "--teacher-model", "mlp",
    "--labels", "40", "--unlabelled", "300", "--candidates", "400", "--budget", "20",
    "--teacher-epochs", "20", "--psl-epochs", "3", "--unlabelled-batches", "2",
]  # fmt: skip


def test_diagnose_reports_peers_figure7_and_picks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "diagnose.json"
    options = ["--options", "peer_model='mlp'", "--options", "peer_model='mlp' ranking='paper'"]
    status = main([*TOY, "--seeds", "0,1", *options, "-o", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "Figure 7" in printed and "psl - random" in printed
    assert "True classes of the top-b picks" in printed
    report = json.loads(out.read_text())
    runs = report["runs"]
    # per seed: the shared in-class-only twin, then the two option sets
    assert [run["options"] for run in runs[:3]] == [
        'peer_model="mlp" out_of_class=false',
        "peer_model='mlp'",
        "peer_model='mlp' ranking='paper'",
    ]
    assert len(runs) == 6 and [run["seed"] for run in runs] == [0, 0, 0, 1, 1, 1]
    for run in runs:
        assert len(run["peer_accuracy"]) == 2
        assert all(0 <= acc <= 1 for acc in run["peer_accuracy"])
        assert 0.5 < run["teacher_accuracy"] <= 1  # four classes: chance is 0.25
        groups = run["quintiles"]
        assert len(groups) == QUINTILES
        assert sum(g["consensus"] + g["non_consensus"] for g in groups) == 400
        consensus = sum(g["consensus"] for g in groups) / 400
        assert consensus == pytest.approx(run["consensus_share"])
        assert set(run["picks"]) == {"psl", "entropy", "random"}
        for pick in run["picks"].values():
            assert sum(pick["class_histogram"]) == 20
            assert pick["largest_class_share"] == max(pick["class_histogram"]) / 20
    studied = runs[1]
    twin = runs[0]
    assert studied["reference_peer_accuracy"] == pytest.approx(sum(twin["peer_accuracy"]) / 2)
    assert studied["worst_peer_gap"] == pytest.approx(
        min(studied["peer_accuracy"]) - studied["reference_peer_accuracy"]
    )
    summary = {row["options"]: row for row in report["summary"]}
    paired = summary["peer_model='mlp'"]["psl_minus_random"]
    psl = [
        run["picks"]["psl"]["teacher_accuracy"]
        for run in runs
        if run["options"] == "peer_model='mlp'"
    ]
    random = [
        run["picks"]["random"]["teacher_accuracy"]
        for run in runs
        if run["options"] == "peer_model='mlp'"
    ]
    assert paired["n"] == 2
    assert paired["mean"] == pytest.approx((psl[0] - random[0] + psl[1] - random[1]) / 2)


def test_entropy_picks_are_harder_than_random_ones(tmp_path: Path) -> None:
    """The measurement itself: the teacher's most uncertain candidates are the ones it
    gets wrong more often than random candidates (a check of the pick-accuracy column)."""
    out = tmp_path / "diagnose.json"
    assert main([*TOY, "--seeds", "0", "--options", "peer_model='mlp'", "-o", str(out)]) == 0
    run = json.loads(out.read_text())["runs"][1]
    assert run["picks"]["entropy"]["teacher_accuracy"] < run["picks"]["random"]["teacher_accuracy"]


def test_in_class_twin_drops_out_of_class_only_options() -> None:
    assert reference_options("ranking='paper' schedule='cosine'", "out_of_class=false") == (
        'schedule="cosine" out_of_class=false'
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--options", "ranking='sideways'"], "ranking"),
        (["--options", "colour=3"], "unknown field"),
        (["--seeds", "a,b"], "--seeds"),
        (["--candidates", "0"], "--candidates"),
        (["--labels", "2000", "--unlabelled", "2000"], "exceeds"),
    ],
)
def test_bad_input_fails_with_one_line(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*TOY, *arguments]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedal: error: ") and message in lines[0]
