#!/usr/bin/env python3
"""The attacker of bench/attack.sh: opens half-sent HTTP requests to 127.0.0.1:PORT at RATE
connections a second, spread over SOURCES source addresses (127.0.200.1 and up, apart from the generator's 127.0.1.x and on), holds each for
HOLD seconds (or until the server drops it), for SECONDS in all; then prints what it managed.
Only 127.0.0.1 is ever a target, and the loop is bounded by SECONDS."""
import argparse
import asyncio
import socket
import time


async def one(port, source, hold, stats):
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 2
        )
    except Exception:
        stats["refused_at_connect"] += 1
        return
    stats["connected"] += 1
    try:
        writer.write(b"GET /v1/calls HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        got = await asyncio.wait_for(reader.read(1), hold)
        # An empty read or a reset: the server dropped it.
        stats["dropped_by_server"] += 1
        _ = got
    except asyncio.TimeoutError:
        stats["held_to_the_end"] += 1
    except (ConnectionResetError, BrokenPipeError, OSError):
        stats["dropped_by_server"] += 1
    finally:
        try:
            writer.transport.abort()
        except Exception:
            pass


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--sources", type=int, default=20)
    p.add_argument("--hold", type=float, default=8.0)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--delay", type=float, default=0.0, help="seconds to wait before starting")
    a = p.parse_args()
    await asyncio.sleep(a.delay)
    stats = dict(connected=0, refused_at_connect=0, dropped_by_server=0, held_to_the_end=0)
    sources = [f"127.0.200.{i}" for i in range(1, a.sources + 1)]
    tasks = set()
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < a.seconds:
        due = int((time.monotonic() - start) * a.rate)
        while sent < due:
            t = asyncio.create_task(one(a.port, sources[sent % len(sources)], a.hold, stats))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks, return_exceptions=True)
    print(f"attempted {sent} in {a.seconds:.0f} s ({a.rate}/s from {a.sources} addresses): {stats}")


asyncio.run(main())
