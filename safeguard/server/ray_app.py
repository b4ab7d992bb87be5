"""The host service as a Ray Serve application (the optional extra ``ray``): ``safeguard serve --ray``.

Three deployments, wired by :func:`build_app`:

- ``ingress`` (one replica): the same FastAPI app as ``safeguard serve`` (:func:`safeguard.server.app.create_app`),
  so keys, locked presets, limits, the hash-chained audit log and the metrics behave exactly the same. It keeps one
  replica on purpose: the audit log is one hash chain written by one process, and rate limits count per process.
- ``pipeline``: holds the protected pipeline. Each replica asks for ``num_gpus`` GPUs and takes one generation at
  a time; Ray Serve autoscales it between ``min_replicas`` and ``max_replicas`` on the number of waiting requests.
- ``moderation``: prompt and image checks, with requests from many clients gathered by ``@serve.batch`` into one
  ``check_prompts``/``check_images`` call per preset; autoscaled like the pipeline, CPU only.

Fail closed: an error in a deployment reaches the ingress as that error, and the app answers it as ``safeguard
serve`` does (a generation error is a 503 without image bytes).

Example:
    >>> from safeguard.server.settings import server_settings_from_mapping
    >>> settings = server_settings_from_mapping({"keys": "keys.json", "port": 8000})
    >>> app = build_app(settings, num_gpus=1, max_replicas=4)  # doctest: +SKIP
    >>> run_ray(settings, num_gpus=1, max_replicas=4)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from PIL import Image
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle

import safeguard
from safeguard.errors import ConfigError
from safeguard.server.app import _Engine, create_app
from safeguard.server.settings import ServerSettings
from safeguard.verdict import Verdict

__all__ = ["APP_NAME", "build_app", "run_ray", "start_ray"]

APP_NAME = "safeguard"
# CPUs each replica reserves; a pipeline replica's GPUs come from num_gpus (--gpus-per-replica).
_INGRESS_CPUS, _MODERATION_CPUS, _PIPELINE_CPUS = 0.25, 0.5, 1.0


def _unwrap(err: RayTaskError) -> BaseException:
    """The deployment's own exception (ConfigError, InputError...), so the app maps it to the same status."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, Exception) else err


@serve.deployment(name="pipeline", max_ongoing_requests=1)
class PipelineDeployment:
    """One protected pipeline per replica; generations on a replica run one at a time."""

    def __init__(self, settings: ServerSettings, factory: Callable[[], tuple[Any, Any]] | None) -> None:
        self.engine = _Engine(settings, factory)
        self.engine.load()  # the replica is not ready (and gets no traffic) until the pipeline is in

    def generate(self, *args: Any) -> tuple[list[Any], list[Verdict], str | None, float]:
        """:meth:`safeguard.server.app._Engine.generate` on this replica."""
        return self.engine.generate(*args)


@serve.deployment(name="moderation", max_ongoing_requests=64)
class ModerationDeployment:
    """Prompt and image checks, batched across concurrent requests with ``@serve.batch``."""

    def __init__(
        self,
        settings: ServerSettings,
        factory: Callable[[], tuple[Any, Any]] | None,
        max_batch_size: int,
        batch_wait_timeout_s: float,
    ) -> None:
        if factory is None and settings.pipeline is not None:
            # Checks need only the policy: do not load a real pipeline's weights on a moderation replica.
            from safeguard.policy import DEFAULT_POLICY

            factory = lambda: (None, DEFAULT_POLICY)  # noqa: E731
        self.engine = _Engine(settings, factory)
        self.engine.load()
        self.check.set_max_batch_size(max_batch_size)
        self.check.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def check(self, items: list[tuple[str, str, Any]]) -> list[Verdict]:
        """Each item is ``(kind, preset, text or image)``; one library call per (kind, preset) in the batch."""
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, (kind, preset, _) in enumerate(items):
            groups[(kind, preset)].append(i)
        out: list[Verdict | None] = [None] * len(items)
        for (kind, preset), indices in groups.items():
            check = safeguard.check_prompts if kind == "text" else safeguard.check_images
            verdicts = await asyncio.to_thread(check, [items[i][2] for i in indices], self.engine.policy, preset)
            if len(verdicts) != len(indices):  # fail closed: never hand a request someone else's verdict
                raise RuntimeError(f"{len(verdicts)} verdicts for {len(indices)} {kind} inputs")
            for i, verdict in zip(indices, verdicts, strict=True):
                out[i] = verdict
        return out  # type: ignore[return-value]


