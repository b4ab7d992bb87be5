"""Soak the host service: >= 10,000 mixed requests from 8 clients, memory first vs last, then a kill -9 mid-run,
a restart, ``safeguard audit verify`` and a check that every request id that got a 200 is in the audit log.

Example:
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/soak_server.py --requests 10000 --clients 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

from safeguard.server.loadgen import RequestSpec, ServerProcess, endpoint_figures, rss_bytes, run_clients

SPECS = [
    RequestSpec("moderations", "POST", "/v1/moderations", {"input": "a blue square"}),
    RequestSpec("moderations", "POST", "/v1/moderations", {"input": ["a red circle", "a green star"]}),
    RequestSpec("healthz", "GET", "/healthz"),
    RequestSpec("bad_json", "POST", "/v1/moderations", b"{nope", expected=frozenset({400})),
    RequestSpec(
        "no_key", "POST", "/v1/moderations", {"input": "x"}, (("Authorization", "Bearer sgk_bad"),), frozenset({401})
    ),
]
GEN = [
    RequestSpec("generations", "POST", "/v1/images/generations", {"prompt": "a blue square", "steps": 2}),
    RequestSpec("generations", "POST", "/v1/images/generations", {"prompt": "a red circle", "steps": 2}),
]


def pick(i: int) -> RequestSpec:
    # One generation in 50: generation is ~100x slower than moderation on 2 CPU cores.
    return GEN[(i // 50) % 2] if i % 50 == 0 else SPECS[i % len(SPECS)]


def ok_ids(samples: list) -> set[str]:
    return {s.body["id"] for s in samples if s.status == 200 and isinstance(s.body, dict) and "id" in s.body}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--port", type=int, default=8792)
    args = parser.parse_args()
    server, token, work = ServerProcess.for_load("soak", args.port)
    server.start()
    rss: list[int] = [rss_bytes(server.pid)]
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.wait(1.0):
            try:
                rss.append(rss_bytes(server.pid))
            except OSError:
                return

    threading.Thread(target=sample_rss, daemon=True).start()
    start = time.monotonic()
    samples = run_clients(
        "127.0.0.1",
        args.port,
        pick,
        token=token,
        clients=args.clients,
        max_requests=args.requests,
        max_seconds=args.seconds,
        keep_bodies=True,
    )
    elapsed = time.monotonic() - start
    stop.set()
    unexpected = sum(1 for s in samples if s.error)
    print(f"== soak: {len(samples)} requests in {elapsed:.1f} s from {args.clients} clients, {unexpected} unexpected")
    for name, fig in endpoint_figures(samples, elapsed).items():
        print(
            f"  {name:12s} n={fig['count']:5d} p50 {fig['p50_ms']:7.2f} ms p99 {fig['p99_ms']:8.2f} ms "
            f"statuses {fig['statuses']} unexpected {fig['unexpected']}"
        )
    tenth = min(len(rss) - 1, max(1, len(rss) // 10))  # a short run may have a single sample
    print(
        f"== RSS first {rss[0] / 2**20:.1f} MiB, after warm-up {rss[tenth] / 2**20:.1f} MiB, "
        f"last {rss[-1] / 2**20:.1f} MiB ({len(rss)} samples)"
    )
    ids = ok_ids(samples)
    # Phase 2: load again and kill -9 the server under it.
    killer = threading.Timer(3.0, server.kill_9)
    killer.start()
    crashed = run_clients(
        "127.0.0.1",
        args.port,
        pick,
        token=token,
        clients=args.clients,
        max_requests=args.requests,
        max_seconds=30,
        keep_bodies=True,
        timeout_s=10,
    )
    killer.join()
    ids |= ok_ids(crashed)
    print(f"== kill -9 after 3 s under load: {len(crashed)} requests sent, {len(ok_ids(crashed))} got a 200 with an id")
    server.start()
    after = run_clients(
        "127.0.0.1", args.port, pick, token=token, clients=2, max_requests=200, max_seconds=30, keep_bodies=True
    )
    ids |= ok_ids(after)
    print(f"== restarted: {len(after)} requests, {sum(1 for s in after if s.error)} unexpected")
    server.stop()
    verify = subprocess.run(
        [sys.executable, "-m", "safeguard.cli", "audit", "verify", str(work / "audit.jsonl")],
        capture_output=True,
        text=True,
    )
    print(f"== safeguard audit verify (exit {verify.returncode}): {verify.stdout.strip()}")
    logged = set()
    for path in sorted(work.glob("audit.jsonl*")):
        for line in path.read_text().splitlines():
            logged.add(json.loads(line).get("request_id"))
    missing = ids - logged
    print(f"== request ids with a 200: {len(ids)}; missing from the audit log: {len(missing)}")
    failed = unexpected or verify.returncode or missing or any(s.error for s in after)
    print("== PASS" if not failed else "== FAIL")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
