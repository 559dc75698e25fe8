"""Load on `googlenet serve`: requests per second and latency with 1 and with 8 concurrent clients.

Starts the server on a free loopback port, waits for /healthz, runs each client count for a fixed time
(every client posts the same photo-sized image again as soon as its answer arrives), prints a markdown table
and stops the server with SIGTERM.

    python bench/serve_load.py --checkpoint model.onnx --out serve_load.md
    python bench/serve_load.py --checkpoint CKPT --quick    # seconds: checks the script
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
from torchvision.io import encode_jpeg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: str, max_batch: int, log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "googlenet", "serve", "--checkpoint", checkpoint, "--port", str(port),
           "--max-batch", str(max_batch)]  # fmt: skip
    src = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": src})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"the server did not start (exit status {proc.poll()}); see its log")


def photo_jpeg(seed: int = 0) -> bytes:
    """A 500 x 375 JPEG with smooth gradients and noise, ImageNet's typical size."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 375), torch.linspace(0, 1, 500), indexing="ij")
    img = torch.stack([xs, ys, 1 - xs * ys]) * 200 + torch.rand(3, 375, 500, generator=g) * 55
    return encode_jpeg(img.to(torch.uint8), quality=90).numpy().tobytes()


def load(url: str, image: bytes, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads posting ``image`` for ``seconds``; requests/s and latency percentiles in ms."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                ok = client.post("/predict", content=image).status_code == 200
                took = time.perf_counter() - start
                with lock:
                    if ok:
                        latencies.append(took)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ms = sorted(1000 * t for t in latencies) or [float("nan")]
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "p50": statistics.median(ms), "p99": p99,
            "errors": errors[0]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint, run folder or exported .onnx")
    p.add_argument("--seconds", type=float, default=15.0, help="per client count")
    p.add_argument("--clients", default="1,8", help="comma-separated client counts")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--out", help="also write the markdown table here")
    p.add_argument("--quick", action="store_true", help="one second per client count: checks the script")
    args = p.parse_args()
    seconds = 1.0 if args.quick else args.seconds
    image = photo_jpeg()
    with tempfile.TemporaryFile("w+") as log:
        proc, url = start_server(args.checkpoint, args.max_batch, log)
        try:
            load(url, image, 1, min(seconds, 2.0))  # warm-up: first batches allocate
            results = {n: load(url, image, n, seconds) for n in map(int, args.clients.split(","))}
        finally:
            proc.send_signal(signal.SIGTERM)
            status = proc.wait(timeout=60)
        log.seek(0)
        if status not in (0, -signal.SIGTERM) or "Application shutdown complete" not in log.read():
            raise SystemExit(f"the server did not shut down cleanly (exit status {status})")
    lines = [
        f"# googlenet serve under load ({Path(args.checkpoint).name}, --max-batch {args.max_batch}, "
        f"{seconds:g} s per row, 500 x 375 JPEG)",
        "",
        "| clients | requests | requests/s | p50 ms | p99 ms | errors |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {n} | {r['requests']} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} |"
          for n, r in results.items()],
    ]  # fmt: skip
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
