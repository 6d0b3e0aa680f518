// The dashboard in a real Chromium against `callstream demo` (the simulator playing calls and
// conversations): sign in with the demo's one-time link, watch a call mid-way and live, send
// DTMF, end the call, take over a conversation and hand it back, look at a webhook endpoint's
// log, and check accessibility with axe-core at desktop and phone widths. Prints one JSON line
// with what it saw; exits non-zero (with the reason on stderr) when a step fails.
//
// usage: node dashboard.mjs <gateway-base-url> <sign-in-secret> <api-key> <long-call-id> <artefact-dir>
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const [base, signIn, apiKey, callId, artefacts] = process.argv.slice(2);
if (!base || !signIn || !apiKey || !callId || !artefacts) {
  console.error('usage: node dashboard.mjs <base> <sign-in-secret> <api-key> <call-id> <artefact-dir>');
  process.exit(2);
}
fs.mkdirSync(artefacts, { recursive: true });
const axeSource = fs.readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

const seen = { requests: [], failed: [], consoleErrors: [], steps: [], axe: [] };
const step = (name) => { seen.steps.push(name); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
         '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
});

async function axeCheck(tab, label) {
  // page.evaluate runs outside the page's Content-Security-Policy, which forbids injected scripts.
  await tab.evaluate(axeSource);
  const result = await tab.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length,
      targets: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
  });
  seen.axe.push({ label, violations: result });
  const serious = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (serious.length) throw new Error(`axe (${label}): ${JSON.stringify(serious)}`);
}

const shot = (tab, name) => tab.screenshot({ path: path.join(artefacts, `${name}.png`), fullPage: false });

