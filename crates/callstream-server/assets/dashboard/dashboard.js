// callstream dashboard. Plain JavaScript, no framework, nothing loaded from elsewhere.
//
// Credentials: the API key typed at sign-in goes once, in a header, to POST /v1/session, which
// answers an HttpOnly session cookie; every later request carries only that cookie. Call
// streams open with short-lived stream tokens (POST /v1/stream-tokens), never the key; the
// conversation stream (an EventSource) carries the cookie. A sign-in link from `callstream demo`
// carries a one-time secret in the URL fragment, which is removed from the address bar at once.
'use strict';

const $ = (id) => document.getElementById(id);
const LIVE_POLL_MS = 2000;
const LIST_POLL_MS = 3000;
const HISTORY_PAGE = 20;

// ---- small helpers -------------------------------------------------------------------------

/** Builds an element; children are nodes or strings (always text, never HTML). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null) node.append(c);
  }
  return node;
}

class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the gateway's API with the session cookie; answers the parsed body or throws. */
async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: {} };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    throw new ApiFailure(0, 'network', 'the gateway cannot be reached');
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    if (res.status === 401 && path !== '/v1/session') signedOut('Your session has ended; sign in again.');
    throw new ApiFailure(res.status, data?.error_code ?? 'error', data?.message ?? `HTTP ${res.status}`);
  }
  return data;
}

let toastTimer = null;
function toast(text) {
  const t = $('toast');
  t.textContent = text;
  t.classList.add('show');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => t.classList.remove('show'), 4000);
}

function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

function fmtDateTime(iso) {
  if (!iso) return '';
  return new Date(iso).toLocaleString([], { dateStyle: 'short', timeStyle: 'medium' });
}

function fmtDuration(fromIso, toIso) {
  if (!fromIso) return '';
  const end = toIso ? new Date(toIso) : new Date();
  let s = Math.max(0, Math.round((end - new Date(fromIso)) / 1000));
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  const two = (n) => String(n).padStart(2, '0');
  return h ? `${h}:${two(m)}:${two(s)}` : `${m}:${two(s)}`;
}

function badge(text, cls = text) {
  return el('span', { class: `badge ${cls}` }, text.replace('_', ' '));
}

function screening(call) {
  return call.screening ? 'screened' : (call.status === 'in_progress' ? 'screening' : '—');
}

// ---- sign-in and sections ------------------------------------------------------------------

const app = {
  workspace: null,
  operator: sessionStorage.getItem('callstream.operator') || 'operator',
  timers: [],
  call: null,          // the open call view
  conversation: null,  // the open conversation view
};

function signedOut(message) {
  app.workspace = null;
  for (const t of app.timers) clearInterval(t);
  app.timers = [];
  closeCall();
  closeConversation();
  $('nav').hidden = true;
  $('sign-out').hidden = true;
  $('who').textContent = '';
  for (const s of ['calls', 'conversations', 'webhooks']) $(s).hidden = true;
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message || '';
  $('api-key').focus();
}

async function signIn(secret) {
  const res = await fetch('/v1/session', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { Authorization: `Bearer ${secret}` },
  });
  if (!res.ok) {
    let message = `HTTP ${res.status}`;
    try { message = (await res.json()).message; } catch { /* keep the status */ }
    throw new ApiFailure(res.status, 'unauthorized', message);
  }
}

async function start() {
  try {
    app.workspace = await api('GET', '/v1/workspace');
  } catch (err) {
    if (err.status !== 401) $('sign-in-error').textContent = err.message;
    return;
  }
  $('sign-in').hidden = true;
  $('nav').hidden = false;
  $('sign-out').hidden = false;
  $('who').textContent = `${app.workspace.name} · ${app.operator}`;
  app.timers.push(setInterval(refreshLive, LIVE_POLL_MS));
  app.timers.push(setInterval(tickDurations, 1000));
  app.timers.push(setInterval(() => { if (!$('conversations').hidden) refreshConversations(); }, LIST_POLL_MS));
  refreshLive();
  loadHistory(true);
  route();
}

function route() {
  if (!app.workspace) return;
  const [, section = 'calls', id] = location.hash.match(/^#\/([a-z]+)(?:\/([A-Za-z0-9_]+))?/) || [];
  const known = ['calls', 'conversations', 'webhooks'].includes(section) ? section : 'calls';
  for (const s of ['calls', 'conversations', 'webhooks']) $(s).hidden = s !== known;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.section === known) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (known === 'calls') {
    closeConversation();
    if (id && app.call?.id !== id) openCall(id);
  } else if (known === 'conversations') {
    closeCall();
    refreshConversations();
    if (id && app.conversation?.id !== id) openConversation(id);
  } else {
    closeCall();
    closeConversation();
    refreshEndpoints();
    if (id) openEndpoint(id);
  }
}

// ---- calls: lists --------------------------------------------------------------------------

const hist = { cursor: null, phone: '', cursorUsed: false };

function callButton(call) {
  const current = app.call?.id === call.id;
  return el('li', {},
    el('button', {
      type: 'button',
      'aria-current': current ? 'true' : 'false',
      'data-call': call.id,
      onclick: () => { location.hash = `#/calls/${call.id}`; },
    },
    el('span', {}, el('strong', {}, call.phone), ' ', badge(call.status)),
    el('span', { class: 'line2' },
      `${call.direction} · ${call.transport} · ${screening(call)} · `,
      el('span', { 'data-started': call.started_at, 'data-ended': call.ended_at || '' },
        fmtDuration(call.started_at, call.ended_at)))));
}

