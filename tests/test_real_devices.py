"""A real federation on loopback, used as a person uses it: a SuperLink over TLS, two
SuperNodes on two image folders with their own protected sets, ``fedal annotate`` on each
folder, and a scripted annotator that labels through the pages in headless Chromium
(Selenium), while ``flwr run`` runs two rounds with the human oracle. One annotate
process is killed by PID mid-way and restarted; no answer may be lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from flower_processes import BIN, flower_env, free_port, started, stop, wait_for_port
from flower_security import write_tls_files
from node_images import CLASSES, NodeFiles, write_node_folder, write_png
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.wait import WebDriverWait

from fedal.labelling_queue import LabellingQueue
from fedal.rundir import RunDirectory

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
RUN_SECONDS = 300
FLWR_RUN = [str(BIN / "flwr"), "run", ".", "loopback", "--stream"]


def headless_chromium() -> webdriver.Chrome:
    """Debian's Chromium driven by Debian's chromedriver, headless."""
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        "needs Debian's chromium and chromium-driver: bash scripts/ensure-browser.sh"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=800,900")
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def start_annotate(node: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``fedal annotate NODE --port PORT`` (localhost, no token), logging to ``log``; the
    annotator simply finds the page down until it listens."""
    command = [str(BIN / "fedal"), "annotate", str(node), "--port", str(port)]
    with log.open("ab") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)


@dataclass
class Annotator:
    """The scripted person: labels what each page shows, dark images 'dark'."""

    driver: webdriver.Chrome
    shown: dict[int, list[int]] = field(default_factory=dict)  # client -> images served
    given: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # (image, label)
    # clicks whose answer page never came (the page went down or was too slow under load):
    # the answer may or may not have been committed
    unconfirmed: dict[int, list[tuple[int, int]]] = field(default_factory=dict)

    def label_one(self, client: int, port: int) -> bool:
        """Label the image the page of ``client`` shows, if any; False when none."""
        clicked: tuple[int, int] | None = None
        try:
            self.driver.get(f"http://127.0.0.1:{port}/")
            images = self.driver.find_elements(By.ID, "image")
            if not images:
                return False
            image = int(images[0].get_attribute("data-image") or -1)
            self.shown.setdefault(client, []).append(image)
            label = 0 if self.darkness(images[0]) else 1
            self.driver.find_element(By.ID, f"label-{label}").click()
            clicked = (image, label)
            # the page answers (after committing) by loading the next one
            WebDriverWait(self.driver, 30).until(staleness_of(images[0]))
        except WebDriverException:  # the page is down (killed on purpose): try again later
            if clicked is not None:
                self.unconfirmed.setdefault(client, []).append(clicked)
            return False
        self.given.setdefault(client, []).append((image, label))
        return True

    def darkness(self, element: object) -> bool:
        """Whether the shown image is mostly dark (read from the browser's canvas)."""
        script = (
            "const img = arguments[0]; const c = document.createElement('canvas');"
            "c.width = img.naturalWidth; c.height = img.naturalHeight;"
            "const g = c.getContext('2d'); g.drawImage(img, 0, 0);"
            "const d = g.getImageData(0, 0, c.width, c.height).data; let s = 0;"
            "for (let i = 0; i < d.length; i += 4) s += d[i]; return s / (d.length / 4);"
        )
        return float(self.driver.execute_script(script, element)) < 128


def write_test_folder(directory: Path) -> Path:
    for label, name in enumerate(CLASSES):
        for k in range(2):
            write_png(directory / name / f"{k}.png", 40 + 170 * label, seed=100 + k)
    return directory


