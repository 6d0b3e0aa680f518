// Follow a call's live transcript from Node (18 or later), with no library: seed 000's SSE
// stream, read with fetch. Prints one JSON line per turn; a partial turn (`is_final: false`)
// is followed by its final with the same `turn_id`. After a dropped connection or a server
// restart (`going_away`) it reconnects with `Last-Event-ID`, missing nothing the history holds;
// it stops when the call ends (the server closes the stream, or answers 204).
//
//   node transcript.mjs http://127.0.0.1:8080 "$API" call_…
const [base, key, callId] = process.argv.slice(2);
if (!base || !key || !callId) {
  console.error('usage: node transcript.mjs <base-url> <api-key> <call-id>');
  process.exit(2);
}

let lastEventId = null;
let reconnect = false;

function dispatch(event) {
  if (event.id) lastEventId = event.id;
  if (event.data === undefined) return;
  const data = JSON.parse(event.data);
  if (event.event === 'error') {
    // going_away: the server is restarting; anything else (call_failed, token_expired) is final.
    reconnect = data.error_code === 'going_away';
    console.error(`${data.error_code}: ${data.message}`);
    return;
  }
  console.log(JSON.stringify(data));
}

for (;;) {
  const headers = { Authorization: `Bearer ${key}`, Accept: 'text/event-stream' };
  if (lastEventId) headers['Last-Event-ID'] = lastEventId;
  reconnect = false;
  let res;
  try {
    res = await fetch(`${base}/v1/calls/${callId}/transcript/stream`, { headers });
  } catch (err) {
    console.error(`cannot connect: ${err.message}; retrying`);
    await new Promise((r) => setTimeout(r, 1000));
    continue;
  }
  if (res.status === 204) break; // a finished call with nothing (more) to send
  if (!res.ok) {
    console.error(`HTTP ${res.status}: ${await res.text()}`);
    process.exit(1);
  }
  const decoder = new TextDecoder();
  let buffer = '';
  let event = {};
  let dropped = false;
  try {
    for await (const chunk of res.body) {
      buffer += decoder.decode(chunk, { stream: true });
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl).replace(/\r$/, '');
        buffer = buffer.slice(nl + 1);
        if (line === '') {
          dispatch(event);
          event = {};
        } else if (!line.startsWith(':')) { // `: heartbeat` comments keep the line alive
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'data') event.data = event.data === undefined ? value : `${event.data}\n${value}`;
          else if (field === 'id') event.id = value;
          else if (field === 'event') event.event = value;
        }
      }
    }
  } catch {
    dropped = true; // the connection broke: resume after the last id seen
  }
  if (!dropped && !reconnect) break; // the server ended the stream: the call is over
  await new Promise((r) => setTimeout(r, 1000));
}
