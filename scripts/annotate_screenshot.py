"""Take docs/annotate.png: the labelling page of ``fedal annotate`` on a small demo node
folder, in headless Chromium (Debian's chromium and chromium-driver, via Selenium).

Usage: .venv/bin/python scripts/annotate_screenshot.py [OUTPUT]
"""

from __future__ import annotations

import io
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import uvicorn
from PIL import Image, ImageDraw
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from fedal.app.annotate import annotate_app
from fedal.labelling_queue import LabellingQueue

CLASSES = ("cat", "dog", "bird", "car")


def demo_image(path: Path, seed: int) -> None:
    """A 160 x 120 picture: a coloured gradient with a disc."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=3)
    ramp = np.linspace(0, 60, 160)[None, :, None]
    pixels = np.clip(base[None, None, :] + ramp + rng.normal(0, 6, (120, 160, 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    x, y = int(rng.integers(30, 130)), int(rng.integers(30, 90))
    ImageDraw.Draw(image).ellipse((x - 25, y - 25, x + 25, y + 25), fill=(240, 230, 90))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@contextmanager
def serving(node: Path) -> Iterator[int]:
    """The labelling page of ``node`` served by uvicorn in a thread; yields its port."""
    server = uvicorn.Server(
        uvicorn.Config(annotate_app(node), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.1)
    try:
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        thread.join()


def main(output: Path) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        node = Path(temporary) / "album"
        paths = [f"camera/IMG_{1000 + k}.png" for k in range(6)]
        for k, path in enumerate(paths):
            demo_image(node / path, seed=k)
        queue = LabellingQueue(node)
        queue.use_classes(CLASSES)
        queue.register(paths)
        queue.enqueue(np.arange(0, 3), round_number=1)
        queue.enqueue(np.arange(3, 6), round_number=2)
        for image, label in ((0, 1), (1, 0), (2, 3)):
            queue.answer(image, label)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for argument in ("--headless=new", "--no-sandbox", "--window-size=720,820"):
            options.add_argument(argument)
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        try:
            with serving(node) as port:
                driver.get(f"http://127.0.0.1:{port}/")
                driver.find_element(By.ID, "image")
                png = driver.get_screenshot_as_png()
        finally:
            driver.quit()
    with Image.open(io.BytesIO(png)) as shot:  # a palette keeps the file small
        shot.convert("RGB").quantize(colors=64).save(output, optimize=True)
    print(output)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/annotate.png"))
