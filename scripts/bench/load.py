#!/usr/bin/env python3
"""Closed-loop HTTP load generator (stdlib only): N concurrent workers POST the same JSON body
for D seconds; prints one JSON line with requests, errors, throughput and p50/p90/p99 latency.

    python3 scripts/bench/load.py --url http://127.0.0.1:8080/v1/moderate \
        --body body.json --concurrency 4 --duration 5
"""
import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit


async def worker(host, port, path, body, deadline, latencies, errors):
    reader, writer = await asyncio.open_connection(host, port)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    while time.monotonic() < deadline:
        start = time.monotonic()
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        length, close = 0, False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value.strip())
            if name.lower() == "connection" and "close" in value.lower():
                close = True
        await reader.readexactly(length)
        latencies.append(time.monotonic() - start)
        if not status_line.split(b" ")[1].startswith(b"2"):
            errors.append(status_line)
        if close:
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
    writer.close()


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--body", required=True, help="file holding the JSON request body")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--duration", type=float, default=5.0)
    args = ap.parse_args()
    url = urlsplit(args.url)
    body = open(args.body, "rb").read()
    latencies, errors = [], []
    start = time.monotonic()
    deadline = start + args.duration
    await asyncio.gather(
        *[
            worker(url.hostname, url.port, url.path, body, deadline, latencies, errors)
            for _ in range(args.concurrency)
        ]
    )
    elapsed = time.monotonic() - start
    print(
        json.dumps(
            {
                "concurrency": args.concurrency,
                "requests": len(latencies),
                "errors": len(errors),
                "seconds": round(elapsed, 2),
                "rps": round(len(latencies) / elapsed, 1),
                "p50_ms": round(percentile(latencies, 50) * 1e3, 2),
                "p90_ms": round(percentile(latencies, 90) * 1e3, 2),
                "p99_ms": round(percentile(latencies, 99) * 1e3, 2),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
