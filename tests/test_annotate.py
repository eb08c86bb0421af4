"""The labelling page of ``fedal annotate`` (real Starlette app, real SQLite queue)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from node_images import CLASSES, write_png
from PIL import Image
from starlette.testclient import TestClient

from fedal.app.annotate import annotate_app, check_binding
from fedal.cli import main
from fedal.config import ConfigError
from fedal.labelling_queue import LabellingQueue


@pytest.fixture()
def node(tmp_path: Path) -> Path:
    """A node folder with four images, 1 and 2 queued in round 1, 3 in round 2, and
    image 0 protected."""
    paths = [f"camera/{k}.png" for k in range(4)]
    for k, path in enumerate(paths):
        write_png(tmp_path / path, 60 * k, size=40)
    queue = LabellingQueue(tmp_path)
    queue.use_classes(CLASSES)
    queue.register(paths)
    queue.protect(np.array([0]))
    queue.enqueue(np.array([1, 2]), round_number=1)
    queue.enqueue(np.array([3]), round_number=2)
    return tmp_path


def test_the_page_shows_the_oldest_waiting_image_and_commits_each_answer(node: Path) -> None:
    client = TestClient(annotate_app(node))
    page = client.get("/")
    assert page.status_code == 200
    assert 'id="waiting">3<' in page.text
    assert 'src="/image/1"' in page.text and "asked for in round 1" in page.text
    for label, name in enumerate(CLASSES):
        assert f'action="/answer/1/{label}"' in page.text and f">{name}</button>" in page.text
    shown = client.get("/image/1")
    assert shown.headers["content-type"] == "image/png"
    answered = client.post("/answer/1/1", follow_redirects=False)
    assert answered.status_code == 303 and answered.headers["location"] == "/"
    images, labels = LabellingQueue(node).answered()  # committed before the reply
    assert (images.tolist(), labels.tolist()) == ([1], [1])
    page = client.post("/answer/2/0").text  # follows the redirect to the next image
    assert 'src="/image/3"' in page and 'id="waiting">1<' in page
    assert "<tr><td>1</td><td>2</td></tr>" in page
    client.post("/answer/3/1")
    page = client.get("/").text
    assert 'id="nothing"' in page and 'http-equiv="refresh"' in page
    assert "<tr><td>2</td><td>1</td></tr>" in page
    assert client.post("/answer/3/0").status_code == 200  # a resent click keeps the first
    assert LabellingQueue(node).answered()[1].tolist() == [1, 0, 1]
    assert client.post("/answer/3/9", follow_redirects=False).status_code == 400


def test_protected_and_unqueued_images_are_never_served(node: Path) -> None:
    client = TestClient(annotate_app(node))
    assert client.get("/image/0").status_code == 404  # protected
    LabellingQueue(node).protect(np.array([1]))  # marked protected after it was queued
    assert client.get("/image/1").status_code == 404
    assert 'src="/image/2"' in client.get("/").text
    assert client.post("/answer/1/0").status_code == 200
    assert 1 not in LabellingQueue(node).answered()[0].tolist()
    assert client.get("/image/99").status_code == 404


def test_a_token_is_asked_for_and_kept_in_a_cookie(node: Path) -> None:
    token = "a-long-enough-secret-token"
    client = TestClient(annotate_app(node, token))
    assert client.get("/").status_code == 401
    assert client.get("/image/1").status_code == 401
    assert client.post("/answer/1/0").status_code == 401
    assert client.get("/?token=wrong").status_code == 401
    assert client.get(f"/?token={token}").status_code == 200  # sets the cookie, redirects
    assert client.post("/answer/1/0", follow_redirects=False).status_code == 303
    assert LabellingQueue(node).answered()[0].tolist() == [1]


def test_answers_from_another_site_are_refused(node: Path) -> None:
    client = TestClient(annotate_app(node))
    refused = client.post("/answer/1/0", headers={"origin": "https://evil.example"})
    assert refused.status_code == 403
    assert LabellingQueue(node).waiting() == 3


def test_binding_beyond_localhost_needs_the_flag_and_a_token(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check_binding("127.0.0.1", "", allow_remote=False)
    check_binding("localhost", "", allow_remote=False)
    check_binding("::1", "", allow_remote=False)
    with pytest.raises(ConfigError, match="add --allow-remote and a token"):
        check_binding("0.0.0.0", "a-long-enough-secret-token", allow_remote=False)
    with pytest.raises(ConfigError, match="needs a token of 16 characters or more"):
        check_binding("192.168.1.5", "short", allow_remote=True)
    check_binding("192.168.1.5", "a-long-enough-secret-token", allow_remote=True)
    assert main(["annotate", str(node), "--host", "0.0.0.0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fedal: error: annotate: --host 0.0.0.0 is reachable") and (
        error.count("\n") == 1
    )
    assert main(["annotate", str(node / "missing")]) == 2
    assert "node folder" in capsys.readouterr().err


def test_images_are_shown_upright_and_small(node: Path) -> None:
    big = node / "camera/big.png"
    Image.new("RGB", (2000, 1000), (10, 200, 30)).save(big)
    queue = LabellingQueue(node)
    queue.register(["camera/big.png"])
    queue.enqueue(np.array([4]), round_number=3)
    shown = TestClient(annotate_app(node)).get("/image/4")
    with Image.open(BytesIO(shown.content)) as image:
        assert max(image.size) <= 384 and image.size[0] == 2 * image.size[1]
