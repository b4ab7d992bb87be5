"""Benchmark the host service on 127.0.0.1: N concurrent clients, bounded in time and count.

Prints throughput, p50 and p99 per endpoint, error counts, and the moderation endpoint's throughput as a ratio to
in-process ``check_prompts`` on the same prompts in the same run.

Example:
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_server.py --clients 8 --seconds 20 --requests 2000
"""

from __future__ import annotations

import argparse
import time

import safeguard
from safeguard.server.loadgen import RequestSpec, ServerProcess, endpoint_figures, run_clients

PROMPTS = ["a blue square", "a red circle", "a small green triangle on a white background", "a scarlet star"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="time bound per phase")
    parser.add_argument("--requests", type=int, default=2000, help="count bound per phase")
    parser.add_argument("--port", type=int, default=8791)
    args = parser.parse_args()
    server, token, _ = ServerProcess.for_load("bench", args.port)
    server.start()
    try:
        moderation = [RequestSpec("moderations", "POST", "/v1/moderations", {"input": p}) for p in PROMPTS]
        mixed = [
            *moderation,
            RequestSpec("generations", "POST", "/v1/images/generations", {"prompt": "a blue square", "steps": 4}),
            RequestSpec("generations", "POST", "/v1/images/generations", {"prompt": "a red circle", "steps": 4}),
            RequestSpec("healthz", "GET", "/healthz"),
        ]
        for label, specs in (("moderation only", moderation), ("mixed", mixed)):
            start = time.monotonic()
            samples = run_clients(
                "127.0.0.1",
                args.port,
                lambda i, s=specs: s[i % len(s)],
                token=token,
                clients=args.clients,
                max_requests=args.requests,
                max_seconds=args.seconds,
            )
            elapsed = time.monotonic() - start
            print(f"== {label}: {len(samples)} requests in {elapsed:.1f} s from {args.clients} clients")
            for name, fig in endpoint_figures(samples, elapsed).items():
                print(
                    f"  {name:12s} n={fig['count']:5d} {fig['rps']:8.1f} req/s  p50 {fig['p50_ms']:8.2f} ms  "
                    f"p99 {fig['p99_ms']:8.2f} ms  statuses {fig['statuses']}  errors {fig['unexpected']}"
                )
            if label == "moderation only":
                served_rps = len(samples) / elapsed
        # In-process, same prompts, same run: one prompt per call, like one moderation request.
        from safeguard.toy import TOY_WORLD_DIR

        policy = TOY_WORLD_DIR / "policy.yaml"
        safeguard.check_prompts(PROMPTS, policy, "balanced")  # warm the cached guard
        count, start = 0, time.monotonic()
        while time.monotonic() - start < min(args.seconds, 10.0) and count < args.requests:
            safeguard.check_prompts([PROMPTS[count % len(PROMPTS)]], policy, "balanced")
            count += 1
        inproc_rps = count / (time.monotonic() - start)
        print(f"== in-process check_prompts: {inproc_rps:.1f} prompts/s (one per call)")
        print(f"== moderation endpoint / in-process ratio: {served_rps / inproc_rps:.3f}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
