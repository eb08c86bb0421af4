"""The allocator tuning of computing processes (fedal/allocator.py), measured in fresh
processes: a CNN's training steps fault in far fewer pages with it, and compute the
same weights."""

from __future__ import annotations

import json
import subprocess
import sys

TRAINING_STEPS = """
import json, resource, sys
import torch
from fedal.allocator import reuse_freed_memory
from fedal.models import build_model

tuned = sys.argv[1] == "tuned" and reuse_freed_memory()
torch.set_num_threads(1)
torch.manual_seed(0)
model = build_model("cnn", in_channels=1, num_classes=10, image_size=(28, 28))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
inputs, targets = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()
    optimizer.step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
total = float(sum(p.detach().double().sum() for p in model.parameters()))
print(json.dumps({"tuned": tuned, "faults": faults, "weights": total}))
"""


def training_steps(mode: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", TRAINING_STEPS, mode], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_reusing_freed_memory_cuts_page_faults_and_keeps_results() -> None:
    default, tuned = training_steps("default"), training_steps("tuned")
    assert tuned["tuned"] is True and default["tuned"] is False
    assert tuned["faults"] < default["faults"] / 3, (tuned, default)
    assert tuned["weights"] == default["weights"]
