"""The host service's web app: OpenAI-shaped moderation, guarded generation, health and Prometheus metrics.

Every request needs ``Authorization: Bearer <token>`` from the keys file; the key's preset decides the policy
settings, and a request may only ask for toggles the preset's locks allow (otherwise 403 naming the field). The
pipeline sits behind a bounded queue (503 when full) and a per-request deadline (504); each decision is appended
to the audit log and fsynced before the response leaves. A stage error or a withheld image never yields image bytes.

Example:
    >>> from safeguard.server.settings import server_settings_from_mapping
    >>> app = create_app(server_settings_from_mapping({"keys": "/tmp/none.json"}))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool

import safeguard
from safeguard.config import resolve_settings
from safeguard.disclosure.credentials import Credentials
from safeguard.disclosure.manifest import load_c2pa, sign_png_bytes
from safeguard.disclosure.metadata import encode_image
from safeguard.errors import ConfigError, ContentBlocked, InputError
from safeguard.server.audit import AuditLog
from safeguard.server.keys import ApiKey, KeyStore
from safeguard.server.settings import ServerSettings
from safeguard.verdict import Verdict

__all__ = ["ApiError", "Backend", "create_app", "serve"]

# Request toggles and the library keyword each maps to; the preset's locks decide which a key may use.
_TOGGLES = {"prompt": bool, "output": bool, "steering": (bool, str), "redaction": str}
_MODEL = "safeguard"


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param"}}`` with its HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def _findings(verdict: Verdict) -> list[dict[str, Any]]:
    return [
        {"stage": f.stage, "category": f.category, "score": f.score, "threshold": f.threshold, "source": f.source}
        for f in verdict.findings
    ]


def _verdict_record(verdict: Verdict) -> dict[str, Any]:
    return {
        "action": verdict.action.value,
        "category_scores": dict(verdict.category_scores),
        "findings": _findings(verdict),
        "policy_id": verdict.policy_id,
        "policy_version": verdict.policy_version,
        "disclosure": None if verdict.disclosure is None else dict(verdict.disclosure),
    }


def _moderation_result(verdict: Verdict, input_type: str) -> dict[str, Any]:
    categories = verdict.categories
    return {
        "flagged": verdict.flagged,
        "categories": categories,
        "category_scores": {k: float(v) for k, v in verdict.category_scores.items()},
        "category_applied_input_types": {name: [input_type] for name in categories},
        "safeguard": _verdict_record(verdict),
    }


class _Metrics:
    """One registry per app, so two apps in a process (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("safeguard_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.decisions = Counter("safeguard_decisions", "decisions", ["action", "category", "stage"], registry=r)
        self.latency = Histogram("safeguard_stage_seconds", "latency per stage", ["stage"], registry=r)
        self.queue = Gauge("safeguard_queue_depth", "requests admitted to the pipeline queue", registry=r)
        self.failures = Counter("safeguard_stage_failures", "stage failures", ["stage"], registry=r)

    def decided(self, verdict: Verdict) -> None:
        if not verdict.findings:
            self.decisions.labels(verdict.action.value, "none", "none").inc()
        for f in verdict.findings:
            self.decisions.labels(verdict.action.value, f.category, f.stage).inc()
            if f.category == "stage_failure":
                self.failures.labels(f.stage).inc()


class _RateLimiter:
    """A sliding one-minute window per key."""

    def __init__(self) -> None:
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, key_id: str, per_minute: int) -> None:
        now = time.monotonic()
        with self._lock:
            hits = self._hits[key_id]
            while hits and now - hits[0] >= 60.0:
                hits.popleft()
            if len(hits) >= per_minute:
                retry = max(1, int(60.0 - (now - hits[0])) + 1)
                raise ApiError(
                    429, f"rate limit of {per_minute} requests per minute reached", headers={"Retry-After": str(retry)}
                )
            hits.append(now)


class _Engine:
    """The protected pipeline and the policy it checks against; the part a Ray Serve replica holds.

    ``factory`` returns ``(pipeline, policy id or path)``; ``None`` reads ``settings.pipeline`` (``None``: the toy
    world). Methods block; the web app calls them off its event loop.

    Example:
        >>> engine = _Engine(ServerSettings(), None)
        >>> engine.load()  # doctest: +SKIP
        >>> engine.moderate(["a red square"], [], "balanced")[0][0].flagged  # doctest: +SKIP
        False
    """

    def __init__(self, settings: ServerSettings, factory: Callable[[], tuple[Any, Any]] | None) -> None:
        self.settings = settings
        self._factory = factory or self._default_factory
        self._base: Any = None
        self.policy: Any = None  # a policy id or path: safeguard.checks caches guards for those
        self._load_lock = threading.Lock()
        self._guarded: dict[tuple, Any] = {}
        self.ready = False

    def _default_factory(self) -> tuple[Any, Any]:
        if self.settings.pipeline is None:
            from safeguard.toy import toy_world

            world = toy_world()
            return world.pipeline, world.policy_path
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(self.settings.pipeline, local_files_only=True)
        from safeguard.policy import DEFAULT_POLICY

        return pipe, DEFAULT_POLICY

    def load(self) -> None:
        with self._load_lock:
            if self._base is None:
                self._base, self.policy = self._factory()
                self.ready = True

    def guarded(self, preset: str, toggles: dict[str, Any]) -> Any:
        self.load()
        key = (preset, tuple(sorted(toggles.items())))
        with self._load_lock:
            if key not in self._guarded:
                self._guarded[key] = safeguard.protect(self._base, policy=self.policy, preset=preset, **toggles)
            return self._guarded[key]

    def moderate(
        self, texts: list[str], images: list[Image.Image], preset: str
    ) -> tuple[list[Verdict], list[Verdict], dict[str, float]]:
        """Check prompts and images under ``preset``; returns both verdict lists and seconds per stage."""
        self.load()
        t0 = time.perf_counter()
        tv = safeguard.check_prompts(texts, self.policy, preset) if texts else []
        t1 = time.perf_counter()
        iv = safeguard.check_images(images, self.policy, preset) if images else []
        return tv, iv, {"prompt": t1 - t0, "image": time.perf_counter() - t1}

    def generate(
        self,
        preset: str,
        toggles: dict[str, Any],
        prompt: str,
        n: int,
        steps: int,
        seed: int,
        width: int | None,
        height: int | None,
    ) -> tuple[list[Any], list[Verdict], str | None, float]:
        """Run the guarded pipeline; returns images (``None`` where withheld), verdicts, the blocking stage, seconds."""
        import torch

        pipe = self.guarded(preset, toggles)
        kwargs: dict[str, Any] = {"num_images_per_prompt": n, "num_inference_steps": steps, "output_type": "pil"}
        if width and height:
            kwargs.update(width=width, height=height)
        t0 = time.perf_counter()
        try:
            out = pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs)
        except ContentBlocked as blocked:
            verdicts = list(blocked.verdicts) * (n // max(1, len(blocked.verdicts)) or 1)
            return [None] * n, verdicts, "prompt", time.perf_counter() - t0
        return list(out.images), list(out.verdicts), None, time.perf_counter() - t0


@runtime_checkable
class Backend(Protocol):
    """Where the app's checks and generations run: in this process (default) or on Ray Serve deployments.

    Example:
        >>> isinstance(_LocalBackend(_Engine(ServerSettings(), None)), Backend)
        True
    """

    def is_ready(self) -> bool: ...

    def load(self) -> None: ...

    async def moderate(
        self, texts: list[str], images: list[Image.Image], preset: str
    ) -> tuple[list[Verdict], list[Verdict], dict[str, float]]: ...

    def generate(self, *args: Any) -> asyncio.Future: ...

    def close(self) -> None: ...


class _LocalBackend:
    """The engine in this process; pipeline calls are serialized on one worker thread (conservative)."""

    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="safeguard-pipeline")

    def is_ready(self) -> bool:
        return self.engine.ready

    def load(self) -> None:
        self.engine.load()

    async def moderate(
        self, texts: list[str], images: list[Image.Image], preset: str
    ) -> tuple[list[Verdict], list[Verdict], dict[str, float]]:
        return await run_in_threadpool(self.engine.moderate, texts, images, preset)

    def generate(self, *args: Any) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self.worker, self.engine.generate, *args)

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)