let liveIds = new Set();
async function refreshLive() {
  let data;
  try {
    data = await api('GET', '/v1/calls?status=in_progress&limit=100');
  } catch (err) {
    if (err.status !== 401) toast(`Live calls: ${err.message}`);
    return;
  }
  const ids = new Set(data.calls.map((c) => c.id));
  $('live-count').textContent = `(${data.calls.length})`;
  $('live-calls').replaceChildren(...(data.calls.length
    ? data.calls.map(callButton)
    : [el('li', { class: 'muted' }, 'No call in progress.')]));
  // A call that left the live list has ended: it is in the history now.
  const ended = [...liveIds].some((id) => !ids.has(id));
  liveIds = ids;
  if (ended && !hist.phone && !hist.cursorUsed) loadHistory(true);
}

async function loadHistory(fresh) {
  if (fresh) { hist.cursor = null; hist.cursorUsed = false; }
  const q = new URLSearchParams({ status: 'ended', limit: String(HISTORY_PAGE) });
  if (hist.phone) q.set('phone', hist.phone);
  if (!fresh && hist.cursor) { q.set('before', hist.cursor); hist.cursorUsed = true; }
  let data;
  try {
    data = await api('GET', `/v1/calls?${q}`);
  } catch (err) {
    if (err.status !== 401) toast(`History: ${err.message}`);
    return;
  }
  const items = data.calls.map(callButton);
  if (fresh) {
    $('history').replaceChildren(...(items.length ? items : [el('li', { class: 'muted' }, 'No ended call.')]));
  } else {
    $('history').append(...items);
  }
  hist.cursor = data.next_cursor || null;
  $('history-more').hidden = !hist.cursor;
}

function tickDurations() {
  for (const span of document.querySelectorAll('[data-started]')) {
    if (!span.dataset.ended) span.textContent = fmtDuration(span.dataset.started, null);
  }
}

// ---- calls: one call -----------------------------------------------------------------------

const TIMELINE_TEXT = {
  'call.started': () => 'Call started',
  'call.screening_ended': (p) => `Screening ended${p.msg ? `: ${p.msg}` : ''}`,
  'call.barge_in': (p) => `Caller barged in${p.interrupted_turn_id ? ` over ${p.interrupted_turn_id}` : ''}`,
  'call.idle_silence': (p) => `Silence for ${(p.duration_ms / 1000).toFixed(1)} s`,
  'call.quality_degraded': (p) => `Quality dip: ${p.metric} ${p.value}${p.threshold !== undefined ? ` (threshold ${p.threshold})` : ''}`,
  'call.dtmf': (p) => `DTMF ${p.digits}`,
  'call.transferred': (p) => `Joined by ${p.to}${p.user_id ? ` (${p.user_id})` : ''}`,
  'call.completed': (p) => `Call completed${p.reason ? `: ${p.reason}` : ''}`,
  'call.failed': (p) => `Call failed: ${p.reason}`,
};

function closeCall() {
  const view = app.call;
  if (!view) return;
  view.closed = true;
  clearInterval(view.streamsTimer);
  if (view.audio?.ctx) view.audio.ctx.close();
  clearTimeout(view.retry);
  if (view.ws) view.ws.close(1000);
  app.call = null;
}

async function openCall(id) {
  closeCall();
  const view = {
    id, closed: false, ws: null, lastSeq: 0, seen: new Set(), turns: new Map(), latency: [], quality: [],
    failures: 0,
  };
  app.call = view;
  for (const b of document.querySelectorAll('[data-call]')) {
    b.setAttribute('aria-current', b.dataset.call === id ? 'true' : 'false');
  }
  const root = $('call');
  root.replaceChildren(el('p', { class: 'muted' }, 'Loading the call…'));
  let call;
  let transcript;
  try {
    [call, transcript] = await Promise.all([
      api('GET', `/v1/calls/${id}`),
      api('GET', `/v1/calls/${id}/transcript`),
    ]);
  } catch (err) {
    if (app.call === view) root.replaceChildren(el('p', { class: 'error' }, `This call cannot be shown: ${err.message}`));
    return;
  }
  if (app.call !== view) return;
  view.call = call;
  buildCallView(view);
  for (const t of transcript.turns) upsertTurn(view, { ...t, is_final: true });
  connectCall(view);
}