class _RayBackend:
    """The app's :class:`~safeguard.server.app.Backend` on Ray Serve: calls the two deployments by handle."""

    def __init__(self, pipeline: DeploymentHandle, moderation: DeploymentHandle) -> None:
        self.pipeline, self.moderation = pipeline, moderation

    def is_ready(self) -> bool:
        # serve.run returns only once every replica's constructor (which loads the models) has finished.
        return True

    def load(self) -> None:
        return None

    async def _gather(self, kind: str, preset: str, values: list[Any]) -> list[Verdict]:
        try:
            return list(await asyncio.gather(*(self.moderation.check.remote((kind, preset, v)) for v in values)))
        except RayTaskError as err:
            raise _unwrap(err) from err

    async def moderate(
        self, texts: list[str], images: list[Image.Image], preset: str
    ) -> tuple[list[Verdict], list[Verdict], dict[str, float]]:
        t0 = time.perf_counter()
        tv = await self._gather("text", preset, texts) if texts else []
        t1 = time.perf_counter()
        iv = await self._gather("image", preset, images) if images else []
        return tv, iv, {"prompt": t1 - t0, "image": time.perf_counter() - t1}

    def generate(self, *args: Any) -> asyncio.Future:
        response = self.pipeline.generate.remote(*args)

        async def wait(awaitable: Awaitable[Any]) -> Any:
            try:
                return await awaitable
            except RayTaskError as err:
                raise _unwrap(err) from err

        return asyncio.ensure_future(wait(response))

    def close(self) -> None:
        return None


@serve.deployment(name="ingress", num_replicas=1, max_ongoing_requests=256)
@serve.ingress()
class IngressDeployment:
    """The FastAPI app of ``safeguard serve``, built on the replica, with the Ray backend."""

    def __init__(self, settings: ServerSettings, pipeline: DeploymentHandle, moderation: DeploymentHandle) -> None:
        self.settings, self.pipeline, self.moderation = settings, pipeline, moderation

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.settings, backend=_RayBackend(self.pipeline, self.moderation))


def build_app(
    settings: ServerSettings,
    pipeline_factory: Callable[[], tuple[Any, Any]] | None = None,
    *,
    num_gpus: float = 0.0,
    min_replicas: int = 1,
    max_replicas: int = 1,
    target_ongoing_requests: float = 1.0,
    max_batch_size: int = 32,
    batch_wait_timeout_s: float = 0.01,
) -> Any:
    """The bound Serve application: ingress, pipeline (``num_gpus`` per replica, autoscaled) and moderation.

    ``pipeline_factory`` must be importable on the workers (a module-level function); ``None`` reads the
    settings, as ``safeguard serve`` does.

    Example:
        >>> from safeguard.server.settings import server_settings_from_mapping
        >>> app = build_app(server_settings_from_mapping({"keys": "k.json"}), num_gpus=1, max_replicas=2)
        >>> type(app).__name__
        'Application'
    """
    if settings.keys is None:
        raise ConfigError("server setting keys is required: every request needs an API key (safeguard keys add)")
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, (int, float)) or num_gpus < 0:
        raise ConfigError(f"GPUs per pipeline replica must be a number >= 0, got {num_gpus!r}")
    if not 1 <= min_replicas <= max_replicas:
        raise ConfigError(f"replicas need 1 <= min ({min_replicas}) <= max ({max_replicas})")
    if max_batch_size < 1 or batch_wait_timeout_s < 0:
        raise ConfigError("moderation batches need max_batch_size >= 1 and batch_wait_timeout_s >= 0")
    autoscaling = {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": target_ongoing_requests,
    }
    pipeline = PipelineDeployment.options(
        ray_actor_options={"num_cpus": _PIPELINE_CPUS, "num_gpus": float(num_gpus)},
        autoscaling_config=autoscaling,
    ).bind(settings, pipeline_factory)
    moderation = ModerationDeployment.options(
        ray_actor_options={"num_cpus": _MODERATION_CPUS},
        autoscaling_config={**autoscaling, "target_ongoing_requests": max(1.0, float(max_batch_size))},
    ).bind(settings, pipeline_factory, max_batch_size, batch_wait_timeout_s)
    return IngressDeployment.options(ray_actor_options={"num_cpus": _INGRESS_CPUS}).bind(settings, pipeline, moderation)


def start_ray(
    settings: ServerSettings,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    **app_options: Any,
) -> None:
    """Start (or join, with ``address``) Ray without dashboard or usage stats, and deploy on host:port.

    Example:
        >>> start_ray(settings, num_cpus=2)  # doctest: +SKIP
        >>> serve.shutdown(); ray.shutdown()  # doctest: +SKIP
    """
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if settings.port == 0:
        raise ConfigError("serve --ray needs a fixed port (Ray Serve's proxy cannot pick one); set port")
    if address is None:
        ray.init(include_dashboard=False, num_cpus=num_cpus, configure_logging=False)
    else:
        ray.init(address=address, include_dashboard=False, configure_logging=False)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_app(settings, **app_options), name=APP_NAME, route_prefix="/")


def run_ray(settings: ServerSettings, **options: Any) -> None:
    """``safeguard serve --ray``: deploy with :func:`start_ray`, block until interrupted, then shut down.

    Example:
        >>> run_ray(load_server_settings("configs/server/example.yaml"), num_gpus=1)  # doctest: +SKIP
    """
    import signal

    import ray

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        start_ray(settings, **options)
        # SIGTERM (a service manager, a container stop) shuts down as cleanly as Ctrl-C: no orphaned Ray agents.
        # Installed after ray.init, which sets a SIGTERM handler of its own.
        signal.signal(signal.SIGTERM, stop)
        print(f"safeguard on Ray Serve at http://{settings.host}:{settings.port} (Ctrl-C stops it)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