class _Service:
    def __init__(self, settings: ServerSettings, backend: Backend) -> None:
        if settings.keys is None:
            raise ConfigError("server setting keys is required: every request needs an API key (safeguard keys add)")
        self.settings = settings
        self.keys = KeyStore(settings.keys)
        self.audit = AuditLog(settings.audit.path, max_bytes=settings.audit.max_bytes)
        self.metrics = _Metrics()
        self.rate = _RateLimiter()
        self.backend = backend
        # Loaded once, so that a host with broken credentials finds out at start-up, not on the first image.
        self.credentials = None if settings.credentials is None else _load_credentials(settings.credentials)
        self.admitted = 0
        self._admit_lock = threading.Lock()

    def admit(self) -> None:
        with self._admit_lock:
            if self.admitted >= self.settings.limits.queue_size:
                raise ApiError(
                    503,
                    f"the pipeline queue is full ({self.settings.limits.queue_size}); retry later",
                    headers={"Retry-After": "1"},
                )
            self.admitted += 1
            self.metrics.queue.set(self.admitted)

    def release(self) -> None:
        with self._admit_lock:
            self.admitted -= 1
            self.metrics.queue.set(self.admitted)


def _toggles(body: dict[str, Any], key: ApiKey) -> dict[str, Any]:
    raw = body.get("safeguard")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ApiError(400, "safeguard must be an object of toggles", "safeguard")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in _TOGGLES:
            raise ApiError(400, f"unknown safeguard toggle {name!r}; known: {', '.join(_TOGGLES)}", f"safeguard.{name}")
        if not isinstance(value, _TOGGLES[name]):
            raise ApiError(400, f"safeguard.{name} has the wrong type", f"safeguard.{name}")
        # The library's lock machinery decides: a weakened lock is a ConfigError naming the setting.
        try:
            resolve_settings(key.preset, **{name: value})
        except ConfigError as err:
            raise ApiError(
                403, f"safeguard.{name} is not allowed for this key (preset {key.preset}): {err}", f"safeguard.{name}"
            ) from err
        out[name] = value
    return out