function buildCallView(view) {
  const call = view.call;
  view.facts = el('dl', { class: 'facts' });
  view.transcriptEl = el('div', { class: 'transcript', 'aria-label': 'Transcript', role: 'log', 'aria-live': 'polite' });
  view.timelineEl = el('ol', { class: 'timeline', 'aria-label': 'Event timeline' });
  view.outcome = el('div', { class: 'outcome', role: 'status', 'aria-live': 'polite' });
  view.streamState = el('p', { class: 'muted' }, 'Connecting to the live stream…');
  view.latencyChart = chart('Turn latency (ms)', [
    { key: 'stt_ms', name: 'speech-to-text', color: '#0b57d0' },
    { key: 'llm_ms', name: 'model', color: '#b3261e' },
    { key: 'tts_ms', name: 'text-to-speech', color: '#1b6b2b' },
  ]);
  view.qualityChart = chart('Call quality', [
    { key: 'mos', name: 'MOS (1–5)', color: '#0b57d0', max: 5 },
    { key: 'jitter_ms', name: 'jitter (ms)', color: '#7a4d00' },
    { key: 'packet_loss_pct', name: 'loss (%)', color: '#b3261e' },
  ]);
  const dtmf = el('input', { id: 'dtmf-digits', pattern: '[0-9*#A-Da-d]{1,32}', maxlength: '32', placeholder: '12#' });
  const joinAs = el('input', { id: 'join-user', maxlength: '128', value: app.operator });
  const controls = el('form', { class: 'controls', 'aria-label': 'Call control', onsubmit: (e) => e.preventDefault() },
    el('div', {}, el('label', { for: 'dtmf-digits' }, 'DTMF digits'), dtmf),
    el('button', { type: 'button', id: 'send-dtmf', onclick: () => command(view, { command: 'send_dtmf', digits: dtmf.value.trim() }) }, 'Send DTMF'),
    el('div', {}, el('label', { for: 'join-user' }, 'Join as'), joinAs),
    el('button', { type: 'button', id: 'join-call', class: 'secondary', onclick: () => command(view, { command: 'join_call', user_id: joinAs.value.trim() || app.operator }) }, 'Join'),
    el('button', { type: 'button', id: 'end-call', class: 'danger', onclick: () => command(view, { command: 'end_call' }) }, 'End call'));
  view.controls = controls;
  view.listenPanel = listenPanel(view);
  $('call').replaceChildren(
    el('h1', {}, `${call.phone} `, el('span', { class: 'count' }, call.id)),
    view.facts,
    controls,
    view.outcome,
    view.listenPanel,
    view.streamState,
    el('div', { class: 'grid' },
      el('div', {}, el('h2', {}, 'Transcript'), view.transcriptEl),
      el('div', {},
        el('h2', {}, 'Latency and quality'),
        view.latencyChart.figure,
        view.qualityChart.figure,
        el('h2', {}, 'Events'),
        view.timelineEl,
        el('h2', {}, 'Audio streams'),
        view.streamsEl = el('div', { id: 'audio-streams' }, el('p', { class: 'muted' }, 'Loading…')))));
  renderFacts(view);
  refreshAudioStreams(view);
  view.streamsTimer = setInterval(() => refreshAudioStreams(view), LIST_POLL_MS);
}

