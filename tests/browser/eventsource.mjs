// A customer's own web page, on its own origin, runs seed 000's EventSource snippet against
// the gateway in a real Chromium. Prints one JSON line with what the page saw.
//
// usage: node eventsource.mjs <gateway-base-url> <api-key> <call-id>
import http from 'node:http';
import { chromium } from 'playwright-core';

const [gateway, apiKey, callId] = process.argv.slice(2);
if (!gateway || !apiKey || !callId) {
  console.error('usage: node eventsource.mjs <gateway> <api-key> <call-id>');
  process.exit(2);
}

// The page is the seed's snippet, nearly verbatim: only the host is the test gateway.
const page = `<!doctype html><meta charset="utf-8"><title>customer dashboard</title>
<script>
window.frames_seen = [];
window.errors_seen = [];
const callId = ${JSON.stringify(callId)};
const apiKey = ${JSON.stringify(apiKey)};
const es = new EventSource(
  \`${gateway}/v1/calls/\${callId}/transcript/stream?token=\${apiKey}\`
);
es.onmessage = (frame) => {
  const turn = JSON.parse(frame.data);
  window.frames_seen.push({ id: frame.lastEventId, ...turn });
};
es.addEventListener('error', (frame) => {
  window.errors_seen.push(frame.data ? JSON.parse(frame.data) : { readyState: es.readyState });
});
</script>`;

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(page);
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
         '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
});
try {
  const tab = await browser.newPage();
  await tab.goto(origin);
  // Wait for a partial and the final of the same turn.
  await tab.waitForFunction(() => {
    const f = window.frames_seen;
    return f.some((a) => !a.is_final && f.some((b) => b.is_final && b.turn_id === a.turn_id));
  }, null, { timeout: 30000 });
  // From the same page, a key in the URL of any other path is refused.
  const otherPathStatus = await tab.evaluate(async ({ gateway, apiKey }) => {
    const r = await fetch(`${gateway}/v1/calls?token=${apiKey}`);
    return r.status;
  }, { gateway, apiKey });
  const result = await tab.evaluate(() => ({ frames: window.frames_seen, errors: window.errors_seen }));
  console.log(JSON.stringify({ origin, otherPathStatus, ...result }));
} finally {
  await browser.close();
  server.close();
}
