"""Suite-wide settings: one torch thread in the test process, no Flower telemetry, and
one Ray head (``ray start --head``) that every simulation joins through ``RAY_ADDRESS``.

On a 2-core machine the suite also runs Ray workers and Flower processes; a second
torch thread in the test process oversubscribes the cores and slows training ~8x.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from ray_head import RayHead, ray_head

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def shared_ray_head() -> Iterator[RayHead]:
    """The suite's Ray cluster; ``ray.init()`` without an address joins it."""
    with ray_head() as head:
        previous = os.environ.get("RAY_ADDRESS")
        os.environ["RAY_ADDRESS"] = head.address
        yield head
        if previous is None:
            del os.environ["RAY_ADDRESS"]
        else:
            os.environ["RAY_ADDRESS"] = previous