/** The call's audio streams (seed 004): where each goes, its state, and Stop for a running one. */
async function refreshAudioStreams(view) {
  if (view.closed) { clearInterval(view.streamsTimer); return; }
  const base = `/api/v1/Account/${app.workspace.auth_id}/Call/${view.id}/Stream/`;
  let data;
  try {
    data = await api('GET', `${base}?limit=20`);
  } catch (err) {
    view.streamsEl.replaceChildren(el('p', { class: 'error' }, `Audio streams: ${err.message}`));
    return;
  }
  if (view.closed) return;
  const streams = data.objects || [];
  if (!streams.length) {
    view.streamsEl.replaceChildren(el('p', { class: 'muted' }, 'None. Start one with the audio stream API (docs/audio-streams.md).'));
    return;
  }
  view.streamsEl.replaceChildren(el('table', {},
    el('caption', { class: 'sr' }, 'Audio streams of this call'),
    el('thead', {}, el('tr', {}, ['Service', 'Track', 'State', ''].map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, streams.map((st) => el('tr', { 'data-stream': st.stream_id },
      el('td', {}, st.service_url, el('div', { class: 'line2 muted' }, st.bidirectional ? 'bidirectional' : 'one way')),
      el('td', {}, st.audio_track),
      el('td', {}, badge(st.status, st.status === 'in-progress' ? 'in_progress' : (st.status === 'dropped' ? 'failed' : st.status)),
        st.end_reason ? el('div', { class: 'line2 muted' }, st.end_reason) : null),
      el('td', {}, ['connecting', 'in-progress'].includes(st.status)
        ? el('button', { type: 'button', class: 'secondary', onclick: async () => {
          try {
            await api('DELETE', `${base}${st.stream_id}/`);
          } catch (err) {
            toast(`Stop stream: ${err.message}`);
          }
          refreshAudioStreams(view);
        } }, 'Stop')
        : null))))));
}

function renderFacts(view) {
  const call = view.call;
  const fact = (name, value) => el('div', {}, el('dt', {}, name), el('dd', {}, value));
  view.facts.replaceChildren(
    fact('Status', call.end_reason ? el('span', {}, badge(call.status), ` ${call.end_reason}`) : badge(call.status)),
    fact('Direction', call.direction),
    fact('Transport', call.transport),
    fact('Screening', call.screening ? `ended: ${call.screening.msg}` : (call.status === 'in_progress' ? 'in progress' : '—')),
    fact('Started', fmtDateTime(call.started_at)),
    fact('Duration', el('span', { 'data-started': call.started_at, 'data-ended': call.ended_at || '' },
      fmtDuration(call.started_at, call.ended_at))));
  const live = call.status === 'in_progress';
  for (const b of view.controls.querySelectorAll('button')) b.disabled = !live;
}

async function command(view, body) {
  const label = body.command === 'send_dtmf' ? `send_dtmf ${body.digits}` : body.command;
  view.outcome.replaceChildren(el('span', {}, `${label}: sent…`));
  try {
    await api('POST', `/v1/calls/${view.id}/commands`, body);
    if (app.call === view) view.outcome.replaceChildren(el('span', { class: 'ack' }, `${label}: ack`));
  } catch (err) {
    if (app.call === view) view.outcome.replaceChildren(el('span', { class: 'error' }, `${label}: ${err.code}: ${err.message}`));
  }
}

async function connectCall(view) {
  if (view.closed) return;
  let token;
  try {
    token = (await api('POST', '/v1/stream-tokens', { call_id: view.id })).token;
  } catch (err) {
    view.streamState.textContent = `The live stream cannot open: ${err.message}`;
    return;
  }
  if (view.closed) return;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const q = new URLSearchParams({ token, since: String(view.lastSeq) });
  if (view.audio?.on) q.set('audio', 'both');
  const ws = new WebSocket(`${scheme}://${location.host}/v1/calls/${view.id}/stream?${q}`);
  ws.binaryType = 'arraybuffer';
  view.ws = ws;
  ws.onopen = () => {
    view.failures = 0;
    if (view.call.status === 'in_progress') view.streamState.textContent = 'Live.';
  };
  ws.onmessage = (m) => {
    if (m.data instanceof ArrayBuffer) {
      hear(view, m.data);
      return;
    }
    let frame;
    try { frame = JSON.parse(m.data); } catch { return; }
    if (frame.event_type) onCallEvent(view, frame);
    else if (frame.type === 'error' && frame.error_code === 'resume_gap') {
      addTimeline(view, null, 'Earlier events are no longer held live; the transcript above is from the store.');
    }
  };
  ws.onclose = (e) => {
    if (view.closed || view.ws !== ws) return;
    if (view.reopen) {
      view.reopen = false;
      view.ws = null;
      connectCall(view);
      return;
    }
    view.ws = null;
    if (e.code === 1000) {
      view.streamState.textContent = 'The call has ended.';
      reloadCall(view);
      return;
    }
    // A stream token's expiry (1008), a restart (1001) or a network drop: resume after the last
    // seq seen, with a fresh token.
    view.failures += 1;
    const wait = Math.min(10000, 500 * 2 ** Math.min(view.failures, 5));
    view.streamState.textContent = `Reconnecting (${e.code})…`;
    view.retry = setTimeout(() => connectCall(view), e.code === 1008 ? 0 : wait);
  };
}

async function reloadCall(view) {
  try {
    const call = await api('GET', `/v1/calls/${view.id}`);
    if (app.call !== view) return;
    view.call = call;
    renderFacts(view);
  } catch { /* the view stays as it was */ }
  refreshLive();
}

function onCallEvent(view, env) {
  if (view.seen.has(env.seq)) return;
  view.seen.add(env.seq);
  view.lastSeq = Math.max(view.lastSeq, env.seq);
  const p = env.payload || {};
  switch (env.event_type) {
    case 'call.transcription':
      upsertTurn(view, { ...p, ts: env.timestamp });
      return;
    case 'call.turn_latency':
      view.latency.push(p);
      view.latencyChart.draw(view.latency);
      return;
    case 'call.metrics':
      view.quality.push(p);
      view.qualityChart.draw(view.quality);
      return;
    case 'call.tts_completed':
      return;
    case 'call.screening_ended':
      view.call.screening = view.call.screening || { msg: p.msg, ended_at: env.timestamp };
      renderFacts(view);
      break;
    case 'call.completed':
    case 'call.failed':
      view.call.status = env.event_type === 'call.completed' ? 'completed' : 'failed';
      view.call.ended_at = env.timestamp;
      if (p.reason) view.call.end_reason = p.reason;
      renderFacts(view);
      break;
    default:
      break;
  }
  const text = TIMELINE_TEXT[env.event_type]?.(p) ?? env.event_type;
  addTimeline(view, env.timestamp, text, env.event_type);
}

function addTimeline(view, ts, text, type) {
  view.timelineEl.prepend(el('li', { 'data-type': type || 'note' }, el('time', { datetime: ts || '' }, fmtTime(ts)), el('span', {}, text)));
}

/** Adds a turn, or replaces its partial in place; a stored final is never replaced by a partial. */
function upsertTurn(view, turn) {
  const existing = view.turns.get(turn.turn_id);
  if (existing && existing.turn.is_final && !turn.is_final) return;
  const node = existing?.node ?? el('div', {});
  node.className = `turn ${turn.role}${turn.is_final ? '' : ' partial'}`;
  node.dataset.turn = turn.turn_id;
  node.dataset.final = turn.is_final ? 'true' : 'false';
  node.replaceChildren(el('span', { class: 'who' }, turn.role === 'agent' ? 'Agent' : 'Caller', turn.is_final ? '' : ' (speaking…)'), turn.text);
  if (!existing) {
    view.transcriptEl.append(node);
    const d = $('call');
    if (d.scrollHeight - d.scrollTop - d.clientHeight < 200) node.scrollIntoView({ block: 'nearest' });
  }
  view.turns.set(turn.turn_id, { turn, node });
}

/** A small SVG line chart of the last 60 points of each series, with a text caption. */
function chart(title, series) {
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('class', 'chart');
  svg.setAttribute('viewBox', '0 0 300 100');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${title}: no data yet`);
  const caption = el('figcaption', {}, `${title}: no data yet.`);
  // Colours through the CSSOM: the page's policy refuses style attributes.
  const legend = el('div', { class: 'legend' }, series.map((s) => {
    const key = el('span', {}, s.name);
    key.style.setProperty('--c', s.color);
    return key;
  }));
  const figure = el('figure', {}, legend, svg, caption);
  return {
    figure,
    draw(points) {
      const last = points.slice(-60);
      svg.replaceChildren();
      const parts = [];
      for (const s of series) {
        const values = last.map((p) => p[s.key]).filter((v) => typeof v === 'number');
        if (!values.length) continue;
        const max = s.max ?? Math.max(1, ...values) * 1.1;
        const step = last.length > 1 ? 300 / (last.length - 1) : 0;
        const coords = [];
        last.forEach((p, i) => {
          if (typeof p[s.key] === 'number') coords.push(`${(i * step).toFixed(1)},${(100 - (p[s.key] / max) * 96 - 2).toFixed(1)}`);
        });
        const line = document.createElementNS(NS, coords.length > 1 ? 'polyline' : 'circle');
        if (coords.length > 1) {
          line.setAttribute('points', coords.join(' '));
          line.setAttribute('fill', 'none');
          line.setAttribute('stroke', s.color);
          line.setAttribute('stroke-width', '2');
          line.setAttribute('vector-effect', 'non-scaling-stroke');
        } else {
          const [x, y] = coords[0].split(',');
          line.setAttribute('cx', x); line.setAttribute('cy', y); line.setAttribute('r', '3');
          line.setAttribute('fill', s.color);
        }
        svg.append(line);
        parts.push(`${s.name} ${values[values.length - 1]}`);
      }
      const text = `${title}, latest of ${points.length}: ${parts.join(', ') || 'no values'}.`;
      svg.setAttribute('aria-label', text);
      caption.textContent = text;
    },
  };
}


// ---- listening to a call -------------------------------------------------------------------

// G.711 decoders (ITU-T G.711), to 16-bit linear.
function ulawToLinear(u) {
  const x = ~u & 0xff;
  const magnitude = ((((x & 0x0f) << 3) + 0x84) << ((x >> 4) & 7)) - 0x84;
  return x & 0x80 ? -magnitude : magnitude;
}
function alawToLinear(a) {
  const x = a ^ 0x55;
  const exponent = (x >> 4) & 7;
  const mantissa = x & 0x0f;
  const magnitude = exponent === 0 ? (mantissa << 4) + 8 : ((mantissa << 4) + 0x108) << (exponent - 1);
  return x & 0x80 ? magnitude : -magnitude;
}
const ULAW = Float32Array.from({ length: 256 }, (_, i) => ulawToLinear(i) / 32768);
const ALAW = Float32Array.from({ length: 256 }, (_, i) => alawToLinear(i) / 32768);

/** One binary frame of the call socket (docs/native-api.md, "Call audio"): its track and samples. */
function decodeAudio(buf) {
  if (buf.byteLength < 17) return null;
  const v = new DataView(buf);
  const [version, track, codec, idLen] = [v.getUint8(0), v.getUint8(1), v.getUint8(2), v.getUint8(3)];
  const rate = v.getUint32(4, true);
  const start = 16 + idLen;
  if (version !== 1 || track > 1 || codec > 2 || start >= buf.byteLength) return null;
  let samples;
  if (codec === 2) {
    samples = new Float32Array((buf.byteLength - start) >> 1);
    for (let i = 0; i < samples.length; i += 1) samples[i] = v.getInt16(start + 2 * i, true) / 32768;
  } else {
    const table = codec === 0 ? ULAW : ALAW;
    samples = Float32Array.from(new Uint8Array(buf, start), (b) => table[b]);
  }
  return { track: track === 0 ? 'inbound' : 'outbound', rate, samples };
}

function listenPanel(view) {
  view.audio = { on: false, ctx: null, next: {}, decoded: { inbound: 0, outbound: 0 } };
  const meter = (track, label) => {
    const m = el('meter', { id: `level-${track}`, min: '0', max: '1', value: '0', 'aria-label': `${label} level` });
    view.audio[`meter_${track}`] = m;
    return m;
  };
  const play = { inbound: el('input', { type: 'checkbox', id: 'play-inbound', checked: true }),
    outbound: el('input', { type: 'checkbox', id: 'play-outbound', checked: true }) };
  view.audio.play = play;
  view.audio.stats = el('span', { id: 'listen-stats', class: 'muted', 'data-inbound': '0', 'data-outbound': '0' }, '');
  const button = el('button', { type: 'button', id: 'listen', class: 'secondary', 'aria-pressed': 'false',
    onclick: () => toggleListen(view, button) }, 'Listen');
  return el('div', { class: 'controls', role: 'group', 'aria-label': 'Listen to the call' },
    button,
    el('label', { for: 'play-inbound', class: 'inline' }, play.inbound, ' Caller '), meter('inbound', 'Caller'),
    el('label', { for: 'play-outbound', class: 'inline' }, play.outbound, ' Agent '), meter('outbound', 'Agent'),
    view.audio.stats);
}

function toggleListen(view, button) {
  const audio = view.audio;
  audio.on = !audio.on;
  button.setAttribute('aria-pressed', String(audio.on));
  button.textContent = audio.on ? 'Stop listening' : 'Listen';
  if (audio.on && !audio.ctx) {
    // Made on a click, so the browser lets it play.
    const Ctx = window.AudioContext || window.webkitAudioContext;
    audio.ctx = Ctx ? new Ctx() : null;
  }
  if (audio.ctx) (audio.on ? audio.ctx.resume() : audio.ctx.suspend()).catch(() => {});
  // The socket asks for audio (or stops) by reconnecting after the last seq seen.
  if (view.ws) {
    view.reopen = true;
    view.ws.close(1000);
  }
}

function hear(view, buf) {
  const audio = view.audio;
  const frame = decodeAudio(buf);
  if (!frame || !audio?.on) return;
  audio.decoded[frame.track] += 1;
  let sum = 0;
  for (const x of frame.samples) sum += x * x;
  const rms = Math.sqrt(sum / Math.max(1, frame.samples.length));
  audio[`meter_${frame.track}`].value = Math.min(1, rms * 4);
  audio.peak = Math.max(audio.peak || 0, rms);
  audio.stats.dataset.peak = audio.peak.toFixed(4);
  audio.stats.dataset[frame.track] = String(audio.decoded[frame.track]);
  audio.stats.textContent = `heard: caller ${audio.decoded.inbound} frames, agent ${audio.decoded.outbound}`;
  const ctx = audio.ctx;
  if (!ctx || !audio.play[frame.track].checked || !frame.samples.length) return;
  const buffer = ctx.createBuffer(1, frame.samples.length, frame.rate);
  buffer.copyToChannel(frame.samples, 0);
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(ctx.destination);
  // A small jitter buffer: each track plays 150 ms behind, frames back to back.
  const at = Math.max(audio.next[frame.track] || 0, ctx.currentTime + 0.15);
  source.start(at);
  audio.next[frame.track] = at + buffer.duration;
}

// ---- conversations -------------------------------------------------------------------------

async function refreshConversations() {
  let data;
  try {
    data = await api('GET', '/v1/conversations?limit=50');
  } catch (err) {
    if (err.status !== 401) toast(`Conversations: ${err.message}`);
    return;
  }
  $('conversation-list').replaceChildren(...(data.conversations.length ? data.conversations.map((c) => el('li', {},
    el('button', {
      type: 'button',
      'data-conversation': c.id,
      'aria-current': app.conversation?.id === c.id ? 'true' : 'false',
      onclick: () => { location.hash = `#/conversations/${c.id}`; },
    },
    el('span', {}, el('strong', {}, c.participants.join(', ')), ' ', badge(c.mode)),
    el('span', { class: 'line2' }, `${c.channel} · ${fmtDateTime(c.created_at)}`)))) : [el('li', { class: 'muted' }, 'No conversation yet.')]));
}

