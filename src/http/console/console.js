// pushi debug console: log in with an app's id and secret (traded for a token), then
// follow the app's live feed (server-sent events), poll its state every 2 s, draw the last
// five minutes, and publish through the event creator. Plain DOM, no dependencies; every
// value from the server goes in through textContent, never as markup.
'use strict';

const $ = (id) => document.getElementById(id);
const MAX_ROWS = 1000;
const WINDOW = 300; // seconds of history in the charts
const session = { app: null, token: null, source: null, poll: null, paused: false };
const history = { connections: [], rate: [] };
let messagesThisSecond = 0;

function show(loggedIn) {
  $('login-view').hidden = loggedIn;
  $('app-view').hidden = !loggedIn;
  $('who').hidden = !loggedIn;
}

function setLive(text, cls) {
  const pill = $('live');
  pill.textContent = text;
  pill.className = 'pill ' + (cls || '');
}

async function login(event) {
  event.preventDefault();
  $('login-error').textContent = '';
  const res = await fetch('/console/login', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ app_id: $('login-app').value.trim(), secret: $('login-secret').value }),
  });
  const body = await res.json().catch(() => ({}));
  $('login-secret').value = '';
  if (!res.ok) {
    $('login-error').textContent = body.error || `login failed (${res.status})`;
    return;
  }
  sessionStorage.setItem('pushi-console', JSON.stringify({ app: body.app_id, token: body.token }));
  open(body.app_id, body.token);
}

function logout() {
  sessionStorage.removeItem('pushi-console');
  if (session.source) session.source.close();
  clearInterval(session.poll);
  Object.assign(session, { app: null, token: null, source: null, poll: null });
  show(false);
}

function open(app, token) {
  Object.assign(session, { app, token });
  $('app-id').textContent = app;
  show(true);
  connectFeed();
  refresh();
  session.poll = setInterval(refresh, 2000);
}

function api(path, init = {}) {
  init.headers = { ...(init.headers || {}), authorization: `Bearer ${session.token}` };
  return fetch(`/console/apps/${encodeURIComponent(session.app)}${path}`, init);
}

function connectFeed() {
  const url = `/console/apps/${encodeURIComponent(session.app)}/feed?token=${encodeURIComponent(session.token)}`;
  const source = new EventSource(url);
  session.source = source;
  source.addEventListener('open', () => setLive('live', 'on'));
  source.addEventListener('record', (e) => record(JSON.parse(e.data)));
  source.addEventListener('dropped', (e) => {
    $('feed-note').textContent = e.data + ' (reconnected)';
  });
  source.addEventListener('error', () => setLive('reconnecting…', 'off'));
}

async function refresh() {
  const res = await api('/state').catch(() => null);
  if (!res) return setLive('server unreachable', 'off');
  if (res.status === 401) return logout();
  if (!res.ok) return;
  const state = await res.json();
  $('connections').textContent = state.connections;
  $('channel-count').textContent = state.channels.length;
  const body = $('channels').tBodies[0];
  body.replaceChildren(
    ...state.channels.map((c) => row([c.name, c.subscription_count, c.user_count ?? '–'])),
  );
  push(history.connections, state.connections, 150);
  draw($('chart-connections'), history.connections, '#3b5bdb');
}

function push(series, value, max) {
  series.push(value);
  if (series.length > max) series.shift();
}

// A line over the last points, scaled to the largest one.
function draw(canvas, series, color) {
  const g = canvas.getContext('2d');
  const { width: w, height: h } = canvas;
  g.clearRect(0, 0, w, h);
  g.strokeStyle = '#e3e6ec';
  g.beginPath();
  g.moveTo(0, h - 0.5);
  g.lineTo(w, h - 0.5);
  g.stroke();
  if (series.length < 2) return;
  const top = Math.max(1, ...series);
  g.strokeStyle = color;
  g.lineWidth = 2;
  g.beginPath();
  series.forEach((v, i) => {
    const x = (i / (series.length - 1)) * w;
    const y = h - 4 - (v / top) * (h - 8);
    if (i === 0) g.moveTo(x, y);
    else g.lineTo(x, y);
  });
  g.stroke();
  g.fillStyle = '#6b7385';
  g.font = '11px system-ui';
  g.fillText(String(top), 4, 12);
}

function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    const td = document.createElement('td');
    td.textContent = c;
    tr.appendChild(td);
  }
  return tr;
}

function record(r) {
  if (r.type === 'api_message' || r.type === 'client_event') messagesThisSecond += 1;
  if (session.paused) return;
  const who = [r.socket_id, r.user_id && `user ${r.user_id}`].filter(Boolean).join(' · ');
  const details = r.data ?? r.detail ?? '';
  const tr = row([
    new Date(r.time_ms).toLocaleTimeString(),
    r.type.replace('_', ' '),
    r.channel ?? '',
    r.event ?? '',
    who,
    r.node ? `${details}${details ? ' ' : ''}[node ${r.node.slice(0, 6)}]` : details,
  ]);
  tr.className = `row t-${r.type}`;
  tr.cells[1].className = 'type';
  tr.cells[5].className = 'details';
  tr.dataset.type = r.type;
  tr.dataset.channel = r.channel ?? '';
  tr.dataset.event = r.event ?? '';
  filterRow(tr);
  const body = $('log').tBodies[0];
  body.insertBefore(tr, body.firstChild);
  while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
}

function filterRow(tr) {
  const channel = $('filter-channel').value.trim();
  const event = $('filter-event').value.trim();
  const type = $('filter-type').value;
  const ok =
    (!channel || tr.dataset.channel.includes(channel)) &&
    (!event || tr.dataset.event.includes(event)) &&
    (!type || tr.dataset.type === type || (type === 'webhook' && tr.dataset.type.startsWith('webhook')));
  tr.classList.toggle('hidden', !ok);
}

function refilter() {
  for (const tr of $('log').tBodies[0].rows) filterRow(tr);
}

async function create(event) {
  event.preventDefault();
  const out = $('creator-result');
  out.textContent = 'sending…';
  const res = await api('/events', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      name: $('creator-event').value.trim(),
      channel: $('creator-channel').value.trim(),
      data: $('creator-data').value,
    }),
  }).catch(() => null);
  if (!res) {
    out.textContent = 'server unreachable';
    return;
  }
  const body = await res.json().catch(() => ({}));
  out.textContent = res.ok ? 'sent' : `refused: ${body.error || res.status}`;
  out.className = res.ok ? '' : 'error';
}

function tick() {
  push(history.rate, messagesThisSecond, WINDOW);
  $('rate').textContent = messagesThisSecond;
  messagesThisSecond = 0;
  if (!$('app-view').hidden) draw($('chart-rate'), history.rate, '#2b8a3e');
}

document.addEventListener('DOMContentLoaded', () => {
  $('login').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('creator').addEventListener('submit', create);
  for (const id of ['filter-channel', 'filter-event', 'filter-type']) $(id).addEventListener('input', refilter);
  $('pause').addEventListener('click', () => {
    session.paused = !session.paused;
    $('pause').textContent = session.paused ? 'Resume' : 'Pause';
  });
  $('clear').addEventListener('click', () => $('log').tBodies[0].replaceChildren());
  setInterval(tick, 1000);
  const saved = JSON.parse(sessionStorage.getItem('pushi-console') || 'null');
  if (saved && saved.app && saved.token) open(saved.app, saved.token);
  else show(false);
});
