// Watch a call's events and send it DTMF over the call WebSocket, from Node with the `ws`
// package (`npm install ws`). Prints the command's ack and each event (one JSON line each);
// closes once the ack and the call.dtmf event it caused have both come, or when the call ends.
//
//   node call-socket.mjs http://127.0.0.1:8080 "$API" call_… 12#
import WebSocket from 'ws';

const [base, key, callId, digits = '5'] = process.argv.slice(2);
if (!base || !key || !callId) {
  console.error('usage: node call-socket.mjs <base-url> <api-key> <call-id> [digits]');
  process.exit(2);
}
const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/v1/calls/${callId}/stream`, {
  headers: { Authorization: `Bearer ${key}` }, // a server-side client sends the key in a header
});
let acked = false;
let heard = false;
ws.on('open', () => ws.send(JSON.stringify({ type: 'send_dtmf', id: 'c1', digits })));
ws.on('message', (data, isBinary) => {
  if (isBinary) return; // call audio, only with ?audio=
  const frame = JSON.parse(data.toString());
  if (frame.type === 'ack') {
    acked = true;
    console.log(JSON.stringify({ ack: frame.id }));
  } else if (frame.type === 'error') {
    console.log(JSON.stringify({ error: frame.error_code, id: frame.id, message: frame.message }));
    process.exitCode = 1;
    ws.close(1000);
  } else {
    // Every other frame is an event's envelope: event_type, seq, payload, …
    heard ||= frame.event_type === 'call.dtmf' && frame.payload.digits === digits;
    console.log(JSON.stringify({ event_type: frame.event_type, seq: frame.seq }));
  }
  if (acked && heard) ws.close(1000);
});
ws.on('close', (code) => console.log(JSON.stringify({ close: code })));
ws.on('error', (err) => {
  console.error(err.message);
  process.exitCode = 1;
});