function closeConversation() {
  const view = app.conversation;
  if (!view) return;
  view.closed = true;
  view.source?.close();
  app.conversation = null;
}

async function openConversation(id) {
  closeConversation();
  const view = { id, closed: false, messages: new Map() };
  app.conversation = view;
  const root = $('conversation');
  root.replaceChildren(el('p', { class: 'muted' }, 'Loading the conversation…'));
  let conv;
  try {
    conv = await api('GET', `/v1/conversations/${id}`);
  } catch (err) {
    if (app.conversation === view) root.replaceChildren(el('p', { class: 'error' }, `This conversation cannot be shown: ${err.message}`));
    return;
  }
  if (app.conversation !== view) return;
  view.conv = conv;
  view.modeEl = el('span', {});
  view.handoff = el('button', { type: 'button', id: 'handoff', onclick: () => handoff(view) });
  view.outcome = el('div', { class: 'outcome', role: 'status', 'aria-live': 'polite' });
  view.list = el('div', { class: 'messages', role: 'log', 'aria-label': 'Messages', 'aria-live': 'polite' });
  root.replaceChildren(
    el('h1', {}, conv.participants.join(', '), ' ', el('span', { class: 'count' }, `${conv.channel} · ${conv.id}`)),
    el('div', { class: 'controls' }, el('span', {}, 'Mode: ', view.modeEl), view.handoff),
    view.outcome,
    view.list);
  renderMode(view);
  for (const m of conv.messages) upsertMessage(view, m);
  // The stream carries the session cookie; EventSource resumes with Last-Event-ID by itself.
  const source = new EventSource(`/v1/conversations/${id}/stream`);
  view.source = source;
  source.onmessage = (frame) => {
    let env;
    try { env = JSON.parse(frame.data); } catch { return; }
    const p = env.payload || {};
    if (env.event_type === 'conversation.mode_changed') {
      view.conv.mode = p.to_mode;
      renderMode(view);
      view.outcome.replaceChildren(el('span', {}, `Mode changed from ${p.from_mode} to ${p.to_mode} by ${p.actor_user_id}.`));
      refreshConversations();
    } else if (env.event_type.startsWith('message.')) {
      upsertMessage(view, { ...p, updated_at: env.timestamp });
    }
  };
  source.addEventListener('error', (frame) => {
    if (!frame.data) return; // a dropped connection: EventSource reconnects by itself
    let err = {};
    try { err = JSON.parse(frame.data); } catch { /* keep empty */ }
    if (err.error_code === 'resume_gap') openConversation(id);
  });
}

