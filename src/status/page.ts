import { createHash } from 'node:crypto';

/**
 * The status page: one HTML document with inline CSS and JS, no dependencies, no external
 * requests. The Content-Security-Policy allows exactly these two inline blocks (by hash) and
 * fetches to this origin, so nothing an audit event or a handler returns can run as script
 * (the script also only ever sets textContent).
 */

const STYLE = `
:root { color-scheme: light dark; --ok: #2e7d32; --warn: #b26a00; --bad: #c62828; --muted: #777; }
* { box-sizing: border-box; }
body { font: 15px/1.4 system-ui, sans-serif; margin: 0; padding: 0 1rem 2rem; }
header { display: flex; align-items: center; gap: 1rem; flex-wrap: wrap; padding: .75rem 0; }
h1 { font-size: 1.2rem; margin: 0; } h2 { font-size: 1rem; margin: 0 0 .5rem; }
main { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fit, minmax(18rem, 1fr)); }
section { border: 1px solid #8884; border-radius: .5rem; padding: .75rem; min-width: 0; }
section.wide { grid-column: 1 / -1; }
#sim-forms { display: grid; gap: .5rem; grid-template-columns: repeat(auto-fit, minmax(16rem, 1fr)); }
select { width: 100%; }
.pill { border-radius: 1rem; padding: .1rem .6rem; font-size: .85rem; border: 1px solid currentColor; }
.ok { color: var(--ok); } .degraded, .warn { color: var(--warn); } .down, .bad { color: var(--bad); }
.disabled, .muted { color: var(--muted); }
#lock { font-size: 2rem; font-weight: 700; text-transform: uppercase; }
#lock[data-state="unlocked"], #lock[data-state="unlocking"] { color: var(--warn); }
#lock[data-state="locked"] { color: var(--ok); }
#banner { background: var(--bad); color: #fff; padding: .5rem .75rem; border-radius: .5rem; margin-bottom: 1rem; }
table { border-collapse: collapse; width: 100%; } td, th { text-align: left; padding: .15rem .4rem; vertical-align: top; }
dl { display: grid; grid-template-columns: auto 1fr; gap: .1rem .75rem; margin: 0; } dt { color: var(--muted); } dd { margin: 0; }
ol#audit { list-style: none; padding: 0; margin: 0; max-height: 26rem; overflow: auto; font: 13px/1.5 ui-monospace, monospace; }
ol#audit li { border-bottom: 1px solid #8882; padding: .1rem 0; overflow-wrap: anywhere; }
ol#audit li.new { animation: flash 1.5s; } @keyframes flash { from { background: #ffeb3b66; } to { background: transparent; } }
fieldset { border: 1px solid #8884; border-radius: .4rem; margin: 0 0 .5rem; min-width: 0; } legend { font-weight: 600; }
label { display: block; margin: .2rem 0; } select, input { max-width: 100%; font: inherit; }
button { font: inherit; padding: .2rem .8rem; margin-top: .3rem; }
#sim-result { font: 13px/1.4 ui-monospace, monospace; white-space: pre-wrap; min-height: 1.4em; }
`;

