// lior console: reads the local JSON API and /metrics, renders with the DOM (no framework, no
// innerHTML of data: every name, label and error is set as text).
'use strict';

// Every path the console calls. tests/console.rs reads these literals and checks that each
// exists on a running lior, so the console cannot silently call a route that is gone.
const API = {
  status: '/v1/status',
  queues: '/v1/queues',
  decoded: '/v1/queues/{name}/messages/decoded',
  purge: '/v1/queues/{name}/purge',
  move: '/v1/queues/{name}/move',
  outgoing: '/v1/outgoing',
  pause: '/v1/outgoing/pause',
  resume: '/v1/outgoing/resume',
  metrics: '/metrics',
};

const REFRESH_MS = 2000;
const HISTORY = 60; // samples kept for the charts: two minutes at REFRESH_MS
const PEEK_DEFAULT = 50;
const PEEK_MAX = 10000; // the API's per-request cap
const DEAD_LETTER_KINDS = ['dead_letter', 'dead_xact'];

const st = {
  samples: [], // {t, stored, received, dead}
  queues: null,
  queuesAt: 0,
  prevQueues: null,
  prevQueuesAt: 0,
  outgoing: null,
  metrics: null,
  status: null,
  peekCount: PEEK_DEFAULT,
  messages: {}, // queue name -> {list, more, error}
  routeKey: '',
  timer: 0,
  busy: false,
};

// ---- small helpers ----