function renderMode(view) {
  view.modeEl.replaceChildren(badge(view.conv.mode));
  view.handoff.textContent = view.conv.mode === 'ai' ? 'Take over from the AI' : 'Hand back to the AI';
}

async function handoff(view) {
  const to = view.conv.mode === 'ai' ? 'human' : 'ai';
  view.handoff.disabled = true;
  try {
    const conv = await api('POST', `/v1/conversations/${view.id}/mode`, { mode: to, actor_user_id: app.operator });
    view.conv.mode = conv.mode;
    renderMode(view);
    view.outcome.replaceChildren(el('span', { class: 'ack' }, to === 'human' ? 'You have taken over.' : 'Handed back to the AI.'));
    refreshConversations();
  } catch (err) {
    // Someone else changed the mode first: show it, and the mode as it is now.
    const conflict = err.code === 'mode_conflict';
    view.outcome.replaceChildren(el('span', { class: 'error' },
      conflict ? `Conflict: ${err.message}. Someone changed the mode first; it is shown as it is now.` : `${err.code}: ${err.message}`));
    try {
      view.conv.mode = (await api('GET', `/v1/conversations/${view.id}`)).mode;
      renderMode(view);
    } catch { /* keep */ }
  } finally {
    view.handoff.disabled = false;
  }
}

