"""`googlenet serve`: a checkpoint or exported .onnx behind a small HTTP API and a one-page web interface.

Safe by default: it binds the loopback interface unless told otherwise; a request body over the upload limit
is refused while it is read (413); every image goes through :func:`googlenet.image_decode.decode_rgb_bytes`
(pixel limit, safe decoders), so a bad or hostile upload costs one 4xx answer, never the process. All
decoding and inference happen on one worker thread fed by a bounded queue, which batches up to
``max_batch`` images per forward pass: concurrent clients share the model instead of each holding its
own activations, and a full queue answers 503 instead of growing memory.

Routes: ``GET /`` (the page), ``POST /predict`` (raw image body or multipart field ``file``; ``?top_k=N``),
``GET /model``, ``GET /healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch

from googlenet.checkpoint import LoadedModel, open_checkpoint
from googlenet.config import ConfigError, option
from googlenet.devices import DEVICE_CHOICES, resolve_device
from googlenet.image_decode import ImageRefused, decode_rgb_bytes
from googlenet.limits import check_fits
from googlenet.onnx_model import is_onnx, open_onnx

MB = 2**20


class HTTPError(Exception):
    """An answer other than 200: status and a one-line message (sent as ``{"error": message}``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def predict_batch(member: LoadedModel, uploads: list[bytes], top_k: list[int], device: torch.device) -> list[Any]:
    """Decode, crop and classify ``uploads``; per upload its top-k list, or the :class:`HTTPError` it gets."""
    results: list[Any] = [None] * len(uploads)
    inputs, where = [], []
    for i, data in enumerate(uploads):
        try:
            inputs.append(member.preprocessing(decode_rgb_bytes(data, "upload")))
            where.append(i)
        except ImageRefused as e:
            results[i] = HTTPError(400, str(e))
    if inputs:
        x = torch.stack(inputs).to(device, memory_format=torch.channels_last)
        with torch.inference_mode():
            probs = member.model(x).float().softmax(dim=1).cpu()
        for row, i in zip(probs, where):
            values, indices = row.topk(min(top_k[i], len(member.class_names)))
            results[i] = [
                {"class": member.class_names[j], "probability": float(p)} for p, j in zip(values, indices.tolist())
            ]
    return results


class Batcher:
    """One bounded queue and one worker thread; a step takes whatever is queued, up to ``max_batch``."""

    def __init__(self, member: LoadedModel, max_batch: int, max_queue: int, device: torch.device) -> None:
        self.member, self.max_batch, self.device = member, max_batch, device
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="googlenet-infer")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, data: bytes, top_k: int) -> Any:
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((data, top_k, future))
        except asyncio.QueueFull:
            raise HTTPError(503, "server busy: too many images waiting; retry shortly") from None
        result = await future
        if isinstance(result, HTTPError):
            raise result
        return result

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            while len(items) < self.max_batch and not self.queue.empty():
                items.append(self.queue.get_nowait())
            uploads, top_k = [it[0] for it in items], [it[1] for it in items]
            try:
                results = await loop.run_in_executor(
                    self.executor, predict_batch, self.member, uploads, top_k, self.device
                )
            except Exception as e:  # a failure of the model itself: every waiting request is told, none hangs
                results = [HTTPError(500, f"inference failed: {' '.join(str(e).split()) or type(e).__name__}")]
                results *= len(items)
            for (_, _, future), result in zip(items, results):
                if not future.done():
                    future.set_result(result)


def model_info(member: LoadedModel) -> dict[str, Any]:
    pre = member.preprocessing
    return {
        "model": member.path.name,
        "variant": member.model.config.variant,
        "classes": list(member.class_names),
        "preprocessing": pre.to_dict(),
        "input_size": [3, pre.img_size, pre.img_size],
    }


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``limit`` bytes, before it is all read."""
    declared = request.headers.get("content-length", "")
    too_big = HTTPError(413, f"upload over the limit of {limit / MB:g} MB")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes(request: Any, body: bytes) -> bytes:
    """The image in ``body``: the body itself, or a multipart form's field ``file``."""
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body

    async def replay() -> dict[str, Any]:  # the body was read already; the form parser reads it again
        return {"type": "http.request", "body": body, "more_body": False}

    async with Request(request.scope, replay).form(max_files=1, max_fields=16) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPError(400, "multipart upload without a file field named 'file'")
        return await upload.read()


