"""Watch a call's events and send it DTMF over the call WebSocket, from Python with the
`websockets` package (pip install websockets). Prints the command's ack and each event (one
JSON line each); closes once the ack and the call.dtmf event it caused have both come, or when
the call ends.

    python3 call_socket.py http://127.0.0.1:8080 "$API" call_… 12#
"""
import asyncio
import json
import sys

import websockets


async def main(base, key, call_id, digits="5"):
    url = base.replace("http", "ws", 1) + f"/v1/calls/{call_id}/stream"
    # A server-side client sends the key in a header; a browser would use a stream token.
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send(json.dumps({"type": "send_dtmf", "id": "c1", "digits": digits}))
        acked = heard = False
        async for message in ws:  # ends when the call ends (close 1000)
            if isinstance(message, bytes):
                continue  # call audio, only with ?audio=
            frame = json.loads(message)
            if frame.get("type") == "ack":
                acked = True
                print(json.dumps({"ack": frame["id"]}), flush=True)
            elif frame.get("type") == "error":
                print(json.dumps({"error": frame["error_code"], "message": frame["message"]}), flush=True)
                return 1
            else:  # an event's envelope: event_type, seq, payload, …
                heard = heard or (
                    frame["event_type"] == "call.dtmf" and frame["payload"]["digits"] == digits
                )
                print(json.dumps({"event_type": frame["event_type"], "seq": frame["seq"]}), flush=True)
            if acked and heard:
                return 0
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit("usage: python3 call_socket.py <base-url> <api-key> <call-id> [digits]")
    sys.exit(asyncio.run(main(*sys.argv[1:])))