function upsertMessage(view, m) {
  const existing = view.messages.get(m.message_id);
  const merged = { ...(existing?.m || {}), ...m };
  if (!merged.text && existing?.m.text) merged.text = existing.m.text;
  const node = existing?.node ?? el('div', {});
  node.className = `message ${merged.direction}`;
  node.dataset.message = merged.message_id;
  node.replaceChildren(el('div', {}, merged.text || el('em', {}, '(no text)')),
    el('div', { class: 'status' }, `${merged.direction} · ${merged.status} · ${fmtTime(merged.updated_at || merged.created_at)}`));
  if (!existing) view.list.append(node);
  view.messages.set(merged.message_id, { m: merged, node });
}

// ---- webhooks ------------------------------------------------------------------------------

async function refreshEndpoints() {
  let data;
  try {
    data = await api('GET', '/v1/webhook-endpoints');
  } catch (err) {
    if (err.status !== 401) toast(`Webhook endpoints: ${err.message}`);
    return;
  }
  const list = data.webhook_endpoints;
  $('endpoint-list').replaceChildren(...(list.length ? list.map((e) => el('li', {},
    el('button', { type: 'button', onclick: () => { location.hash = `#/webhooks/${e.id}`; } },
      el('span', {}, el('strong', {}, e.description || e.url), ' ',
        e.disabled_at ? badge('disabled') : (e.failing_since ? badge('failing') : badge('enabled', 'delivered'))),
      el('span', { class: 'line2' }, e.url)))) : [el('li', { class: 'muted' }, 'No endpoint. Create one with POST /v1/webhook-endpoints.')]));
}

