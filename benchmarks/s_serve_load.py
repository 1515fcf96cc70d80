"""S1/S2/S3: load test of `hypersteer serve` with the real `openai` client (AsyncOpenAI).

Starts the server on a free port of 127.0.0.1 (or uses --url), sends a bounded number of
chat completions of exactly --tokens new tokens each (greedy, ``ignore_eos``), prints one line
per scenario, and stops the server. Every request names its own steering prompt.

    S1  32 clients at once, 32 different steering prompts: throughput ÷ the same 32 requests
        one at a time                                                                 (target ≥ 4)
    S2  32 clients at once: steered ÷ unsteered throughput                            (target ≥ 0.9)
    S3  p50 / p95 latency (and first-token latency) at 1, 8 and 32 closed-loop clients

Sides are interleaved (A B B A ...) and ratios are medians of back-to-back pairs.

    python benchmarks/s_serve_load.py --hypernet dumps/demo/train/HyperSteerXAttn
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = json.loads((ROOT / "axbench_hypersteer" / "resources" / "demo_prompts.json")
                     .read_text(encoding="utf-8"))


def steering_prompts(hypernet: str | None, n: int) -> list[str]:
    """n different steering prompts, built from the trained concepts where known."""
    concepts: list[str] = []
    meta = Path(hypernet).parent / "metadata.jsonl" if hypernet else None
    if meta and meta.is_file():
        concepts = [json.loads(line)["concept"] for line in meta.read_text().splitlines() if line]
    concepts = concepts or ["references to legal terminology", "the ocean", "cooking recipes"]
    out = []
    for i in range(n):
        a, b = concepts[i % len(concepts)], concepts[(i // len(concepts) + i + 1) % len(concepts)]
        out.append(a if i < len(concepts) else f"{a}, and also {b} ({i})")
    return out


def base_prompts(n: int) -> list[str]:
    flat = PROMPTS if isinstance(PROMPTS, list) else [p for v in PROMPTS.values() for p in v]
    flat = [p if isinstance(p, str) else p.get("instruction", str(p)) for p in flat]
    return [flat[i % len(flat)] for i in range(n)]


def start_server(hypernet: str, threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "axbench_hypersteer.cli", "serve",
                             "--hypernet", hypernet, "--port", str(port), "--max_queue", "512"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited: " + proc.stderr.read().decode()[-2000:])
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not come up within 300 s")


class Load:
    def __init__(self, url: str, tokens: int):
        from openai import AsyncOpenAI

        self.client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                                  timeout=600, http_client=None)
        self.model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        self.tokens = tokens

    async def one(self, base: str, steer: str | None) -> tuple[float, float, int]:
        """(latency s, first-token latency s, completion tokens) of one streamed request."""
        extra = {"ignore_eos": True}
        if steer is not None:
            extra["steering"] = {"prompt": steer, "factor": 1.0}
        start = time.perf_counter()
        first, tokens = None, 0
        stream = await self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": base}],
            max_tokens=self.tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body=extra)
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return time.perf_counter() - start, first or 0.0, tokens

    async def burst(self, bases, steers) -> float:
        """All requests at once; tokens/s."""
        start = time.perf_counter()
        results = await asyncio.gather(*(self.one(b, s) for b, s in zip(bases, steers)))
        return sum(r[2] for r in results) / (time.perf_counter() - start)

    async def serial(self, bases, steers) -> float:
        start = time.perf_counter()
        tokens = 0
        for b, s in zip(bases, steers):
            tokens += (await self.one(b, s))[2]
        return tokens / (time.perf_counter() - start)

    async def closed_loop(self, clients: int, per_client: int, steers) -> list[tuple]:
        async def client(c):
            out = []
            for k in range(per_client):
                i = c * per_client + k
                out.append(await self.one(base_prompts(i + 1)[-1], steers[i % len(steers)]))
            return out
        runs = await asyncio.gather(*(client(c) for c in range(clients)))
        return [r for run in runs for r in run]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


async def run(args) -> None:
    load = Load(args.url, args.tokens)
    n = args.clients
    bases, steers = base_prompts(n), steering_prompts(args.hypernet, n)
    await load.burst(bases[:4], steers[:4])  # warm-up
    s1, s2 = [], []
    for rep in range(args.reps):  # A B B A: burst, serial, serial, burst ...
        order = ["burst", "serial"] if rep % 2 == 0 else ["serial", "burst"]
        got = {}
        for side in order:
            got[side] = await (load.burst if side == "burst" else load.serial)(bases, steers)
        s1.append(got["burst"] / got["serial"])
        print(f"  S1 rep {rep}: {got['burst']:.0f} tok/s at {n} clients, "
              f"{got['serial']:.0f} tok/s one at a time", flush=True)
    for rep in range(2 * args.reps):
        order = ["steered", "plain"] if rep % 2 == 0 else ["plain", "steered"]
        got = {}
        for side in order:
            got[side] = await load.burst(bases, steers if side == "steered" else [None] * n)
        s2.append(got["steered"] / got["plain"])
        print(f"  S2 rep {rep}: steered {got['steered']:.0f} tok/s, plain {got['plain']:.0f} "
              f"tok/s", flush=True)
    load_avg = os.getloadavg()[0]
    print(f"S1 batched/serial throughput at {n} clients, {n} different steering prompts: "
          f"{statistics.median(s1):.1f}x (target >= 4; pairs {', '.join(f'{x:.1f}' for x in s1)})"
          f"; load {load_avg:.1f}", flush=True)
    print(f"S2 steered/unsteered throughput at {n} clients: {statistics.median(s2):.2f} "
          f"(target >= 0.9; pairs {', '.join(f'{x:.2f}' for x in s2)}); load {load_avg:.1f}",
          flush=True)
    cells = []
    for clients in (1, 8, 32):
        per_client = max(2, args.s3_requests // clients)
        results = await load.closed_loop(clients, per_client, steers)
        lat, ttft = [r[0] for r in results], [r[1] for r in results]
        cells.append(f"{clients} clients: p50 {pct(lat, .5):.2f} s, p95 {pct(lat, .95):.2f} s "
                     f"(first token p50 {pct(ttft, .5) * 1000:.0f} ms, p95 "
                     f"{pct(ttft, .95) * 1000:.0f} ms; {len(results)} requests)")
    print(f"S3 latency, {args.tokens} new tokens, greedy, steered: " + "; ".join(cells) +
          f"; load {os.getloadavg()[0]:.1f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hypernet", help="a trained DUMP/train/<Method>: starts a server on it")
    p.add_argument("--url", help="or an already running server")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--s3_requests", type=int, default=32, help="requests per S3 level (≥ 2/client)")
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    args = p.parse_args()
    if not (args.hypernet or args.url):
        p.error("give --hypernet (start a server) or --url (use a running one)")
    proc = None
    if not args.url:
        proc, args.url = start_server(args.hypernet, args.threads)
    try:
        asyncio.run(run(args))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