const SCRIPT = `
'use strict';
const $ = (id) => document.getElementById(id);
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = String(text); if (cls) e.className = cls; return e; };
let actionsKey = '';
let lastSeq = 0;

function setConn(text, cls) { const c = $('conn'); c.textContent = text; c.className = 'pill ' + cls; }
function banner(text) { const b = $('banner'); b.hidden = !text; b.textContent = text || ''; }

function renderHealth(h) {
  const box = $('health'); box.replaceChildren();
  if (!h) return;
  box.append(el('span', h.healthy ? 'healthy' : 'UNHEALTHY', 'pill ' + (h.healthy ? 'ok' : 'bad')));
  for (const [name, r] of Object.entries(h.checks)) if (!r.ok) box.append(el('div', name + ': ' + (r.detail || 'failed'), 'bad'));
}

function renderReaders(s) {
  const t = $('readers'); t.replaceChildren();
  const rows = Object.entries(s.readers || {});
  if (s.relay) rows.push(['relay (' + s.relay.driver + ')', s.relay.health]);
  for (const [id, h] of rows) {
    const tr = el('tr'); tr.dataset.reader = id;
    tr.append(el('td', id), el('td', h.state, h.state));
    tr.append(el('td', h.detail || ''));
    t.append(tr);
  }
  const subs = $('subsystems'); subs.replaceChildren();
  if (s.rateLimits) subs.append(el('dt', 'rate limits'), el('dd', summarise(s.rateLimits)));
  for (const [name, v] of Object.entries(s.subsystems || {})) {
    if (name === 'cloud') continue;
    subs.append(el('dt', name), el('dd', summarise(v)));
  }
  // A pending phone enrollment can be approved by an owner FIDO key at the reader, once armed. The
  // button stays one element (not rebuilt with each state push, which would swallow a click).
  const enroll = (s.subsystems || {}).enroll;
  const pending = enroll && enroll.state === 'pending' && (s.subsystems || {}).nfc;
  $('approve-fido').hidden = !pending;
  $('approve-fido').textContent = pending ? 'Approve ' + enroll.credentialId + ' with an owner FIDO key' : '';
}

async function armFido() {
  const out = $('enroll-result');
  const token = $('token').value.trim();
  sessionStorage.setItem('va-token', token);
  out.className = ''; out.textContent = 'arming the reader…';
  try {
    const res = await fetch('/api/enroll/approve-fido', { method: 'POST', headers: { 'content-type': 'application/json', ...authHeaders() }, body: '{}' });
    const body = await res.json().catch(() => ({ error: { code: 'internal', message: 'not JSON (' + res.status + ')' } }));
    if (!res.ok) { out.className = 'bad'; out.textContent = 'approve: ' + body.error.code + ': ' + body.error.message; return; }
    out.className = 'ok';
    out.textContent = 'reader armed until ' + body.result.expiresAt + ': tap an owner FIDO key to approve ' + body.result.credentialId;
  } catch {
    out.className = 'bad'; out.textContent = 'approve: unavailable: the agent is not reachable (restarting?)';
  }
}

function summarise(v) {
  if (v === null || typeof v !== 'object') return String(v);
  if (v.error) return 'error ' + v.error.code;
  const parts = [];
  for (const [k, x] of Object.entries(v)) {
    if (x !== null && typeof x === 'object') { if (typeof x.state === 'string') parts.push(k + ' ' + x.state); continue; }
    parts.push(k + ' ' + x);
  }
  return parts.join(', ').slice(0, 200);
}

function renderCloud(c) {
  const box = $('cloud'); box.replaceChildren();
  if (!c) { box.append(el('span', 'not configured (cloud.enabled false)', 'muted')); return; }
  if (c.error) { box.append(el('span', 'error ' + c.error.code, 'bad')); return; }
  const dl = el('dl');
  const connected = c.connected === true;
  dl.append(el('dt', 'broker'), el('dd', connected ? 'connected' : 'disconnected', connected ? 'ok' : 'warn'));
  if (c.protocol) dl.append(el('dt', 'MQTT'), el('dd', c.protocol));
  if (c.outbox) dl.append(el('dt', 'outbox'), el('dd', (c.outbox.pending ?? '?') + ' pending' + (c.outbox.dropped ? ', ' + c.outbox.dropped + ' dropped' : '')));
  box.append(dl);
}

function renderKeyring(k) {
  const dl = $('keyring'); dl.replaceChildren();
  const add = (a, b) => dl.append(el('dt', a), el('dd', b));
  add('credentials', k.credentials);
  if (k.counted !== undefined) add('counted below', 'the first ' + k.counted + ' by id, ' + (k.credentials - k.counted) + ' more not counted');
  add('active', k.active); add('revoked', k.revoked);
  add('by role', Object.entries(k.byRole).filter(([, n]) => n > 0).map(([r, n]) => r + ' ' + n).join(', ') || 'none');
  add('by kind', Object.entries(k.byKind).filter(([, n]) => n > 0).map(([r, n]) => r + ' ' + n).join(', ') || 'none');
  if (k.expiringSoon) add('expiring ≤ 7 d', k.expiringSoon);
  if (k.outsideWindow) add('outside window', k.outsideWindow);
  if (k.insecureUid) add('UID-only (cloneable)', k.insecureUid);
  if (k.digest) add('digest', k.digest.slice(0, 16) + '…');
}

function renderSim(sim) {
  const card = $('sim-card');
  card.hidden = !sim.enabled;
  const key = JSON.stringify(sim.actions);
  if (key === actionsKey) return;
  actionsKey = key;
  const forms = $('sim-forms'); forms.replaceChildren();
  for (const a of sim.actions) {
    const f = el('form'); f.dataset.action = a.id;
    const fs = el('fieldset'); fs.append(el('legend', a.label));
    for (const p of a.params) {
      const label = el('label', p.label + ' ');
      let input;
      if (p.choices) {
        input = el('select');
        for (const c of p.choices) { const o = el('option', c.label); o.value = c.value; input.append(o); }
      } else { input = el('input'); input.type = 'text'; input.spellcheck = false; }
      input.name = p.name;
      if (p.default !== undefined) input.value = p.default;
      label.append(input); fs.append(label);
    }
    const b = el('button', a.button); b.type = 'submit'; b.dataset.action = a.id;
    fs.append(b); f.append(fs); forms.append(f);
    f.addEventListener('submit', (ev) => { ev.preventDefault(); runAction(a.id, f); });
  }
}

async function runAction(id, form) {
  const args = {};
  for (const input of form.querySelectorAll('select, input')) if (input.value !== '') args[input.name] = input.value;
  const token = $('token').value.trim();
  sessionStorage.setItem('va-token', token);
  const out = $('sim-result');
  out.textContent = id + ': …';
  try {
    const res = await fetch('/api/sim/' + encodeURIComponent(id), {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(token ? { authorization: 'Bearer ' + token } : {}) },
      body: JSON.stringify(args),
    });
    const body = await res.json().catch(() => ({ error: { code: 'internal', message: 'not JSON (' + res.status + ')' } }));
    if (!res.ok) { out.className = 'bad'; out.textContent = id + ': ' + body.error.code + ': ' + body.error.message; return; }
    const r = body.result || {};
    out.className = r.granted ? 'ok' : 'warn';
    if (r.approval) { out.className = r.ok ? 'ok' : 'warn'; out.textContent = id + ': ' + (r.ok ? 'approved ' + r.credentialId + ' by ' + r.approvedBy : 'not approved ' + (r.code || '') + ' (the reader stays ' + (r.state || 'armed') + ')'); return; }
    out.textContent = id + ': ' + (r.granted === true ? 'granted' + (r.lock ? ', lock ' + r.lock : '') : r.granted === false ? 'denied ' + (r.code || '') : JSON.stringify(r).slice(0, 300));
  } catch (err) {
    out.className = 'bad';
    out.textContent = id + ': unavailable: the agent is not reachable (restarting?)';
  }
}

function render(s) {
  $('vehicle').textContent = s.vehicleId;
  const lock = $('lock'); lock.textContent = s.lock; lock.dataset.state = s.lock;
  $('clock').textContent = s.clock ? 'clock ' + s.clock.now + ' (' + s.clock.trust + ')' : '';
  $('decisions').textContent = s.decisions ? s.decisions.granted + ' granted, ' + s.decisions.denied + ' denied since start' : '';
  renderHealth(s.health); renderReaders(s); renderCloud(s.cloud); renderKeyring(s.keyring); renderSim(s.sim);
}

function describeEvent(r) {
  const bits = ['#' + r.seq, r.ts.slice(11, 23), r.type];
  for (const k of ['result', 'code', 'reader', 'subject', 'role', 'state', 'cause', 'action', 'source']) if (r[k] !== undefined) bits.push(k + '=' + r[k]);
  return bits.join(' ');
}

function addAudit(r, fresh) {
  if (r.seq <= lastSeq) return;
  lastSeq = r.seq;
  const li = el('li', describeEvent(r), fresh ? 'new' : '');
  li.dataset.seq = r.seq; li.dataset.type = r.type; if (r.result) li.dataset.result = r.result;
  const list = $('audit'); list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

function authHeaders() {
  const token = $('token').value.trim();
  return token ? { authorization: 'Bearer ' + token } : {};
}

async function refresh() {
  try {
    // With the admin token, the page's reads use the admin's own request budget (docs/local-interfaces.md).
    const res = await fetch('/api/state', { cache: 'no-store', headers: authHeaders() });
    const body = await res.json();
    if (!res.ok) { banner('agent: ' + body.error.code + ': ' + body.error.message); return; }
    banner(''); render(body);
  } catch { banner('agent unreachable (restarting?): retrying'); }
}

function connect() {
  const es = new EventSource('/api/events');
  es.addEventListener('open', () => { setConn('live', 'ok'); banner(''); refresh(); });
  es.addEventListener('error', () => {
    setConn('reconnecting…', 'bad'); banner('agent unreachable (restarting?): retrying');
    // Refused (every live stream taken, or busy): EventSource gives up, so poll and try again later.
    if (es.readyState === EventSource.CLOSED) { refresh(); setTimeout(connect, 5000); }
  });
  es.addEventListener('audit', (e) => addAudit(JSON.parse(e.data), true));
  es.addEventListener('state', (e) => render(JSON.parse(e.data)));
  es.addEventListener('bye', () => { setConn('agent stopping', 'warn'); });
}

$('token').value = sessionStorage.getItem('va-token') || '';
$('approve-fido').addEventListener('click', armFido);
// The state the server put in the page, so the first paint shows it rather than empty cards.
const initial = $('initial-state');
if (initial) { try { render(JSON.parse(initial.textContent)); } catch { /* fetched next anyway */ } }
refresh();
connect();
`;