async function openEndpoint(id, status = '') {
  const root = $('endpoint');
  let endpoint;
  try {
    endpoint = await api('GET', `/v1/webhook-endpoints/${id}`);
  } catch (err) {
    root.replaceChildren(el('p', { class: 'error' }, `This endpoint cannot be shown: ${err.message}`));
    return;
  }
  const outcome = el('div', { class: 'outcome', role: 'status', 'aria-live': 'polite' });
  const act = async (what, path, body) => {
    try {
      const r = await api('POST', path, body);
      outcome.replaceChildren(el('span', { class: 'ack' }, `${what}: done${r?.requeued !== undefined ? ` (${r.requeued} queued again)` : ''}`));
      refreshEndpoints();
      return true;
    } catch (err) {
      outcome.replaceChildren(el('span', { class: 'error' }, `${what}: ${err.code}: ${err.message}`));
      return false;
    }
  };
  const since = el('input', { id: 'replay-since', type: 'datetime-local', step: '1' });
  const filter = el('select', { id: 'message-state', onchange: () => openEndpoint(id, filter.value) },
    ['', 'pending', 'failing', 'delivered', 'exhausted'].map((s) => el('option', { value: s, selected: s === status }, s || 'every state')));
  const rows = el('tbody', {});
  const more = el('button', { type: 'button', class: 'secondary', hidden: true }, 'More');
  const fact = (name, value) => el('div', {}, el('dt', {}, name), el('dd', {}, value));
  root.replaceChildren(
    el('h1', {}, endpoint.description || 'Endpoint', ' ', el('span', { class: 'count' }, endpoint.id)),
    el('dl', { class: 'facts' },
      fact('URL', endpoint.url),
      fact('Events', endpoint.event_types ? endpoint.event_types.join(', ') : 'every type'),
      fact('State', endpoint.disabled_at ? `disabled: ${endpoint.disabled_reason}` : (endpoint.failing_since ? `failing since ${fmtDateTime(endpoint.failing_since)}` : 'enabled'))),
    el('div', { class: 'controls' },
      endpoint.disabled_at
        ? el('button', { type: 'button', onclick: async () => { if (await act('enable', `/v1/webhook-endpoints/${id}/enable`)) openEndpoint(id, status); } }, 'Enable')
        : el('button', { type: 'button', class: 'danger', onclick: async () => { if (await act('disable', `/v1/webhook-endpoints/${id}/disable`)) openEndpoint(id, status); } }, 'Disable'),
      el('div', {}, el('label', { for: 'replay-since' }, 'Replay everything since'), since),
      el('button', { type: 'button', class: 'secondary', onclick: () => {
        if (!since.value) { outcome.replaceChildren(el('span', { class: 'error' }, 'replay: pick a time first')); return; }
        act('replay', `/v1/webhook-endpoints/${id}/replay`, { since: new Date(since.value).toISOString() });
      } }, 'Replay'),
      el('div', {}, el('label', { for: 'message-state' }, 'Messages'), filter)),
    outcome,
    el('table', {},
      el('caption', { class: 'sr' }, 'Delivery log'),
      el('thead', {}, el('tr', {}, ['Event', 'State', 'Attempts', 'Last answer', 'Queued', ''].map((h) => el('th', { scope: 'col' }, h)))),
      rows),
    more);
  const page = async (cursor) => {
    const q = new URLSearchParams({ limit: '50' });
    if (status) q.set('status', status);
    if (cursor) q.set('cursor', cursor);
    let data;
    try {
      data = await api('GET', `/v1/webhook-endpoints/${id}/messages?${q}`);
    } catch (err) {
      outcome.replaceChildren(el('span', { class: 'error' }, `delivery log: ${err.message}`));
      return;
    }
    for (const m of data.messages) {
      const detail = el('tr', { hidden: true }, el('td', { colspan: '6' }));
      rows.append(el('tr', {},
        el('td', {}, m.event_type, el('div', { class: 'line2 muted' }, m.event_id)),
        el('td', {}, badge(m.state)),
        el('td', {}, String(m.attempts)),
        el('td', {}, m.last_status_code ? String(m.last_status_code) : (m.last_error || '—')),
        el('td', {}, fmtDateTime(m.created_at)),
        el('td', {},
          el('button', { type: 'button', class: 'secondary', onclick: () => act(`retry ${m.event_id}`, `/v1/webhook-endpoints/${id}/messages/${m.event_id}/retry`) }, 'Retry'),
          ' ',
          el('button', { type: 'button', class: 'secondary', 'aria-expanded': 'false', onclick: async (e) => {
            const open = detail.hidden;
            e.currentTarget.setAttribute('aria-expanded', String(open));
            detail.hidden = !open;
            if (open) await showAttempts(id, m.event_id, detail.firstChild);
          } }, 'Attempts'))), detail);
    }
    more.hidden = !data.next_cursor;
    more.onclick = () => page(data.next_cursor);
  };
  page(null);
}

async function showAttempts(endpointId, eventId, cell) {
  cell.replaceChildren(el('span', { class: 'muted' }, 'Loading…'));
  try {
    const { attempts } = await api('GET', `/v1/webhook-endpoints/${endpointId}/messages/${eventId}/attempts`);
    cell.replaceChildren(attempts.length ? el('table', {},
      el('thead', {}, el('tr', {}, ['Time', 'Status', 'Latency', 'Error', 'Body'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, attempts.map((a) => el('tr', {},
        el('td', {}, fmtDateTime(a.attempted_at)),
        el('td', {}, a.status_code ? String(a.status_code) : '—'),
        el('td', {}, a.latency_ms !== null && a.latency_ms !== undefined ? `${a.latency_ms} ms` : '—'),
        el('td', {}, a.error_kind || '—'),
        el('td', {}, el('pre', { tabindex: '0' }, a.response_body || '')))))) : el('span', { class: 'muted' }, 'No attempt yet.'));
  } catch (err) {
    cell.replaceChildren(el('span', { class: 'error' }, err.message));
  }
}

// ---- start ---------------------------------------------------------------------------------

$('sign-in-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const key = $('api-key').value.trim();
  const operator = $('operator').value.trim();
  if (operator) {
    app.operator = operator;
    sessionStorage.setItem('callstream.operator', operator);
  }
  $('sign-in-error').textContent = '';
  try {
    await signIn(key);
  } catch (err) {
    $('sign-in-error').textContent = `Sign-in refused: ${err.message}`;
    return;
  } finally {
    $('api-key').value = '';
  }
  start();
});

$('sign-out').addEventListener('click', async () => {
  try { await api('DELETE', '/v1/session'); } catch { /* signed out either way */ }
  signedOut('Signed out.');
});

$('history-search').addEventListener('submit', (e) => {
  e.preventDefault();
  hist.phone = $('history-phone').value.trim();
  loadHistory(true);
});
$('history-more').addEventListener('click', () => loadHistory(false));
window.addEventListener('hashchange', route);

(async () => {
  // A one-time sign-in link: take the secret out of the address bar before anything else.
  const link = new URLSearchParams(location.hash.slice(1)).get('sign-in');
  if (link) {
    window.history.replaceState(null, '', location.pathname + location.search);
    try {
      await signIn(link);
    } catch (err) {
      signedOut(`This sign-in link did not work: ${err.message}`);
      return;
    }
  }
  // GET /v1/session answers 200 either way, so a signed-out visit logs no failed request.
  let session = { signed_in: false };
  try { session = await api('GET', '/v1/session'); } catch { /* shown as signed out */ }
  if (!session.signed_in) {
    signedOut('');
    return;
  }
  start();
})();
