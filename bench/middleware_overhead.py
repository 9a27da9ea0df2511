"""Throughput of the real vLLM server on CPU with and without the llmforge usage middleware.

Two servers with identical arguments except ``--middleware llmforge_server.usage.UsageMiddleware`` serve the
tiny model on 127.0.0.1. Only one is loaded at a time: rounds alternate A B B A ... so drift on a shared
machine cancels out. Each round sends a bounded number of requests (half streamed with include_usage, half
plain) at fixed concurrency and measures completion tokens per second. The tiny model makes per-request
overhead as large a share of the work as it can be, so this is a worst case for the middleware.

    HF_HUB_OFFLINE=1 PYTHONPATH=operator:trainer-image:server-image:. \\
        ~/.cache/llmforge/venv/bin/python bench/middleware_overhead.py --rounds 8 --requests 48
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), *(str(ROOT / d) for d in ("operator", "trainer-image", "server-image"))]

from llmforge.api.serving import ServeConfig  # noqa: E402
from llmforge_server.args import USAGE_MIDDLEWARE  # noqa: E402
from llmforge_server.serve import command, serve_env  # noqa: E402
from tests.fixtures.ml import tiny_model_path  # noqa: E402
from tests.fixtures.vllm import VllmServer, free_port, small_vllm_settings, stop, vllm_env  # noqa: E402


def launch(config: ServeConfig, root: Path, middleware: bool, timeout: float = 300.0):
    cmd = command(config)
    if not middleware:
        i = cmd.index("--middleware")
        assert cmd[i + 1] == USAGE_MIDDLEWARE
        del cmd[i:i + 2]
    root.mkdir(parents=True, exist_ok=True)
    log = root / "vllm.log"
    env = {**vllm_env(root), **serve_env(config)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = VllmServer(base_url=f"http://127.0.0.1:{config.port}", pid=proc.pid, log=log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            server.get("/health")
            return server, proc
        except OSError:
            if time.monotonic() > deadline:
                stop(proc)
                raise
            time.sleep(0.5)


async def one_round(base_url: str, n: int, concurrency: int, max_tokens: int) -> dict:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    tokens = 0

    async def request(client, i):
        nonlocal tokens
        body = {"model": "tiny", "prompt": f"the quick brown fox {i}", "max_tokens": max_tokens,
                "temperature": 0, "ignore_eos": True}
        async with sem:
            if i % 2:
                body |= {"stream": True, "stream_options": {"include_usage": True}}
                last = None
                async with client.stream("POST", "/v1/completions", json=body) as r:
                    r.raise_for_status()
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            last = line
                tokens += json.loads(last[6:])["usage"]["completion_tokens"]
            else:
                r = await client.post("/v1/completions", json=body)
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(base_url=base_url, timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(request(client, i) for i in range(n)))
        wall = time.perf_counter() - t0
    assert tokens == n * max_tokens, tokens
    return {"tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall}


def isolated(n: int = 5000, chunks: int = 64) -> dict:
    """Microseconds the middleware adds per request with no vLLM: a JSON response and a ``chunks``-event SSE
    stream with a usage chunk, each through a bare ASGI app and through UsageMiddleware (private registry)."""
    from prometheus_client import CollectorRegistry

    from llmforge_server.metering import Settings
    from llmforge_server.usage import UsageMiddleware, UsageState

    body = json.dumps({"model": "tiny", "prompt": "the quick brown fox " * 20, "max_tokens": 64}).encode()
    plain = json.dumps({"id": "cmpl-1", "choices": [{"text": "x " * 64}],
                        "usage": {"prompt_tokens": 81, "completion_tokens": 64, "total_tokens": 145}}).encode()
    events = [b'data: {"id":"cmpl-1","choices":[{"index":0,"text":" x"}]}\n\n'] * chunks + [
        b'data: {"id":"cmpl-1","choices":[],"usage":{"prompt_tokens":81,"completion_tokens":64}}\n\n',
        b"data: [DONE]\n\n"]

    def app_for(stream: bool):
        async def app(scope, receive, send):
            await receive()
            ctype = b"text/event-stream" if stream else b"application/json"
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype)]})
            for part in (events if stream else [plain]):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        return app

    async def drive(app, count):
        scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(_message):
            pass

        t0 = time.perf_counter()
        for _ in range(count):
            await app(dict(scope), receive, send)
        return (time.perf_counter() - t0) / count

    out = {}
    real_stdout, sys.stdout = sys.stdout, open(os.devnull, "w")  # the usage log line is written, to nowhere
    try:
        for stream in (False, True):
            bare = app_for(stream)
            wrapped = UsageMiddleware(bare, UsageState.create(Settings("bench", 1.0, ("tiny",)), CollectorRegistry()))
            best = {"bare": math.inf, "wrapped": math.inf}
            for _ in range(5):  # interleaved repeats, best of each: the least disturbed run
                best["bare"] = min(best["bare"], asyncio.run(drive(bare, n)))
                best["wrapped"] = min(best["wrapped"], asyncio.run(drive(wrapped, n)))
            out["stream" if stream else "json"] = round((best["wrapped"] - best["bare"]) * 1e6, 1)
    finally:
        sys.stdout.close()
        sys.stdout = real_stdout
    return {"overhead_us_per_request": out, "sse_events": chunks + 2}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8, help="rounds per server (even; ABBA order)")
    p.add_argument("--requests", type=int, default=48, help="requests per round")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=16, help="untimed requests per server first")
    p.add_argument("--isolated", action="store_true", help="only the no-vLLM microbenchmark of the middleware")
    a = p.parse_args(argv)
    if a.isolated:
        print(json.dumps(isolated(), indent=1))
        return 0

    model = tiny_model_path()
    work = Path(tempfile.mkdtemp(prefix="llmforge-bench-"))
    servers, procs = {}, []
    try:
        for name, mw in (("without", False), ("with", True)):  # started one after the other
            cfg = ServeConfig.model_validate({
                "variant": "bench", "servedModelName": "tiny", "usdPerHour": 1.0, "host": "127.0.0.1",
                "port": free_port(), "model": {"baseModel": {"uri": str(model)}},
                "vllm": small_vllm_settings()})
            server, proc = launch(cfg, work / name, mw)
            servers[name] = server
            procs.append(proc)
            print(f"{name} middleware: up (pid {proc.pid})", file=sys.stderr)
        for server in servers.values():
            asyncio.run(one_round(server.base_url, a.warmup, a.concurrency, a.max_tokens))
        results = {"without": [], "with": []}
        pairs = []  # rounds 2k and 2k+1 hold one of each: their ratio sees nearly the same machine load
        order = ["without", "with", "with", "without"]
        for r in range(a.rounds * 2):
            name = order[r % 4]
            res = asyncio.run(one_round(servers[name].base_url, a.requests, a.concurrency, a.max_tokens))
            results[name].append(res["tokens_per_s"])
            if r % 2:
                pairs.append(results["with"][-1] / results["without"][-1])
            print(f"round {r:2d} {name:7s} {res['tokens_per_s']:8.1f} tok/s", file=sys.stderr)
        metered = servers["with"].metrics()
        assert "llmforge_requests_total" in metered and "llmforge_requests_total" not in servers["without"].metrics()
    finally:
        for proc in procs:
            stop(proc)

    med = {k: statistics.median(v) for k, v in results.items()}
    summary = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}",
        "rounds_per_server": a.rounds, "requests_per_round": a.requests, "concurrency": a.concurrency,
        "max_tokens": a.max_tokens,
        "tokens_per_s": {k: [round(x, 1) for x in v] for k, v in results.items()},
        "median_tokens_per_s": {k: round(v, 1) for k, v in med.items()},
        "ratio_median": round(med["with"] / med["without"], 4),
        "pair_ratios": [round(x, 3) for x in pairs],
        "ratio_pairs_median": round(statistics.median(pairs), 4),
        "load_average_after": os.getloadavg(),
        "ratio_total": round(sum(results["with"]) / sum(results["without"]), 4),
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