function apiPath(template, name) {
  return template.replace('{name}', encodeURIComponent(name));
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function svg(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function fmtInt(n) {
  return Number(n).toLocaleString('en-US');
}

function fmtBytes(n) {
  n = Number(n);
  if (n < 1024) return n + ' B';
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let u = -1;
  do { n /= 1024; u++; } while (n >= 1024 && u < units.length - 1);
  return n.toFixed(n < 10 ? 1 : 0) + ' ' + units[u];
}

function fmtRate(r) {
  if (r === null || r === undefined || !isFinite(r)) return '–';
  const a = Math.abs(r);
  const s = a >= 100 ? Math.round(r).toLocaleString('en-US') : r.toFixed(a >= 10 ? 1 : 2);
  return s + '/s';
}

function fmtTime(unixS) {
  if (!unixS) return '–';
  return new Date(unixS * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms < 1000) return 'in ' + ms + ' ms';
  if (ms < 120000) return 'in ' + (ms / 1000).toFixed(1) + ' s';
  return 'in ' + Math.round(ms / 60000) + ' min';
}

function setStatus(text, isError) {
  const s = document.getElementById('status');
  s.textContent = text;
  s.className = isError ? 'status error' : 'status';
}

// The API's bearer token (an API beyond loopback or on HTTPS needs it): open the console as
// https://HOST:PORT/#token=<DATA_DIR/api-token>; the fragment never leaves the browser, is kept
// in this tab's sessionStorage and removed from the address bar.
const TOKEN_KEY = 'lior-api-token';
(function takeToken() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
})();

async function call(path, opts) {
  const o = Object.assign({ cache: 'no-store' }, opts || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) o.headers = Object.assign({}, o.headers || {}, { Authorization: 'Bearer ' + token });
  const r = await fetch(path, o);
  if (r.status === 401) {
    throw new Error('this API needs its token: open ' + location.origin + '/#token=<the contents of DATA_DIR/api-token>');
  }
  if (!r.ok) {
    let why = r.statusText;
    try { why = (await r.json()).error || why; } catch (_) { /* not JSON */ }
    throw new Error(path + ': ' + r.status + ' ' + why);
  }
  return r;
}

async function getJson(path) {
  return (await call(path)).json();
}

async function post(path, body) {
  const opts = { method: 'POST' };
  if (body !== undefined) {
    opts.headers = { 'Content-Type': 'application/json' };
    opts.body = JSON.stringify(body);
  }
  return call(path, opts);
}

// Prometheus text: metric name with its labels -> value.
function parseMetrics(text) {
  const m = new Map();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    if (i > 0) m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return m;
}

function metric(name) {
  return st.metrics ? st.metrics.get(name) : undefined;
}

// ---- data ----

async function refresh() {
  // A slow answer is not piled on: the next tick waits for it.
  if (st.busy) return;
  st.busy = true;
  try {
    const [status, queues, outgoing, metricsText] = await Promise.all([
      getJson(API.status),
      getJson(API.queues),
      getJson(API.outgoing),
      call(API.metrics).then((r) => r.text()),
    ]);
    const now = Date.now();
    st.status = status;
    if (st.queues) {
      st.prevQueues = st.queues;
      st.prevQueuesAt = st.queuesAt;
    }
    st.queues = queues;
    st.queuesAt = now;
    st.outgoing = outgoing;
    st.metrics = parseMetrics(metricsText);
    st.samples.push({
      t: now,
      stored: metric('lior_messages_stored_total') || 0,
      received: metric('lior_messages_received_total') || 0,
      dead: metric('lior_dead_lettered_total') || 0,
    });
    if (st.samples.length > HISTORY + 1) st.samples.shift();
    if (document.getElementById('status').classList.contains('error')) setStatus('');
    document.getElementById('updated').textContent = 'Updated ' + new Date(now).toISOString().slice(11, 19) + ' UTC.';
  } catch (e) {
    setStatus('Cannot read the API: ' + e.message, true);
  } finally {
    st.busy = false;
  }
  render(false);
}

async function loadMessages(name) {
  try {
    const r = await call(apiPath(API.decoded, name) + '?count=' + st.peekCount);
    st.messages[name] = { list: await r.json(), more: r.headers.get('x-lior-more') === 'true' };
  } catch (e) {
    st.messages[name] = { list: [], error: e.message };
  }
}

// ---- routing ----

function route() {
  let h = location.hash.replace(/^#\/?/, '');
  try { h = decodeURIComponent(h); } catch (_) { /* a malformed escape: take it as it is */ }
  if (h.startsWith('queues/')) return { view: 'queue', name: h.slice('queues/'.length) };
  if (['dead-letter', 'outgoing', 'sessions'].includes(h)) return { view: h };
  return { view: 'queues' };
}

async function onRoute(moveFocus) {
  const r = route();
  if (r.view === 'queue') await loadMessages(r.name);
  if (r.view === 'dead-letter') {
    for (const q of deadLetterQueues()) await loadMessages(q.name);
  }
  render(true);
  if (moveFocus) {
    const h = document.querySelector('#view h2');
    if (h) { h.setAttribute('tabindex', '-1'); h.focus(); }
  }
}

function deadLetterQueues() {
  return (st.queues || []).filter((q) => DEAD_LETTER_KINDS.includes(q.kind));
}

// ---- rendering ----

function render(force) {
  const r = route();
  const key = r.view + '/' + (r.name || '');
  for (const a of document.querySelectorAll('nav a[data-view]')) {
    const current = a.dataset.view === (r.view === 'queue' ? 'queues' : r.view);
    if (current) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (st.status) {
    document.getElementById('qm').textContent = 'queue manager ' + st.status.qm_guid +
      ' · version ' + st.status.version + ' · ' + st.status.partitions + ' partitions · health: ' + st.status.health;
  }
  renderCharts();
  if (!st.queues) return;
  // A view with open details or a focused control is rebuilt only when it is (re)entered.
  const view = document.getElementById('view');
  const focusKey = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.key : null;
  const open = new Set([...view.querySelectorAll('details[open]')].map((d) => d.dataset.key));
  // Nor while a person is typing in one of its fields.
  const typing = document.activeElement && document.activeElement.tagName === 'INPUT' && view.contains(document.activeElement);
  if (!force && key === st.routeKey && (typing || ((r.view === 'queue' || r.view === 'dead-letter') && open.size > 0))) {
    return;
  }
  st.routeKey = key;
  let content;
  if (r.view === 'queue') content = queueView(r.name);
  else if (r.view === 'dead-letter') content = deadLetterView();
  else if (r.view === 'outgoing') content = outgoingView();
  else if (r.view === 'sessions') content = sessionsView();
  else content = queuesView();
  view.replaceChildren(...content.flat(3).filter((c) => c !== null && c !== undefined));
  for (const d of view.querySelectorAll('details')) if (open.has(d.dataset.key)) d.open = true;
  if (focusKey) {
    const f = view.querySelector('[data-key="' + CSS.escape(focusKey) + '"]');
    if (f) f.focus();
  }
}

function chart(title, cls, values) {
  const w = 100, h = 100;
  const max = Math.max(1, ...values.map((v) => v || 0));
  const last = values.length ? values[values.length - 1] : null;
  const s = svg('svg', { viewBox: '0 0 ' + w + ' ' + h, preserveAspectRatio: 'none', 'aria-hidden': 'true', focusable: 'false' });
  for (const y of [0, 50, 100]) s.append(svg('line', { x1: 0, x2: w, y1: y, y2: y, class: 'grid' }));
  // The samples kept so far span the width (at most HISTORY of them: two minutes).
  const step = values.length > 1 ? w / (values.length - 1) : 0;
  const pts = values.map((v, i) => (values.length > 1 ? i * step : w).toFixed(2) + ',' + (h - (v || 0) / max * (h - 4) - 2).toFixed(1));
  if (pts.length > 0) s.append(svg('polyline', { points: pts.join(' '), class: 'series' }));
  const label = title + ': ' + fmtRate(last) + ' now, peak ' + fmtRate(max === 1 && !values.some((v) => v > 0) ? 0 : max) + ' over the last ' + Math.round(values.length * REFRESH_MS / 1000) + ' s';
  return el('figure', { class: 'chart ' + cls, role: 'img', 'aria-label': label },
    el('figcaption', {}, el('span', { text: title }), el('span', { class: 'now', text: fmtRate(last) })),
    s);
}

function renderCharts() {
  const rates = { stored: [], received: [], dead: [] };
  for (let i = 1; i < st.samples.length; i++) {
    const a = st.samples[i - 1], b = st.samples[i];
    const dt = (b.t - a.t) / 1000;
    for (const k of Object.keys(rates)) rates[k].push(dt > 0 ? Math.max(0, b[k] - a[k]) / dt : 0);
  }
  document.getElementById('charts').replaceChildren(
    chart('Messages in (stored)', 'in', rates.stored),
    chart('Messages out (received)', 'out', rates.received),
    chart('Dead-lettered', 'dead', rates.dead),
  );
}

function table(caption, headers, rows, empty) {
  const thead = el('thead', {}, el('tr', {}, headers.map((h) =>
    el('th', { scope: 'col', class: h.cls || null }, h.label || h))));
  const tbody = el('tbody', {}, rows.length ? rows
    : el('tr', {}, el('td', { colspan: headers.length, text: empty })));
  // A region that scrolls sideways on a phone: focusable, so a keyboard can scroll it too.
  return el('div', { class: 'table-wrap', role: 'region', tabindex: '0', 'aria-label': caption }, el('table', {}, el('caption', { text: caption }), thead, tbody));
}

function queueRate(q) {
  if (!st.prevQueues) return null;
  const p = st.prevQueues.find((x) => x.name === q.name);
  const dt = (st.queuesAt - st.prevQueuesAt) / 1000;
  if (!p || dt <= 0) return null;
  return (q.messages - p.messages) / dt;
}

function moveButton(name, m, n) {
  return el('button', {
    type: 'button', class: 'secondary', 'data-key': 'move:' + name + ':' + m.lookup_id,
    'aria-label': 'Move message ' + n + ' of ' + name + ' to another queue',
    onclick: async () => {
      const to = prompt('Move message ' + n + ' of ' + name + ' to which queue?');
      if (!to) return;
      try {
        await post(apiPath(API.move, name), { lookup_id: m.lookup_id, to });
        setStatus('Moved message ' + n + ' of ' + name + ' to ' + to + '.');
        delete st.messages[name];
      } catch (e) {
        setStatus('Move to ' + to + ' failed: ' + e.message, true);
      }
      await refresh();
      await onRoute(false);
    },
  }, 'Move…');
}

function purgeButton(name, count) {
  return el('button', {
    type: 'button', class: 'danger', 'data-key': 'purge:' + name,
    'aria-label': 'Purge queue ' + name + ' (' + count + ' messages)',
    onclick: async () => {
      if (!confirm('Remove all ' + count + ' messages of ' + name + '? This cannot be undone.')) return;
      try {
        await post(apiPath(API.purge, name));
        setStatus('Purged ' + name + '.');
        delete st.messages[name];
      } catch (e) {
        setStatus('Purge of ' + name + ' failed: ' + e.message, true);
      }
      await refresh();
      await onRoute(false);
    },
  }, 'Purge');
}

function queuesView() {
  const totalIn = st.samples.length > 1 ? rateOf('stored') : null;
  const totalOut = st.samples.length > 1 ? rateOf('received') : null;
  const rows = st.queues.map((q) => el('tr', { 'data-queue': q.name },
    el('th', { scope: 'row', class: 'name' }, el('a', { href: '#/queues/' + encodeURIComponent(q.name), 'data-key': 'q:' + q.name }, q.name)),
    el('td', { class: 'hide-narrow', text: q.kind.replace('_', ' ') + (q.transactional ? ', transactional' : '') }),
    el('td', { class: 'num messages', text: fmtInt(q.messages) }),
    el('td', { class: 'num bytes', text: fmtBytes(q.bytes) }),
    el('td', { class: 'num hide-narrow', text: fmtRate(queueRate(q)) }),
    el('td', {}, q.messages > 0 ? purgeButton(q.name, q.messages) : '')));
  return [
    el('h2', { text: 'Queues' }),
    el('p', { class: 'note' },
      'All queues: in ' + fmtRate(totalIn) + ', out ' + fmtRate(totalOut) +
      ' (from two scrapes of /metrics). Per queue, “change” is how fast its message count moves between two refreshes.'),
    table('Queues of this queue manager', [
      'Queue', { label: 'Kind', cls: 'hide-narrow' }, { label: 'Messages', cls: 'num' }, { label: 'Bytes', cls: 'num' },
      { label: 'Change', cls: 'num hide-narrow' }, 'Actions',
    ], rows, 'No queues.'),
  ];
}

function rateOf(k) {
  const a = st.samples[st.samples.length - 2], b = st.samples[st.samples.length - 1];
  const dt = (b.t - a.t) / 1000;
  return dt > 0 ? Math.max(0, b[k] - a[k]) / dt : null;
}

function messageProps(m) {
  const props = [
    ['Label', m.label], ['Message id', m.message_id], ['Lookup id', m.lookup_id],
    ['Priority', m.priority], ['Delivery', m.class], ['Message class', m.message_class],
    ['Body', m.body_size === undefined ? '–' : fmtInt(m.body_size) + ' bytes'], ['Body type', m.body_type],
    ['Sent', fmtTime(m.sent_time)], ['Source queue manager', m.source_qm],
    ['Destination', m.destination], ['Admin queue', m.admin_queue], ['Response queue', m.response_queue],
    ['App specific', m.app_specific], ['Correlation id (base64)', m.correlation_id_base64],
    ['Sender SID', m.sender_sid], ['Transaction sequence', m.tx_sequence_id === undefined ? undefined : m.tx_sequence_id + ' #' + m.tx_sequence_number],
    ['Error', m.error],
  ].filter(([, v]) => v !== undefined && v !== null && v !== '');
  return el('dl', { class: 'props' }, props.map(([k, v]) => [el('dt', { text: k }), el('dd', { text: String(v) })]));
}

function messagesTable(name, withReason) {
  const got = st.messages[name];
  if (!got) return el('p', { text: 'Loading messages…' });
  if (got.error) return el('p', { class: 'error-text', text: 'Cannot peek: ' + got.error });
  const headers = ['#', 'Label', { label: 'Priority', cls: 'num' }, 'Delivery', { label: 'Size', cls: 'num' },
    { label: 'Sent', cls: 'hide-narrow' }];
  if (withReason) headers.push('Reason', 'Action');
  const cols = headers.length;
  const rows = [];
  got.list.forEach((m, i) => {
    const reason = m.dead_letter_reason;
    const cells = [
      el('td', { class: 'num', text: i + 1 }),
      el('td', { class: 'name', text: m.label === undefined ? '(unreadable)' : (m.label || '(no label)') }),
      el('td', { class: 'num', text: m.priority }),
      el('td', { text: m.class }),
      el('td', { class: 'num', text: m.body_size === undefined ? '–' : fmtBytes(m.body_size) }),
      el('td', { class: 'hide-narrow', text: fmtTime(m.sent_time) }),
    ];
    if (withReason) cells.push(el('td', { class: 'reason' }, reason ? [el('strong', { text: reason.class + ':' }), ' ' + reason.why] : '–'));
    if (withReason) cells.push(el('td', {}, moveButton(name, m, i + 1)));
    rows.push(el('tr', { 'data-lookup': m.lookup_id }, cells));
    rows.push(el('tr', { class: 'detail' }, el('td', { colspan: cols },
      el('details', { 'data-key': 'd:' + name + ':' + m.lookup_id },
        el('summary', { 'data-key': 's:' + name + ':' + m.lookup_id, text: 'Properties and decoded headers of message ' + (i + 1) }),
        messageProps(m),
        el('h4', { text: 'Headers (as lior decode shows them)' }),
        el('pre', { class: 'headers', tabindex: '0', text: JSON.stringify(m.headers, null, 2) + (m.headers_error ? '\n' + m.headers_error : '') })))));
  });
  const what = got.list.length === 1 ? '1 message' : got.list.length + ' messages';
  return [
    table('First ' + what + ' of ' + name + ', in delivery order', headers, rows, 'The queue is empty.'),
    got.more ? el('p', { class: 'note', text: 'Stopped at the API\u2019s size bound; more messages follow.' }) : null,
  ];
}

function peekToolbar(name, reloadNames) {
  const id = 'peek-count-' + name.replace(/[^A-Za-z0-9_-]/g, '_');
  const input = el('input', { id, type: 'number', min: 1, max: PEEK_MAX, value: st.peekCount, 'data-key': 'count:' + name });
  return el('div', { class: 'toolbar' },
    el('label', { for: id }, 'Messages to show'), input,
    el('button', {
      type: 'button', class: 'secondary', 'data-key': 'reload:' + name,
      onclick: async () => {
        const n = Math.max(1, Math.min(PEEK_MAX, parseInt(input.value, 10) || PEEK_DEFAULT));
        st.peekCount = n;
        for (const q of reloadNames) await loadMessages(q);
        render(true);
        setStatus('Showing up to ' + n + ' messages.');
      },
    }, 'Peek again'));
}

function queueView(name) {
  const q = st.queues.find((x) => x.name === name);
  if (!q) {
    return [el('h2', { text: 'Queue ' + name }), el('p', { class: 'error-text', text: 'There is no queue named ' + name + '.' }),
      el('p', {}, el('a', { href: '#/queues' }, 'All queues'))];
  }
  const dead = DEAD_LETTER_KINDS.includes(q.kind);
  return [
    el('p', {}, el('a', { href: '#/queues' }, '← All queues')),
    el('h2', { text: 'Queue ' + q.name }),
    el('dl', { class: 'cards' },
      el('div', { class: 'card' }, el('dt', { text: 'Messages' }), el('dd', { class: 'messages', text: fmtInt(q.messages) })),
      el('div', { class: 'card' }, el('dt', { text: 'Bytes' }), el('dd', { text: fmtBytes(q.bytes) })),
      el('div', { class: 'card' }, el('dt', { text: 'Kind' }), el('dd', { text: q.kind.replace('_', ' ') + (q.transactional ? ', transactional' : '') })),
      el('div', { class: 'card' }, el('dt', { text: 'Change' }), el('dd', { text: fmtRate(queueRate(q)) }))),
    peekToolbar(q.name, [q.name]),
    q.messages > 0 ? el('div', { class: 'toolbar' }, purgeButton(q.name, q.messages)) : null,
    messagesTable(q.name, dead),
  ];
}

function deadLetterView() {
  const out = [
    el('h2', { text: 'Dead letters' }),
    el('p', { class: 'note', text: 'Messages lior could not deliver. The reason is worked out from each message and the queues as they are now (lior keeps the packet as it came, not the NACK class it was given). Move puts one message into another queue (durable there before it leaves); purge removes them all.' }),
  ];
  const qs = deadLetterQueues();
  for (const q of qs) {
    out.push(el('section', { 'aria-label': q.name, 'data-queue': q.name },
      el('h3', {}, el('a', { href: '#/queues/' + encodeURIComponent(q.name) }, q.name), ' — ',
        el('span', { class: 'messages', text: fmtInt(q.messages) }), q.messages === 1 ? ' message' : ' messages'),
      q.messages > 0 ? el('div', { class: 'toolbar' }, purgeButton(q.name, q.messages)) : null,
      messagesTable(q.name, true)));
  }
  out.splice(2, 0, peekToolbar('dead-letter', qs.map((q) => q.name)));
  return out;
}

function outgoingButton(o) {
  const resume = o.paused;
  return el('button', {
    type: 'button', class: resume ? null : 'secondary', 'data-key': 'out:' + o.destination,
    'aria-label': (resume ? 'Resume sending to ' : 'Pause sending to ') + o.destination,
    onclick: async () => {
      try {
        await post(resume ? API.resume : API.pause, { destination: o.destination });
        setStatus((resume ? 'Resumed ' : 'Paused ') + o.destination + '.');
      } catch (e) {
        setStatus((resume ? 'Resume' : 'Pause') + ' of ' + o.destination + ' failed: ' + e.message, true);
      }
      await refresh();
    },
  }, resume ? 'Resume' : 'Pause');
}

function outgoingView() {
  const rows = st.outgoing.map((o) => el('tr', { 'data-destination': o.destination },
    el('th', { scope: 'row', class: 'name', text: o.destination }),
    el('td', { class: 'hide-narrow', text: o.transport }),
    el('td', {}, el('span', { class: 'state ' + String(o.state).split(' ')[0], text: o.state })),
    el('td', { text: fmtMs(o.next_try_in_ms) }),
    el('td', { class: o.last_error ? 'error-text' : null, text: o.last_error || '–' }),
    el('td', { class: 'num messages', text: fmtInt(o.messages) }),
    el('td', { class: 'num hide-narrow', text: fmtBytes(o.bytes) }),
    el('td', {}, outgoingButton(o))));
  return [
    el('h2', { text: 'Outgoing queues' }),
    el('p', { class: 'note', text: 'One per remote machine: messages wait here until that machine takes them. A paused queue keeps its messages, across restarts too.' }),
    table('Outgoing queues', ['Destination', { label: 'Transport', cls: 'hide-narrow' }, 'State', 'Next try', 'Last error',
      { label: 'Messages', cls: 'num' }, { label: 'Bytes', cls: 'num hide-narrow' }, 'Action'], rows,
    'No outgoing queues: nothing has been sent to another machine.'),
  ];
}

function sessionsView() {
  const n = (name) => { const v = metric(name); return v === undefined ? '–' : fmtInt(v); };
  const card = (label, name) => el('div', { class: 'card' }, el('dt', { text: label }), el('dd', { text: n(name) }));
  const connected = st.outgoing.filter((o) => o.state === 'connected').length;
  const shards = [];
  if (st.metrics) {
    for (const [k, v] of st.metrics) {
      const m = /^lior_shard_connections_accepted_total\{shard="(\d+)"\}$/.exec(k);
      if (m) shards.push(el('tr', {}, el('th', { scope: 'row', text: 'shard ' + m[1] }), el('td', { class: 'num', text: fmtInt(v) })));
    }
  }
  return [
    el('h2', { text: 'Sessions' }),
    el('p', { class: 'note', text: 'Counters since lior started (lior does not list its open sessions yet). Outgoing sessions: one per connected outgoing queue.' }),
    el('dl', { class: 'cards' },
      el('div', { class: 'card' }, el('dt', { text: 'Outgoing sessions connected' }), el('dd', { text: fmtInt(connected) })),
      card('Incoming sessions accepted', 'lior_sessions_accepted_total'),
      card('Handshakes completed', 'lior_sessions_established_total'),
      card('Refused at MaxInSessions', 'lior_sessions_refused_total'),
      card('Closed for a bad packet', 'lior_sessions_closed_protocol_total'),
      card('Dropped (reassembly budget)', 'lior_sessions_dropped_reassembly_total'),
      card('TCP connections accepted', 'lior_connections_accepted_total'),
      card('Refused per address', 'lior_connections_refused_per_ip_total')),
    el('h3', { text: 'Connections per shard' }),
    table('TCP connections accepted by each shard', ['Shard', { label: 'Accepted', cls: 'num' }], shards, 'No shard counters.'),
  ];
}

// ---- start ----

window.addEventListener('hashchange', () => { onRoute(true); });
document.addEventListener('DOMContentLoaded', async () => {
  await refresh();
  await onRoute(false);
  st.timer = setInterval(refresh, REFRESH_MS);
});
