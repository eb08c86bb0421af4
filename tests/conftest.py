"""Suite-wide settings: one torch thread in the test process, no Flower telemetry.

On a 2-core machine the suite also runs Ray workers and Flower processes; a second
torch thread in the test process oversubscribes the cores and slows training ~8x.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