def _load_credentials(folder: Path) -> Credentials:
    load_c2pa()
    return Credentials.load(folder)


def _encoded_png(image: Image.Image, verdict: Verdict, credentials: Credentials | None) -> bytes:
    """The PNG returned for ``image``: with the IPTC digital source type, and signed content credentials given
    ``credentials``."""
    png = encode_image(image, "png")
    return png if credentials is None else sign_png_bytes(png, verdict, credentials)


def _decode_image(url: Any, where: str, max_pixels: int) -> tuple[Image.Image, bytes]:
    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
        raise ApiError(400, f"{where} must be a data:image/...;base64, URI (remote URLs are not fetched)", where)
    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=True)
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_pixels:
            raise ApiError(413, f"{where} has {image.width * image.height} pixels; the limit is {max_pixels}", where)
        image = image.convert("RGB")
    except ApiError:
        raise
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as err:
        raise ApiError(400, f"{where} is not a readable base64 image: {err}", where) from err
    return image, data


def create_app(
    settings: ServerSettings,
    pipeline_factory: Callable[[], tuple[Any, Any]] | None = None,
    backend: Backend | None = None,
) -> FastAPI:
    """Build the service. ``pipeline_factory`` returns ``(pipeline, policy id or path)``; default: from settings.

    ``backend`` runs the checks and generations (default: in this process, from ``pipeline_factory``);
    :mod:`safeguard.server.ray_app` passes one that calls Ray Serve deployments.

    Example:
        >>> from safeguard.server.settings import server_settings_from_mapping
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> app = create_app(server_settings_from_mapping({"keys": str(d / "k.json"), "audit": {"path": str(d / "a")}}))
        >>> sorted(r.path for r in app.routes if r.path.startswith("/v1"))
        ['/v1/images/generations', '/v1/moderations']
    """
    svc = _Service(settings, backend or _LocalBackend(_Engine(settings, pipeline_factory)))
    limits = settings.limits
    app = FastAPI(title="safeguard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc

    @app.on_event("startup")
    async def _startup() -> None:
        # Load in the background so /healthz answers at once and /readyz says when models are in.
        asyncio.get_running_loop().run_in_executor(None, svc.backend.load)

    @app.on_event("shutdown")
    async def _shutdown() -> None:
        svc.backend.close()
        svc.audit.close()

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(
            {
                "error": {
                    "message": err.message,
                    "type": "invalid_request_error" if err.status < 500 else "server_error",
                    "param": err.param,
                }
            },
            status_code=err.status,
            headers=err.headers,
        )

    @app.middleware("http")
    async def _count(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            svc.metrics.requests.labels(request.url.path, "500").inc()
            raise
        svc.metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        svc.metrics.latency.labels("request").observe(time.perf_counter() - start)
        return response

    async def _authed(request: Request) -> ApiKey:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise ApiError(401, "missing Authorization: Bearer <key>", "authorization")
        key = await run_in_threadpool(svc.keys.authenticate, header[7:].strip())
        if key is None or key.revoked:
            raise ApiError(401, "invalid or revoked API key", "authorization")
        svc.rate.check(key.key_id, key.rate_per_minute or limits.rate_per_minute)
        return key

    async def _body(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise ApiError(413, f"request body of {declared} bytes exceeds {limits.max_body_bytes}", "body")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise ApiError(413, f"request body exceeds {limits.max_body_bytes} bytes", "body")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ApiError(400, f"request body is not valid JSON: {err}", "body") from err
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object", "body")
        return body

    def _prompt(text: Any, where: str) -> str:
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, f"{where} must be a non-empty string", where)
        if len(text) > limits.max_prompt_chars:
            raise ApiError(400, f"{where} has {len(text)} characters; the limit is {limits.max_prompt_chars}", where)
        return text

    async def _audit(record: dict[str, Any]) -> None:
        # Blocking fsync off the event loop; awaited, so the response waits until the record is on disk.
        await run_in_threadpool(svc.audit.append, record)

    def _prompt_fields(texts: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt_sha256": [_sha(t) for t in texts]}
        if settings.audit.store_prompt_text:
            out["prompt_text"] = texts
        return out

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = svc.backend.is_ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(svc.metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> JSONResponse:
        key = await _authed(request)
        body = await _body(request)
        raw = body.get("input")
        items: list[tuple[str, Any]] = []  # ("text", str) or ("image", (PIL, bytes))
        if isinstance(raw, str):
            items.append(("text", _prompt(raw, "input")))
        elif isinstance(raw, list) and raw:
            for i, part in enumerate(raw):
                where = f"input[{i}]"
                if isinstance(part, str):
                    items.append(("text", _prompt(part, where)))
                elif isinstance(part, dict) and part.get("type") == "text":
                    items.append(("text", _prompt(part.get("text"), f"{where}.text")))
                elif isinstance(part, dict) and part.get("type") == "image_url":
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    items.append(("image", _decode_image(url, f"{where}.image_url.url", limits.max_image_pixels)))
                else:
                    raise ApiError(400, f"{where} must be a string or a part of type text or image_url", where)
        else:
            raise ApiError(400, "input must be a string or a non-empty list", "input")
        if sum(kind == "image" for kind, _ in items) > limits.max_images_per_request:
            raise ApiError(400, f"at most {limits.max_images_per_request} images per request", "input")
        texts = [v for k, v in items if k == "text"]
        images = [v[0] for k, v in items if k == "image"]
        try:
            text_verdicts, image_verdicts, seconds = await asyncio.wait_for(
                svc.backend.moderate(texts, images, key.preset), limits.deadline_s
            )
        except TimeoutError as err:
            raise ApiError(504, f"moderation took longer than {limits.deadline_s} s", None) from err
        except InputError as err:
            raise ApiError(400, str(err), "input") from err
        for stage, spent in seconds.items():
            svc.metrics.latency.labels(stage).observe(spent)
        tv, iv = iter(text_verdicts), iter(image_verdicts)
        results = [_moderation_result(next(tv) if k == "text" else next(iv), k) for k, _ in items]
        for verdict in [*text_verdicts, *image_verdicts]:
            svc.metrics.decided(verdict)
        request_id = f"modr-{uuid.uuid4().hex}"
        policy = (text_verdicts or image_verdicts)[0]
        await _audit(
            {
                "request_id": request_id,
                "key_id": key.key_id,
                "endpoint": "/v1/moderations",
                "preset": key.preset,
                "policy_id": policy.policy_id,
                "policy_version": policy.policy_version,
                "verdicts": [r["safeguard"] for r in results],
                **_prompt_fields(texts),
                "image_sha256": [_sha(v[1]) for k, v in items if k == "image"],
            }
        )
        return JSONResponse({"id": request_id, "model": _MODEL, "results": results})

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> JSONResponse:
        key = await _authed(request)
        body = await _body(request)
        known = {"prompt", "n", "size", "width", "height", "steps", "seed", "safeguard", "response_format", "model"}
        for name in body:
            if name not in known:
                raise ApiError(400, f"unknown field {name!r}; known: {', '.join(sorted(known))}", name)
        prompt = _prompt(body.get("prompt"), "prompt")
        n = body.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limits.max_images_per_request:
            raise ApiError(400, f"n must be an integer from 1 to {limits.max_images_per_request}", "n")
        width, height = body.get("width"), body.get("height")
        if body.get("size") is not None:
            size = body["size"]
            try:
                width, height = (int(v) for v in str(size).lower().split("x"))
            except ValueError as err:
                raise ApiError(400, f"size must look like 512x512, got {size!r}", "size") from err
        for name, value in (("width", width), ("height", height)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 8 or value % 8):
                raise ApiError(400, f"{name} must be a positive multiple of 8", name)
        if width and height and width * height * n > limits.max_image_pixels:
            raise ApiError(400, f"{n} x {width}x{height} exceeds {limits.max_image_pixels} pixels", "size")
        steps = body.get("steps", 20)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 100:
            raise ApiError(400, "steps must be an integer from 1 to 100", "steps")
        seed = body.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ApiError(400, "seed must be a non-negative integer", "seed")
        fmt = body.get("response_format", "b64_json")
        if fmt != "b64_json":
            raise ApiError(400, "response_format must be b64_json (the service never stores images)", "response_format")
        toggles = _toggles(body, key)
        svc.admit()
        released = False
        try:
            future = svc.backend.generate(key.preset, toggles, prompt, n, steps, seed, width, height)
            # The queue slot is held until the pipeline really finishes, even past the deadline, so the bound holds.
            future.add_done_callback(lambda _: svc.release())
            released = True
            try:
                images, verdicts, stage, spent = await asyncio.wait_for(asyncio.shield(future), limits.deadline_s)
            except TimeoutError as err:
                raise ApiError(504, f"generation took longer than {limits.deadline_s} s", None) from err
        except ApiError:
            raise
        except ConfigError as err:
            raise ApiError(400, str(err), None) from err
        except Exception as err:  # fail closed: no image leaves on an unexpected error
            svc.metrics.failures.labels("generation").inc()
            raise ApiError(503, f"generation failed: {type(err).__name__}", None) from err
        finally:
            if not released:
                svc.release()
        svc.metrics.latency.labels("generation").observe(spent)
        data, hashes = [], []
        for i in range(n):
            image = images[i] if i < len(images) else None
            verdict = verdicts[min(i, len(verdicts) - 1)]
            svc.metrics.decided(verdict)
            entry: dict[str, Any] = {"verdict": _verdict_record(verdict)}
            # Only an image whose verdict does not block leaves; a blurred or withheld one is never sent.
            if image is None or verdict.blocked:
                entry.update(b64_json=None, finish_reason="CONTENT_FILTERED", filter_stage=stage or "output")
                hashes.append(None)
            else:
                png = await run_in_threadpool(_encoded_png, image, verdict, svc.credentials)
                hashes.append(_sha(png))
                entry.update(b64_json=base64.b64encode(png).decode(), finish_reason="SUCCESS", filter_stage=None)
            data.append(entry)
        request_id = f"img-{uuid.uuid4().hex}"
        await _audit(
            {
                "request_id": request_id,
                "key_id": key.key_id,
                "endpoint": "/v1/images/generations",
                "preset": key.preset,
                "toggles": toggles,
                "policy_id": verdicts[0].policy_id,
                "policy_version": verdicts[0].policy_version,
                "verdicts": [d["verdict"] for d in data],
                "finish_reasons": [d["finish_reason"] for d in data],
                **_prompt_fields([prompt]),
                "image_sha256": hashes,
            }
        )
        return JSONResponse({"id": request_id, "created": int(time.time()), "data": data})

    return app


def serve(settings: ServerSettings) -> None:
    """Run the service under uvicorn until interrupted.

    Example:
        >>> serve(load_server_settings("configs/server/example.yaml"))  # doctest: +SKIP
    """
    import uvicorn

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")