const BODY = `
<header>
  <h1>vehicle-agent <span id="vehicle" class="muted"></span></h1>
  <span id="conn" class="pill muted">connecting…</span>
  <a id="phone-key-link" href="/key/">Phone key</a>
  <label>Admin token <input id="token" type="password" autocomplete="off" spellcheck="false"></label>
</header>
<div id="banner" role="alert" hidden></div>
<main>
  <section><h2>Lock</h2><div id="lock" data-state="">…</div><div id="clock" class="muted"></div>
    <div id="decisions" class="muted"></div><div id="health"></div></section>
  <section><h2>Readers and relays</h2><table id="readers"></table><dl id="subsystems"></dl>
    <button id="approve-fido" type="button" hidden></button><div id="enroll-result" role="status"></div></section>
  <section><h2>Cloud link</h2><div id="cloud"></div></section>
  <section><h2>Keyring</h2><dl id="keyring"></dl></section>
  <section id="sim-card" class="wide" hidden><h2>Simulator</h2>
    <div id="sim-forms"></div><div id="sim-result" role="status"></div></section>
  <section class="wide"><h2>Audit events (live)</h2><ol id="audit"></ol></section>
</main>`;

function sha256(text: string): string {
  return `'sha256-${createHash('sha256').update(text, 'utf8').digest('base64')}'`;
}

