"""Load generation against a running host service: concurrent clients, latency figures, the server's memory.

Used by ``scripts/bench_server.py`` (throughput and latency per endpoint) and ``scripts/soak_server.py`` (many
mixed requests, memory, a ``kill -9`` and restart). Clients are threads with one keep-alive ``http.client``
connection each: no dependency beyond the standard library, and little client overhead to blur the figures.

Example:
    >>> spec = RequestSpec("healthz", "GET", "/healthz", expected=frozenset({200}))
    >>> spec.name, spec.expected
    ('healthz', frozenset({200}))
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "RequestSpec",
    "Sample",
    "ServerProcess",
    "endpoint_figures",
    "percentile",
    "rss_bytes",
    "run_clients",
    "wait_ready",
]


@dataclass(frozen=True)
class RequestSpec:
    """One kind of request: a label, method, path, JSON body, extra headers and the statuses that are expected."""

    name: str
    method: str
    path: str
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    expected: frozenset[int] = frozenset({200})


@dataclass
class Sample:
    """What one request got: status (None when the connection failed), latency, parsed JSON body, error text."""

    name: str
    status: int | None
    latency_s: float
    started: float
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values.

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
        2.5
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _send(conn: http.client.HTTPConnection, spec: RequestSpec, token: str | None) -> tuple[int, dict[str, str], Any]:
    headers = dict(spec.headers)
    if token is not None and "Authorization" not in headers:
        headers["Authorization"] = f"Bearer {token}"
    payload = None
    if spec.body is not None:
        payload = spec.body if isinstance(spec.body, bytes) else json.dumps(spec.body).encode("utf-8")
        headers.setdefault("Content-Type", "application/json")
    conn.request(spec.method, spec.path, body=payload, headers=headers)
    response = conn.getresponse()
    raw = response.read()
    kind = response.getheader("Content-Type", "")
    body: Any = json.loads(raw) if raw and kind.startswith("application/json") else raw.decode("utf-8", "replace")
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def run_clients(
    host: str,
    port: int,
    pick: Callable[[int], RequestSpec],
    *,
    token: str | None,
    clients: int,
    max_requests: int,
    max_seconds: float,
    timeout_s: float = 60.0,
    keep_bodies: bool = False,
) -> list[Sample]:
    """Send up to ``max_requests`` requests (``pick(i)`` chooses the i-th) from ``clients`` threads, for at most
    ``max_seconds``; return one :class:`Sample` per request. A sample whose status is not in its spec's
    ``expected`` set, or whose connection failed, carries an ``error``.

    Example:
        >>> run_clients("127.0.0.1", 9, lambda i: RequestSpec("x", "GET", "/"), token=None, clients=1,
        ...             max_requests=1, max_seconds=1)[0].status is None  # nothing listens on port 9
        True
    """
    counter = itertools.count()
    deadline = time.monotonic() + max_seconds
    samples: list[Sample] = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        try:
            while time.monotonic() < deadline:
                index = next(counter)
                if index >= max_requests:
                    return
                spec = pick(index)
                started = time.perf_counter()
                try:
                    status, headers, body = _send(conn, spec, token)
                except (OSError, http.client.HTTPException) as err:
                    conn.close()
                    sample = Sample(spec.name, None, time.perf_counter() - started, started, error=repr(err))
                else:
                    error = None if status in spec.expected else f"unexpected status {status}: {str(body)[:200]}"
                    kept = body if keep_bodies or error else None
                    sample = Sample(spec.name, status, time.perf_counter() - started, started, kept, headers, error)
                with lock:
                    samples.append(sample)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, name=f"load-client-{n}", daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max_seconds + timeout_s + 5)
    return samples


def endpoint_figures(samples: Sequence[Sample], elapsed_s: float) -> dict[str, dict[str, Any]]:
    """Per request name: count, requests per second over ``elapsed_s``, p50 and p99 latency (ms), statuses and
    the number of unexpected outcomes.

    Example:
        >>> figures = endpoint_figures([Sample("healthz", 200, 0.002, 0.0)], elapsed_s=1.0)
        >>> figures["healthz"]["count"], figures["healthz"]["p50_ms"]
        (1, 2.0)
    """
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.name].append(sample)
    figures = {}
    for name, group in sorted(groups.items()):
        latencies = [s.latency_s * 1000 for s in group]
        figures[name] = {
            "count": len(group),
            "rps": len(group) / elapsed_s,
            "p50_ms": round(percentile(latencies, 50), 3),
            "p99_ms": round(percentile(latencies, 99), 3),
            "mean_ms": round(statistics.fmean(latencies), 3),
            "statuses": dict(Counter(str(s.status) for s in group)),
            "unexpected": sum(1 for s in group if s.error),
        }
    return figures


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from ``/proc/PID/status`` (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no VmRSS for process {pid}")


def wait_ready(port: int, timeout_s: float, alive: Callable[[], bool] | None = None) -> bool:
    """Poll ``GET /readyz`` on 127.0.0.1:``port`` until it answers 200 (True), ``timeout_s`` passes or ``alive``
    says the server is gone (False).

    Example:
        >>> wait_ready(9, 0.1)  # nothing listens on port 9 here
        False
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (alive is None or alive()):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return True
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    return False


class ServerProcess:
    """``safeguard serve`` in a child process, on 127.0.0.1; ``start`` waits until ``/readyz`` answers 200.

    Example:
        >>> server = ServerProcess(Path("server.yaml"), port=8123)  # doctest: +SKIP
        >>> server.start(); server.kill_9(); server.start(); server.stop()  # doctest: +SKIP
    """

    def __init__(self, config: Path, port: int, log: Path | None = None, extra_args: Sequence[str] = ()) -> None:
        self.config, self.port, self.log, self.extra_args = config, port, log, tuple(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_load(cls, name: str, port: int) -> tuple[ServerProcess, str, Path]:
        """A server set up for load runs in a new temporary folder: one ``balanced`` key named ``name`` and limits
        high enough not to shape the figures (queue 64, ten million requests a minute). Returns the unstarted
        server, the key's token and the folder (keys, settings, audit log and server log)."""
        import tempfile

        from safeguard.server.keys import KeyStore

        work = Path(tempfile.mkdtemp(prefix=f"safeguard-{name}-"))
        _, token = KeyStore(work / "keys.json").add(name, "balanced", rate_per_minute=10_000_000)
        config = work / "server.yaml"
        limits = {"queue_size": 64, "rate_per_minute": 10_000_000}
        config.write_text(json.dumps({"keys": "keys.json", "audit": {"path": "audit.jsonl"}, "limits": limits}))
        return cls(config, port=port, log=work / "server.log"), token, work

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the server is not running")
        return self.process.pid

    def start(self, ready_timeout_s: float = 300.0) -> None:
        command = [sys.executable, "-m", "safeguard.cli", "serve", "--config", str(self.config)]
        command += ["--host", "127.0.0.1", "--port", str(self.port), *self.extra_args]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 (the child keeps it)
        self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        if not wait_ready(self.port, ready_timeout_s, alive=lambda: self.process.poll() is None):  # type: ignore[union-attr]
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode} before it was ready")
            self.stop()
            raise TimeoutError(f"the server was not ready within {ready_timeout_s} s")

    def kill_9(self) -> None:
        """Kill the server with SIGKILL: no shutdown code runs, as in a crash."""
        self.process.kill()  # type: ignore[union-attr]
        self.process.wait(timeout=60)  # type: ignore[union-attr]

    def stop(self) -> None:
        """Stop the server with SIGTERM (SIGKILL after 30 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill_9()