let failure = null;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const tab = await context.newPage();
  tab.on('request', (r) => seen.requests.push(r.url()));
  tab.on('websocket', (w) => seen.requests.push(w.url()));
  tab.on('response', (r) => { if (r.status() >= 400) seen.failed.push(`${r.status()} ${r.request().method()} ${r.url()}`); });
  tab.on('console', (m) => { if (m.type() === 'error') seen.consoleErrors.push(m.text()); });
  tab.on('pageerror', (e) => seen.consoleErrors.push(`page error: ${e.message}`));

  // 1. Sign in with the one-time link; its secret leaves the address bar.
  await tab.goto(`${base}/#sign-in=${signIn}`);
  await tab.waitForSelector('#live-calls button', { timeout: 20000 });
  const address = await tab.evaluate(() => location.href);
  if (address.includes(signIn)) throw new Error(`the sign-in secret stayed in the address bar: ${address}`);
  step('signed in with the link');
  await axeCheck(tab, 'calls list, desktop');

  // 2. Open the long call mid-way: the earlier turns are there at once, from the store.
  await tab.click(`#live-calls button[data-call="${callId}"]`);
  await tab.waitForSelector('#call .turn[data-final="true"]', { timeout: 10000 });
  const earlier = await tab.locator('#call .turn[data-final="true"]').count();
  if (earlier < 2) throw new Error(`opened mid-way, the call shows ${earlier} earlier turns`);
  step(`opened mid-way with ${earlier} earlier turns`);

  // 3. The transcript grows, and a partial turn becomes final in place (the same element).
  const partial = await tab.waitForSelector('#call .turn[data-final="false"]', { timeout: 30000 });
  const turnId = await partial.getAttribute('data-turn');
  await tab.waitForFunction((id) => {
    const nodes = document.querySelectorAll(`#call .turn[data-turn="${id}"]`);
    return nodes.length === 1 && nodes[0].dataset.final === 'true';
  }, turnId, { timeout: 30000 });
  const grown = await tab.locator('#call .turn[data-final="true"]').count();
  if (grown <= earlier) throw new Error('the transcript did not grow');
  step(`partial ${turnId} became final; ${grown} final turns`);
  await shot(tab, 'call-live');
  await axeCheck(tab, 'call view, desktop');

  // 4. DTMF: the ack, then the call.dtmf event in the timeline.
  await tab.fill('#dtmf-digits', '12#');
  await tab.click('#send-dtmf');
  await tab.waitForFunction(() => /send_dtmf 12#: ack/.test(document.querySelector('#call .outcome').textContent),
    null, { timeout: 15000 });
  await tab.waitForSelector('#call .timeline li[data-type="call.dtmf"]', { timeout: 15000 });
  step('DTMF acked and its event shown');

  // 4b. Listen: the call's audio arrives as binary frames on the call socket and decodes, both
  //     tracks, with a level above silence (the simulator's synthesised voices).
  await tab.click('#listen');
  await tab.waitForFunction(() => {
    const s = document.querySelector('#listen-stats').dataset;
    return Number(s.inbound) > 25 && Number(s.outbound) > 25 && Number(s.peak) > 0.01;
  }, null, { timeout: 30000 });
  const heard = await tab.evaluate(() => ({ ...document.querySelector('#listen-stats').dataset }));
  step(`listened: ${JSON.stringify(heard)}`);
  await tab.click('#listen');

  // 5. At a phone's width the same view is usable and accessible.
  await tab.setViewportSize({ width: 390, height: 844 });
  await shot(tab, 'call-phone');
  await axeCheck(tab, 'call view, phone');
  await tab.setViewportSize({ width: 1280, height: 860 });

  // 6. End the call: the ack, its end in the timeline, and it moves to the history.
  await tab.click('#end-call');
  await tab.waitForFunction(() => /end_call: ack/.test(document.querySelector('#call .outcome').textContent),
    null, { timeout: 15000 });
  await tab.waitForSelector('#call .timeline li[data-type="call.completed"]', { timeout: 15000 });
  await tab.waitForSelector(`#history button[data-call="${callId}"]`, { timeout: 15000 });
  if (await tab.locator(`#live-calls button[data-call="${callId}"]`).count()) {
    throw new Error('the ended call is still listed as live');
  }
  step('ended the call; it is in the history');

  // 7. A conversation: take it over from the AI, then hand it back. A handoff the script made at
  //    the same moment shows as a conflict, and the operator tries again.
  await tab.click('#nav a[data-section="conversations"]');
  await tab.waitForSelector('#conversation-list button', { timeout: 45000 });
  await tab.click('#conversation-list button');
  await tab.waitForSelector('#handoff', { timeout: 10000 });
  const handoffTo = async (want) => {
    for (let i = 0; i < 3; i += 1) {
      const label = await tab.textContent('#handoff');
      if ((want === 'human') === /Take over/.test(label)) {
        await tab.click('#handoff');
        await tab.waitForFunction(() => /taken over|Handed back|Conflict/.test(
          document.querySelector('#conversation .outcome').textContent), null, { timeout: 10000 });
      }
      const now = await tab.textContent('#conversation .controls .badge');
      if (now.trim() === want) return;
    }
    throw new Error(`the conversation did not reach mode ${want}`);
  };
  await handoffTo('human');
  await tab.waitForFunction(() => /by /.test(document.querySelector('#conversation .outcome').textContent)
    || /taken over/.test(document.querySelector('#conversation .outcome').textContent), null, { timeout: 10000 });
  // The list shows the new mode too.
  await tab.waitForFunction(() => document.querySelector('#conversation-list button[aria-current="true"] .badge')
    ?.textContent.trim() === 'human', null, { timeout: 5000 });
  step('took the conversation over');
  await shot(tab, 'conversation');
  await handoffTo('ai');
  step('handed it back');
  await axeCheck(tab, 'conversation view');

  // 8. Webhooks: the endpoint and its delivery log.
  await tab.click('#nav a[data-section="webhooks"]');
  await tab.waitForSelector('#endpoint-list button', { timeout: 10000 });
  await tab.click('#endpoint-list button');
  await tab.waitForSelector('#endpoint tbody tr', { timeout: 20000 });
  step('webhook endpoint and its log');
  await shot(tab, 'webhooks');
  await axeCheck(tab, 'webhooks view');

  // 9. Sign out: the page asks for a key again.
  await tab.click('#sign-out');
  await tab.waitForSelector('#sign-in:not([hidden])', { timeout: 5000 });
  step('signed out');
  await axeCheck(tab, 'sign-in page');

  // 10. Sign in with the demo's API key through the form, as a new user would: the live calls
  //     are back, and the key went only into the sign-in request's header.
  await tab.fill('#api-key', apiKey);
  await tab.fill('#operator', 'usr_newcomer');
  await tab.click('#sign-in-form button[type="submit"]');
  await tab.waitForSelector('#nav:not([hidden])', { timeout: 10000 });
  await tab.click('#nav a[data-section="calls"]');
  await tab.waitForSelector('#live-calls button', { timeout: 10000 });
  if (await tab.inputValue('#api-key') !== '') throw new Error('the key stayed in the form');
  step('signed in with the API key');
  await axeCheck(tab, 'sign-in then calls list');
  await context.close();
} catch (err) {
  failure = err;
} finally {
  await browser.close();
}
seen.keyInUrl = seen.requests.filter((u) => u.includes(apiKey));
console.log(JSON.stringify(seen));
if (failure) {
  console.error(`dashboard test failed after steps ${JSON.stringify(seen.steps)}: ${failure.stack || failure}`);
  process.exit(1);
}
