// Server-side liveness and graceful shutdown. These run against a second
// server instance that compat-tests/run starts with a short activity timeout
// and pong timeout; the last test stops that instance with SIGTERM.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { MAIN, HEARTBEAT_PORT, HEARTBEAT_PID, HEARTBEAT_ACTIVITY, HEARTBEAT_PONG, needFull } from '../lib/env.mjs';
import { RawClient } from '../lib/raw.mjs';
import { closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const skip = HEARTBEAT_PORT ? false : needFull('the short-timeout heartbeat server started by compat-tests/run');
const opts = { port: HEARTBEAT_PORT };
const slackMs = 2500;

// True while the process exists and is not a zombie awaiting its parent.
function isRunning(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

test('connection_established advertises the configured activity_timeout', { skip }, async () => {
  const c = await RawClient.open(MAIN, opts);
  assert.equal(c.activityTimeout, HEARTBEAT_ACTIVITY);
});

test('idle client is pinged, answering keeps it open', { skip }, async () => {
  const c = await RawClient.open(MAIN, opts);
  const start = Date.now();
  const ping = await c.waitEvent('pusher:ping', undefined, HEARTBEAT_ACTIVITY * 1000 + slackMs);
  assert.deepEqual(ping, { event: 'pusher:ping', data: '{}' });
  assert.ok(Date.now() - start >= HEARTBEAT_ACTIVITY * 1000 - 300, 'ping came before the activity timeout');
  c.send({ event: 'pusher:pong', data: {} });
  // Still open past the pong timeout, and pinged again later.
  const again = await c.waitEvent('pusher:ping', undefined, HEARTBEAT_ACTIVITY * 1000 + HEARTBEAT_PONG * 1000 + slackMs);
  assert.deepEqual(again, { event: 'pusher:ping', data: '{}' });
  assert.ok(c.isOpen);
  await c.ping();
});

test('client activity postpones the server ping', { skip }, async () => {
  const c = await RawClient.open(MAIN, opts);
  // Talk every half activity timeout for 1.5 activity timeouts: no server ping.
  const until = Date.now() + HEARTBEAT_ACTIVITY * 1500;
  while (Date.now() < until) {
    await c.ping();
    await new Promise((r) => setTimeout(r, (HEARTBEAT_ACTIVITY * 1000) / 2));
  }
  assert.equal(
    c.take((f) => f.event === 'pusher:ping').length,
    0,
    'server pinged a client that was active',
  );
});

test('client that never answers the ping is closed with 4201', { skip }, async () => {
  const c = await RawClient.open(MAIN, opts);
  await c.waitEvent('pusher:ping', undefined, HEARTBEAT_ACTIVITY * 1000 + slackMs);
  const close = await c.waitClose(HEARTBEAT_PONG * 1000 + slackMs);
  assert.equal(close.code, 4201);
  const err = c.all.find((f) => f.event === 'pusher:error');
  assert.ok(err, `expected pusher:error before close; got ${JSON.stringify(c.all)}`);
  assert.equal(err.data.code, 4201);
});

test('SIGTERM: every socket gets pusher:error 4200 and close 4200, process exits', { skip }, async () => {
  const a = await RawClient.open(MAIN, opts);
  const b = await RawClient.open(MAIN, opts);
  process.kill(HEARTBEAT_PID, 'SIGTERM');
  for (const c of [a, b]) {
    const close = await c.waitClose(10000);
    const err = c.all.find((f) => f.event === 'pusher:error');
    assert.ok(err, `expected pusher:error before close; got ${JSON.stringify(c.all)}`);
    assert.equal(err.data.code, 4200);
    assert.equal(typeof err.data.message, 'string');
    assert.equal(close.code, 4200);
  }
  // The process must exit on its own (bounded wait).
  const deadline = Date.now() + 10000;
  let alive = true;
  while (alive && Date.now() < deadline) {
    alive = isRunning(HEARTBEAT_PID);
    if (alive) await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(alive, false, 'server process still running 10 s after SIGTERM');
});