def _top_k(request: Any) -> int:
    raw = request.query_params.get("top_k", "5")
    if not raw.isdigit() or int(raw) < 1:
        raise HTTPError(400, f"top_k must be a positive whole number, got {raw!r}")
    return int(raw)


def _error_response(status: int, message: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def create_app(
    member: LoadedModel,
    max_upload_bytes: int = 10 * MB,
    max_batch: int = 8,
    max_queue: int = 64,
    device: torch.device | str = "cpu",
) -> Any:
    """The Starlette application serving ``member`` (see the module's docstring for the routes)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    batcher = Batcher(member, max_batch, max_queue, torch.device(device))
    info = model_info(member)
    page = resources.files("googlenet").joinpath("static/index.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    async def predict(request: Any) -> Any:
        top_k = _top_k(request)
        data = await image_bytes(request, await read_body(request, max_upload_bytes))
        return JSONResponse({"top_k": await batcher.submit(data, top_k), "model": info["model"]})

    routes = [
        Route("/", lambda request: HTMLResponse(page)),
        Route("/healthz", lambda request: JSONResponse({"status": "ok"})),
        Route("/model", lambda request: JSONResponse(info)),
        Route("/predict", predict, methods=["POST"]),
    ]
    handlers = {
        HTTPError: lambda request, e: _error_response(e.status, e.message),
        HTTPException: lambda request, e: _error_response(e.status_code, e.detail),
        Exception: lambda request, e: _error_response(500, f"internal error ({type(e).__name__})"),
    }
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


@dataclass
class ServeConfig:
    """What `googlenet serve` reads (flags, or a TOML file given with --config)."""

    checkpoint: str = option(help="checkpoint file, run folder or exported .onnx", metavar="CKPT")
    host: str = option("127.0.0.1", "interface to listen on (0.0.0.0: every interface, reachable from others)")
    port: int = option(8000, "TCP port (0: any free one)", min=0, max=65535)
    max_upload_mb: float = option(10.0, "largest request body in MB; larger ones get 413", min=0.001)
    max_batch: int = option(8, "images per forward pass at most", min=1)
    max_queue: int = option(64, "images waiting at most; more get 503", min=1)
    device: str = option(
        "auto", "auto, cpu or cuda (an .onnx file always runs on the CPU)", choices=list(DEVICE_CHOICES)
    )


def run_serve(cfg: ServeConfig) -> int:
    """`googlenet serve`: load the model, then serve until SIGINT or SIGTERM (uvicorn shuts down cleanly)."""
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise ConfigError(f"googlenet serve needs the 'serve' extra (pip install 'googlenet[serve]'): {e}") from None
    device = resolve_device(cfg.device)
    if is_onnx(cfg.checkpoint):
        member, device = open_onnx(cfg.checkpoint), torch.device("cpu")
    else:
        member = open_checkpoint(cfg.checkpoint, device, fold_batchnorm=True)
    check_fits(member.model.config.variant, member.preprocessing.img_size, cfg.max_batch, device)
    app = create_app(member, int(cfg.max_upload_mb * MB), cfg.max_batch, cfg.max_queue, device)
    # Connections beyond this get 503 from uvicorn before their body is read: each may hold an upload.
    limit = cfg.max_queue + 2 * cfg.max_batch + 8
    uvicorn.run(
        app, host=cfg.host, port=cfg.port, limit_concurrency=limit, timeout_graceful_shutdown=10, log_level="info"
    )
    return 0
