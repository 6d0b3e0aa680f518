"""Follow a call's live transcript from Python 3.8+, standard library only: seed 000's SSE
stream. Prints one JSON line per turn; a partial turn (is_final false) is followed by its final
with the same turn_id. After a dropped connection or a server restart (going_away) it reconnects
with Last-Event-ID; it stops when the call ends.

    python3 transcript.py http://127.0.0.1:8080 "$API" call_…
"""
import json
import sys
import time
import urllib.error
import urllib.request


def follow(base, key, call_id):
    last_event_id = None
    while True:
        headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        request = urllib.request.Request(
            f"{base}/v1/calls/{call_id}/transcript/stream", headers=headers
        )
        reconnect = False
        try:
            with urllib.request.urlopen(request, timeout=90) as response:
                if response.status == 204:  # a finished call with nothing (more) to send
                    return
                event = {}
                for raw in response:  # `: heartbeat` every 30 s keeps the read alive
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line == "":
                        if "id" in event:
                            last_event_id = event["id"]
                        if "data" in event:
                            data = json.loads(event["data"])
                            if event.get("event") == "error":
                                # going_away: a restart; call_failed and the rest are final.
                                reconnect = data["error_code"] == "going_away"
                                print(f"{data['error_code']}: {data['message']}", file=sys.stderr)
                            else:
                                print(json.dumps(data), flush=True)
                        event = {}
                    elif not line.startswith(":"):
                        field, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if field == "data":
                            event["data"] = value if "data" not in event else event["data"] + "\n" + value
                        elif field in ("id", "event"):
                            event[field] = value
        except urllib.error.HTTPError as err:
            sys.exit(f"HTTP {err.code}: {err.read().decode()}")
        except (OSError, urllib.error.URLError) as err:
            print(f"connection lost ({err}); resuming", file=sys.stderr)
            reconnect = True
        if not reconnect:
            return  # the server ended the stream: the call is over
        time.sleep(1)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python3 transcript.py <base-url> <api-key> <call-id>")
    follow(*sys.argv[1:])