/**
 * JSON for an inert `<script type="application/json">` data block: `<`, `>` and `&` escaped, so
 * no string in the state (a credential's name, a reader's detail) can close the block or open a
 * comment, and JSON.parse of the block's text gives the value back unchanged.
 */
export function jsonDataBlock(value: unknown): string {
  return JSON.stringify(value)
    .replace(/</g, '\\u003c')
    .replace(/>/g, '\\u003e')
    .replace(/&/g, '\\u0026')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}

/**
 * The page, with the state at the time of the request when there is one (a data block, which the
 * Content-Security-Policy lets through because it is never run, only parsed by the script).
 */
export function statusPageHtml(initialState?: unknown): string {
  const data =
    initialState === undefined
      ? ''
      : `<script type="application/json" id="initial-state">${jsonDataBlock(initialState)}</script>\n`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>vehicle-agent status</title><style>${STYLE}</style></head>
<body>${BODY}
${data}<script>${SCRIPT}</script>
</body></html>
`;
}

export const STATUS_PAGE_HTML = statusPageHtml();

export const STATUS_PAGE_CSP = [
  "default-src 'none'",
  `script-src ${sha256(SCRIPT)}`,
  `style-src ${sha256(STYLE)}`,
  "connect-src 'self'",
  "img-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');
