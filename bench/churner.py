#!/usr/bin/env python3
"""The churn and the bad input of bench/soak.sh, beside the healthy streams of the generator.

For SECONDS, from source addresses 127.0.202.1 and up (apart from the generator's and the
attacker's), it keeps up two loads against 127.0.0.1:PORT:

- churn: CHURN connections a second, each opening a live stream (SSE transcript stream, native
  call WebSocket, or the speech events stream, in turn), reading its first bytes, then closing it,
  half of them politely and half by dropping the socket;
- bad input: BAD requests a second, taken in turn from the cases below, each checked against the
  answer a user relies on (a 4xx with the documented code, or a close); an answer that differs is
  counted as a mismatch and the first few are printed.

Prints one JSON line of counts at the end. Only 127.0.0.1 is ever a target, every loop is bounded
by SECONDS, and it needs nothing beyond Python's standard library.
"""
import argparse
import asyncio
import base64
import json
import os
import time
import urllib.request


def http_json(port, method, path, key, body=None):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read() or b"null")


def raw_request(method, path, headers, body=b""):
    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
    for name, value in headers:
        head += f"{name}: {value}\r\n"
    if body:
        head += f"content-length: {len(body)}\r\n"
    head += "connection: close\r\n\r\n"
    return head.encode() + body


def ws_upgrade(path, key=None):
    headers = [
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", base64.b64encode(os.urandom(16)).decode()),
    ]
    if key:
        headers.append(("authorization", f"Bearer {key}"))
    head = f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
    for name, value in headers:
        head += f"{name}: {value}\r\n"
    return (head + "\r\n").encode()