def test_two_devices_label_through_the_page_and_nothing_protected_leaves(tmp_path: Path) -> None:
    nodes = [write_node_folder(tmp_path / f"album-{k}", seed=10 * k) for k in range(2)]
    test_dir = write_test_folder(tmp_path / "test")
    tls = write_tls_files(tmp_path / "tls")
    home, port = tmp_path / "flwr-home", free_port()
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{tls.ca_certificate}"\n'
    )
    link = [
        str(BIN / "flower-superlink"),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--database", str(tmp_path / "state.db"), "--disable-runtime-dependency-installation"),
        *("--ssl-ca-certfile", str(tls.ca_certificate)),
        *("--ssl-certfile", str(tls.server_certificate), "--ssl-keyfile", str(tls.server_key)),
    ]

    def supernode(k: int, node: NodeFiles) -> list[str]:
        node_config = (
            f'partition-id={k} num-partitions=2 data-dir="{node.directory}" '
            f'protect-list="{node.protect_list}" protect-rule="{node.protect_rule}"'
        )
        return [
            str(BIN / "flower-supernode"),
            *("--root-certificates", str(tls.ca_certificate)),
            *("--superlink", f"127.0.0.1:{port}", "--port", str(free_port())),
            *("--node-config", node_config),
        ]

    run_config = " ".join(
        [
            'data.dataset="image-folder"',
            f'data.classes="{",".join(CLASSES)}"',
            f'data.test_dir="{test_dir}"',
            "data.image_size=16",
            "data.num_clients=2",
            'oracle.annotator="human"',
            "oracle.answer_wait=60",
            'query.private_data="candidates"',  # strict mode
            "query.options.epochs=1",
            "query.options.unlabelled_batches_per_epoch=1",
            "query.budget_per_query=2",
            "federation.rounds=2",
            "training.epochs=1",
            f'experiment.output_dir="{tmp_path / "runs"}"',
        ]
    )
    page_ports = [free_port(), free_port()]
    pages = [
        start_annotate(node.directory, page_port, tmp_path / f"annotate-{k}.log")
        for k, (node, page_port) in enumerate(zip(nodes, page_ports, strict=True))
    ]
    starter = ThreadPoolExecutor(max_workers=1)
    browser = starter.submit(headless_chromium)  # starts while the processes start
    starter.shutdown(wait=False)
    answered_before_kill: list[tuple[int, int]] = []
    node_envs = [flower_env(tmp_path / f"node-home-{k}") for k in range(2)]
    try:
        with started([(link, flower_env(home))], tmp_path / "logs-link"):
            wait_for_port(port)
            commands = [supernode(k, node) for k, node in enumerate(nodes)]
            with started(list(zip(commands, node_envs, strict=True)), tmp_path / "logs-nodes"):
                with (tmp_path / "flwr-run.log").open("w") as log:
                    run = subprocess.Popen(
                        [*FLWR_RUN, "--run-config", run_config],
                        cwd=REPO,
                        env=flower_env(home),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                annotator = Annotator(browser.result(timeout=120))
                deadline = time.monotonic() + RUN_SECONDS
                while run.poll() is None and time.monotonic() < deadline:
                    for client, page_port in enumerate(page_ports):
                        if annotator.label_one(client, page_port) and (
                            client == 0 and not answered_before_kill
                        ):
                            # the person's page dies mid-way: kill it by PID, start it again
                            answered_before_kill = list(annotator.given[0])
                            os.kill(pages[0].pid, signal.SIGKILL)
                            pages[0].wait(timeout=30)
                            pages[0] = start_annotate(
                                nodes[0].directory, page_ports[0], tmp_path / "annotate-0.log"
                            )
                    time.sleep(0.1)
                if run.poll() is None:
                    stop([run.pid])
    finally:
        browser.result(timeout=120).quit()
        stop([page.pid for page in pages])
    output = (tmp_path / "flwr-run.log").read_text()
    assert run.returncode == 0, output[-3000:]
    runs = list((tmp_path / "runs").glob("*/rounds.jsonl"))
    assert len(runs) == 1, output[-3000:]  # `flwr run` exits 0 even when the ServerApp fails
    run_dir = RunDirectory(runs[0].parent)
    assert [row["round"] for row in run_dir.read_rounds()] == [0, 1, 2], output[-3000:]
    ledger = run_dir.read_ledger()
    assert answered_before_kill, "the annotator labelled nothing before the kill"
    for client, node in enumerate(nodes):
        queue = LabellingQueue(node.directory)
        paths = queue.register([])
        queued = {paths[image] for image in queue.queued().tolist()}
        served = {paths[image] for image in annotator.shown.get(client, [])}
        assert queued and queued.isdisjoint(node.protected)  # never queued ...
        assert served and served.isdisjoint(node.protected)  # ... nor served
        images, labels = queue.answered()
        answers = set(zip(images.tolist(), labels.tolist(), strict=True))
        confirmed = set(annotator.given.get(client, []))
        assert confirmed <= answers  # every confirmed click is in the queue, and nothing
        assert answers <= confirmed | set(annotator.unconfirmed.get(client, []))  # unclicked
        rows = ledger[ledger[:, 0] == client]
        person = {
            (int(index), int(label)) for _, round_number, index, label in rows if round_number > 0
        }
        folder = {paths[int(index)] for _, round_number, index, _ in rows if round_number == 0}
        assert person == answers  # every answer is in the ledger, and only answers
        assert folder == set(node.labelled)  # folder labels, protected ones left out
        assert run_dir.read_node(client)["protected"] == len(node.protected)
        assert {paths[index] for _, _, index, _ in rows}.isdisjoint(node.protected)
    assert set(answered_before_kill) <= {
        (int(i), int(label)) for c, _, i, label in ledger.tolist() if c == 0
    }
