"""An audio stream service (seed 004's service_url) in Python with the `websockets` package:
the gateway connects to it for each stream. It prints what it receives (one JSON line per
`start`, then a count of `media` per track every 50 frames, and each `playedStream`), and when
the first `media` of the caller arrives it plays half a second of a 440 Hz tone into the call
(`playAudio`, L16 at 8 kHz, little-endian) followed by a `checkpoint`, which the gateway
answers with `playedStream` once the tone has been heard.

    python3 audio_service.py 9000
"""
import asyncio
import base64
import json
import math
import struct
import sys

import websockets


def tone(hz=440, ms=500, rate=8000):
    samples = [int(8000 * math.sin(2 * math.pi * hz * i / rate)) for i in range(rate * ms // 1000)]
    return base64.b64encode(struct.pack(f"<{len(samples)}h", *samples)).decode()


async def serve_stream(ws):
    counts = {}
    played = False
    async for message in ws:
        if isinstance(message, bytes):
            continue  # the protocol is JSON text only
        msg = json.loads(message)
        event = msg.get("event")
        if event == "start":
            print(json.dumps({"start": msg["start"]}), flush=True)
        elif event == "media":
            track = msg["media"]["track"]
            counts[track] = counts.get(track, 0) + 1
            if counts[track] % 50 == 0:
                print(json.dumps({"media": counts}), flush=True)
            if track == "inbound" and not played:
                played = True
                await ws.send(json.dumps({"event": "playAudio", "media": {
                    "contentType": "audio/x-l16", "sampleRate": 8000, "payload": tone()}}))
                await ws.send(json.dumps({"event": "checkpoint", "name": "greeting"}))
        elif event in ("playedStream", "clearedAudio", "dtmf"):
            print(json.dumps({event: msg}), flush=True)


async def main(port):
    async with websockets.serve(serve_stream, "127.0.0.1", port) as server:
        print(json.dumps({"listening": server.sockets[0].getsockname()[1]}), flush=True)
        await asyncio.get_running_loop().create_future()  # until stopped


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 9000))