def ws_frame(opcode, payload):
    """One masked client frame."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return bytes([0x80 | opcode]) + length + mask + masked


def cases(a, call, other_call):
    """(name, request bytes, frames sent after a 101, expected status, expected text in answer)."""
    rk, pk, other = a.runtime_key, a.api_key, a.other_key
    j = [("authorization", f"Bearer {rk}"), ("content-type", "application/json")]
    big_text = "x" * (a.max_event_bytes + 1024)
    return [
        ("malformed json", raw_request("POST", f"/v1/calls/{call}/events", j, b'[{"event_type": "call.dtmf", "payload": {'), None, 400, b"invalid"),
        ("binary body", raw_request("POST", f"/v1/calls/{call}/events", j, os.urandom(512)), None, 400, b"invalid"),
        (
            "event over max_event_bytes",
            raw_request(
                "POST",
                f"/v1/calls/{call}/events",
                j,
                json.dumps([{"event_type": "call.transcription", "payload": {"role": "user", "text": big_text, "is_final": False, "turn_id": "trn_big"}}]).encode(),
            ),
            None,
            413,
            b"event_too_large",
        ),
        ("body over the limit", raw_request("POST", "/v1/calls", j, b"[" + b"0," * 600_000 + b"0]"), None, 413, b"payload_too_large"),
        ("bad key", raw_request("GET", "/v1/calls", [("authorization", "Bearer pk_live_notakey")]), None, 401, b"unauthorized"),
        ("no key", raw_request("GET", f"/v1/calls/{call}", []), None, 401, b"unauthorized"),
        ("unknown call", raw_request("GET", "/v1/calls/call_00000000000000000000000000", [("authorization", f"Bearer {pk}")]), None, 404, b"not_found"),
        ("other workspace's call", raw_request("GET", f"/v1/calls/{other_call}", [("authorization", f"Bearer {pk}")]), None, 404, b"not_found"),
        ("other workspace's stream", raw_request("GET", f"/v1/calls/{call}/transcript/stream", [("authorization", f"Bearer {other}")]), None, 404, b"not_found"),
        ("bad token on a socket", ws_upgrade(f"/v1/calls/{call}/stream?token=st_bogus"), None, 401, b""),
        ("garbage request line", b"HELLO WORLD\r\n\r\n", None, 400, b""),
        ("bad command json", raw_request("POST", f"/v1/calls/{call}/commands", [("authorization", f"Bearer {pk}"), ("content-type", "application/json")], b'{"type": 7'), None, 400, b"invalid"),
        # Upgraded, then a binary frame where text is expected: the socket must close (1003).
        ("binary frame on the call socket", ws_upgrade(f"/v1/calls/{call}/stream", pk), [ws_frame(0x2, os.urandom(64))], 101, b""),
        # Upgraded, then JSON that is no command: answered with an error frame, socket kept.
        ("malformed frame on the call socket", ws_upgrade(f"/v1/calls/{call}/stream", pk), [ws_frame(0x1, b"{nope")], 101, b""),
    ]


async def exchange(a, source, request, frames, read_for):
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", a.port, local_addr=(source, 0)), 5
    )
    try:
        writer.write(request)
        await writer.drain()
        got = b""
        deadline = time.monotonic() + read_for
        while b"\r\n\r\n" not in got and time.monotonic() < deadline:
            chunk = await asyncio.wait_for(reader.read(4096), max(0.01, deadline - time.monotonic()))
            if not chunk:
                break
            got += chunk
        if frames and got.startswith(b"HTTP/1.1 101"):
            for f in frames:
                writer.write(f)
            await writer.drain()
            try:
                tail = await asyncio.wait_for(reader.read(4096), 2)
                got += tail
            except asyncio.TimeoutError:
                pass
        else:
            try:
                while len(got) < 65536:
                    chunk = await asyncio.wait_for(reader.read(4096), 0.5)
                    if not chunk:
                        break
                    got += chunk
            except asyncio.TimeoutError:
                pass
        return got
    finally:
        writer.transport.abort()


async def bad_one(a, stats, source, case):
    name, request, frames, status, text = case
    try:
        got = await exchange(a, source, request, frames, 5)
    except Exception as e:  # noqa: BLE001 - any failure to get an answer is a mismatch
        got = f"no answer: {type(e).__name__}".encode()
    line = got.split(b"\r\n", 1)[0]
    ok = line.startswith(f"HTTP/1.1 {status}".encode()) and text in got
    stats["bad_sent"] += 1
    if ok:
        stats["bad_answered_as_documented"] += 1
    else:
        stats["bad_mismatch"] += 1
        if len(stats["mismatches"]) < 10:
            stats["mismatches"].append(f"{name}: {got[:160]!r}")


async def churn_one(a, stats, source, n, call):
    pk = a.api_key
    kind = n % 3
    if kind == 0:
        request = raw_request("GET", f"/v1/calls/{call}/transcript/stream", [("authorization", f"Bearer {pk}")])
        request = request.replace(b"connection: close\r\n", b"")
        expect = b"HTTP/1.1 200"
    elif kind == 1:
        request = ws_upgrade(f"/v1/calls/{call}/stream", pk)
        expect = b"HTTP/1.1 101"
    else:
        request = raw_request("GET", f"/v1/speech-events/stream?callId={call}", [("authorization", f"Bearer {pk}")])
        request = request.replace(b"connection: close\r\n", b"")
        expect = b"HTTP/1.1 200"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", a.port, local_addr=(source, 0)), 5
        )
    except Exception:  # noqa: BLE001
        stats["churn_refused"] += 1
        return
    try:
        writer.write(request)
        await writer.drain()
        got = await asyncio.wait_for(reader.read(4096), 5)
        if got.startswith(expect):
            stats["churn_opened"] += 1
        else:
            stats["churn_refused"] += 1
            if len(stats["churn_errors"]) < 5:
                stats["churn_errors"].append(got[:120].decode(errors="replace"))
        await asyncio.sleep(a.hold)
        if n % 2 == 0 and kind != 0:
            writer.write(ws_frame(0x8, (1000).to_bytes(2, "big")))
            await writer.drain()
            writer.close()
        else:
            writer.transport.abort()
    except Exception:  # noqa: BLE001
        stats["churn_refused"] += 1
        writer.transport.abort()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", required=True)
    p.add_argument("--runtime-key", required=True)
    p.add_argument("--other-key", required=True, help="a read key of another workspace")
    p.add_argument("--other-runtime-key", required=True)
    p.add_argument("--churn", type=float, default=50, help="stream connections opened and closed a second")
    p.add_argument("--bad", type=float, default=20, help="bad requests a second")
    p.add_argument("--hold", type=float, default=1.0, help="seconds each churned stream stays open")
    p.add_argument("--sources", type=int, default=10)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--max-event-bytes", type=int, default=65536)
    a = p.parse_args()

    call = http_json(a.port, "POST", "/v1/calls", a.runtime_key, {"phone": "+14155550100", "direction": "inbound", "transport": "sip"})["id"]
    other_call = http_json(a.port, "POST", "/v1/calls", a.other_runtime_key, {"phone": "+14155550101", "direction": "inbound", "transport": "sip"})["id"]
    all_cases = cases(a, call, other_call)
    sources = [f"127.0.202.{i}" for i in range(1, a.sources + 1)]
    stats = dict(
        churn_opened=0, churn_refused=0, churn_errors=[], bad_sent=0,
        bad_answered_as_documented=0, bad_mismatch=0, mismatches=[],
    )
    tasks = set()
    start = time.monotonic()
    churned = bad = 0
    while time.monotonic() - start < a.seconds:
        elapsed = time.monotonic() - start
        while churned < int(elapsed * a.churn):
            t = asyncio.create_task(churn_one(a, stats, sources[churned % len(sources)], churned, call))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            churned += 1
        while bad < int(elapsed * a.bad):
            case = all_cases[bad % len(all_cases)]
            t = asyncio.create_task(bad_one(a, stats, sources[bad % len(sources)], case))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            bad += 1
        await asyncio.sleep(0.01)
    if tasks:
        await asyncio.wait(tasks, timeout=15)
    print(json.dumps(stats))


if __name__ == "__main__":
    asyncio.run(main())
