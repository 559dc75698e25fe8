"""`googlenet serve` as a client sees it: the real server in a subprocess on a free loopback port."""

import asyncio
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from googlenet import open_checkpoint
from googlenet.predict import predict

from .conftest import class_image, write_image
from .deploy_helpers import CLASSES, decisive_checkpoint

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

LIMIT_MB = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "googlenet", "serve", "--checkpoint", str(checkpoint), "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"server did not answer /healthz: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    ckpt = decisive_checkpoint(root / "a.pt")
    # The image the model is most sure about: its top class does not flip on rounding differences.
    member = open_checkpoint(ckpt, fold_batchnorm=True)
    files = [write_image(root / f"img_{i}.png", class_image(i % 3, i, (40, 48))) for i in range(6)]
    best = max(predict(member, [str(f) for f in files]), key=lambda p: p.classes[0][1] - p.classes[1][1])
    log = root / "server.log"
    proc, url = start_server(ckpt, log, "--max-upload-mb", str(LIMIT_MB), "--max-batch", "4")
    yield {"url": url, "proc": proc, "log": log, "image": Path(best.path), "top": best.classes[0][0]}
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_an_image_as_raw_body_or_multipart_gets_its_top_classes(server):
    data = server["image"].read_bytes()
    raw = httpx.post(server["url"] + "/predict", content=data, timeout=60)
    form = httpx.post(server["url"] + "/predict", files={"file": ("x.png", data, "image/png")}, timeout=60)
    for response in (raw, form):
        assert response.status_code == 200, response.text
        answer = response.json()
        probs = [item["probability"] for item in answer["top_k"]]
        assert answer["model"] == "a.pt" and len(answer["top_k"]) == 3 and probs == sorted(probs, reverse=True)
        assert answer["top_k"][0]["class"] == server["top"]
    limited = httpx.post(server["url"] + "/predict?top_k=1", content=data, timeout=60).json()
    assert [item["class"] for item in limited["top_k"]] == [server["top"]]


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"this is not an image", 400, "not a decodable image"),
        (b"", 400, "empty file"),
        ("header-truncated", 400, "not a decodable image"),
        ("bomb", 400, "over the limit of"),
        ("oversized", 413, f"upload over the limit of {LIMIT_MB} MB"),
    ],
)
def test_bad_uploads_get_a_one_line_json_error_and_the_server_keeps_serving(server, body, status, message):
    png = server["image"].read_bytes()
    body = {"header-truncated": png[:30], "bomb": bomb_png(), "oversized": b"\0" * (LIMIT_MB * 2**20 + 1)}.get(
        body, body
    )
    response = httpx.post(server["url"] + "/predict", content=body, timeout=60)
    assert response.status_code == status and message in response.json()["error"], response.text
    assert "\n" not in response.json()["error"]
    assert httpx.post(server["url"] + "/predict", content=png, timeout=60).json()["top_k"][0]["class"] == server["top"]


def test_other_client_errors_are_json_too(server):
    url = server["url"]
    no_file = httpx.post(url + "/predict", files={"other": ("x.png", b"abc", "image/png")}, timeout=60)
    assert no_file.status_code == 400 and "field named 'file'" in no_file.json()["error"]
    bad_k = httpx.post(url + "/predict?top_k=0", content=b"x", timeout=60)
    assert bad_k.status_code == 400 and "top_k" in bad_k.json()["error"]
    assert httpx.get(url + "/nowhere", timeout=60).status_code == 404
    assert httpx.get(url + "/predict", timeout=60).status_code == 405


def test_a_png_cut_inside_its_pixel_data_is_decoded_as_far_as_it_goes(server):
    # As eval and predict do (image_decode): what is there is classified rather than refused.
    png = server["image"].read_bytes()
    response = httpx.post(server["url"] + "/predict", content=png[: len(png) * 2 // 3], timeout=60)
    assert response.status_code == 200 and len(response.json()["top_k"]) == 3


def test_fifty_concurrent_clients_all_get_the_right_answer(server):
    data = server["image"].read_bytes()

    def ask(_):
        return httpx.post(server["url"] + "/predict", content=data, timeout=120)

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(ask, range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    assert {r.json()["top_k"][0]["class"] for r in responses} == {server["top"]}


def test_model_route_and_health(server):
    info = httpx.get(server["url"] + "/model", timeout=60).json()
    assert info["variant"] == "googlenet_bn" and info["classes"] == CLASSES and info["input_size"] == [3, 32, 32]
    assert info["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and info["model"] == "a.pt"
    assert httpx.get(server["url"] + "/healthz", timeout=60).json() == {"status": "ok"}


def test_the_page_makes_no_external_requests(server):
    page = httpx.get(server["url"] + "/", timeout=60)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and "http://" not in page.text and "https://" not in page.text


def test_serve_help_names_the_safe_defaults(capsys):
    from googlenet import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["serve", "--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0 and "(default: 127.0.0.1)" in text and "(default: 10.0)" in text


def test_a_full_queue_answers_503():
    from googlenet.serve import Batcher, HTTPError

    async def fill() -> int:
        batcher = Batcher(None, max_batch=1, max_queue=1, device=torch.device("cpu"))  # worker not started
        waiting = asyncio.ensure_future(batcher.submit(b"x", 5))
        await asyncio.sleep(0)
        try:
            await batcher.submit(b"y", 5)
        except HTTPError as e:
            return e.status
        finally:
            waiting.cancel()
            batcher.executor.shutdown()
        return 200

    assert asyncio.run(fill()) == 503


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")
def test_a_browser_upload_shows_the_top_class(server, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(server["url"] + "/")
        file_input = driver.find_element(By.ID, "file")
        driver.execute_script("arguments[0].hidden = false;", file_input)
        file_input.send_keys(str(server["image"]))
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "top-class").text.strip())
        assert driver.find_element(By.ID, "top-class").text.strip() == server["top"]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#results .row")) == 3
    finally:
        driver.quit()


def test_sigterm_stops_the_server_cleanly(server):
    # Last in this module: it ends the shared server.
    proc = server["proc"]
    proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught, so the exit status says SIGTERM.
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    log = server["log"].read_text()
    assert "Application shutdown complete" in log and "Finished server process" in log, log[-2000:]
    assert "Traceback" not in log, log[-2000:]
