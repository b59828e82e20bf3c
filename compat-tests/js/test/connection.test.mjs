// Connection handshake, heartbeat messages, fatal connect errors and
// malformed input, checked on the raw WebSocket.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { MAIN, DISABLED, LIMITED, FULL, needFull, WAIT_MS, sleep } from '../lib/env.mjs';
import { RawClient, wsUrl, expectRefused } from '../lib/raw.mjs';
import { connectClient } from '../lib/client.mjs';
import { closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const SOCKET_ID = /^\d+\.\d+$/;

// A pusher:error whose data is an object {code, message}.
function assertError(frame, code) {
  assert.equal(frame.event, 'pusher:error');
  assert.equal(typeof frame.data, 'object', `pusher:error data must be an object: ${JSON.stringify(frame)}`);
  assert.notEqual(frame.data, null);
  assert.equal(frame.data.code, code);
  assert.equal(typeof frame.data.message, 'string');
  assert.ok(frame.data.message.length > 0, 'error message must not be empty');
}

async function assertRefused(url, code) {
  const { first, close } = await expectRefused(url);
  assertError(first, code);
  assert.equal(close.code, code, `close code for ${url}`);
}

test('connection_established is the first frame with a JSON-string data', async () => {
  const c = await RawClient.connect(wsUrl(MAIN.key));
  const f = await c.waitFor(() => true, WAIT_MS, 'first frame');
  assert.deepEqual(Object.keys(f).sort(), ['data', 'event']);
  assert.equal(f.event, 'pusher:connection_established');
  assert.equal(typeof f.data, 'string', 'data must be a JSON-encoded string');
  const data = JSON.parse(f.data);
  assert.deepEqual(Object.keys(data).sort(), ['activity_timeout', 'socket_id']);
  assert.match(data.socket_id, SOCKET_ID);
  assert.ok(Number.isInteger(data.activity_timeout) && data.activity_timeout > 0);
  if (FULL) assert.equal(data.activity_timeout, 120);
});

test('socket ids are unique per connection', async () => {
  const ids = new Set();
  for (let i = 0; i < 10; i++) {
    const c = await RawClient.open(MAIN);
    assert.match(c.socketId, SOCKET_ID);
    ids.add(c.socketId);
  }
  assert.equal(ids.size, 10);
});

for (const protocol of [5, 6, 7]) {
  test(`protocol ${protocol} is accepted`, async () => {
    const c = await RawClient.open(MAIN, { protocol });
    assert.match(c.socketId, SOCKET_ID);
    await c.ping();
  });
}

test('missing protocol parameter is treated as protocol 7', async () => {
  const c = await RawClient.open(MAIN, { protocol: null });
  assert.match(c.socketId, SOCKET_ID);
  await c.ping();
});

for (const protocol of [4, 8]) {
  test(`protocol ${protocol} is refused with 4007`, async () => {
    await assertRefused(wsUrl(MAIN.key, { protocol }), 4007);
  });
}

test('unknown app key is refused with 4001', async () => {
  await assertRefused(wsUrl('no-such-key'), 4001);
});

for (const path of ['/app/', `/app/${MAIN.key}/extra`, `/socket/${MAIN.key}`]) {
  test(`path ${path} (not /app/{key}) is refused with 4005`, async () => {
    await assertRefused(wsUrl(MAIN.key, { path }), 4005);
  });
}

test('disabled app is refused with 4003', { skip: needFull('the disabled fixture app 3') }, async () => {
  await assertRefused(wsUrl(DISABLED.key), 4003);
});

test(
  'connection quota: third connection to app 4 is refused with 4004, a slot frees on close',
  { skip: needFull('the limited fixture app 4 (max_connections=2)') },
  async () => {
    // In cluster mode b is on node B: the quota counts the whole cluster's connections.
    const a = await RawClient.open(LIMITED);
    const b = await RawClient.openB(LIMITED);
    await assertRefused(wsUrl(LIMITED.key), 4004);
    // The first two stay usable.
    await a.ping();
    await b.ping();
    b.close();
    await b.waitClose();
    // The server notices the close asynchronously: retry for a bounded time.
    const deadline = Date.now() + WAIT_MS;
    let c = null;
    let lastErr;
    while (!c && Date.now() < deadline) {
      try {
        c = await RawClient.open(LIMITED);
      } catch (e) {
        lastErr = e;
        await sleep(100);
      }
    }
    assert.ok(c, `no free slot after closing a connection: ${lastErr}`);
    await c.ping();
  },
);

test('pusher:ping is answered with pusher:pong and data "{}"', async () => {
  const c = await RawClient.open(MAIN);
  c.send({ event: 'pusher:ping', data: {} });
  const pong = await c.waitEvent('pusher:pong');
  assert.deepEqual(pong, { event: 'pusher:pong', data: '{}' });
  // Clients that send a string payload (e.g. pysher sends "") get the same answer.
  c.send({ event: 'pusher:ping', data: '' });
  assert.deepEqual(await c.waitEvent('pusher:pong'), { event: 'pusher:pong', data: '{}' });
});

test('WebSocket protocol ping is answered with a pong', async () => {
  const c = await RawClient.open(MAIN);
  const got = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no pong control frame')), WAIT_MS);
    c.ws.once('pong', (data) => {
      clearTimeout(t);
      resolve(data.toString());
    });
  });
  c.ws.ping('hello');
  assert.equal(await got, 'hello');
});

const malformed = [
  ['non-JSON text', 'this is not json'],
  ['JSON without event', JSON.stringify({ data: {} })],
  ['JSON with a non-string event', JSON.stringify({ event: 42, data: {} })],
  ['JSON that is not an object', '[1,2,3]'],
  ['unknown pusher: event', JSON.stringify({ event: 'pusher:no_such_event', data: {} })],
  ['subscribe without channel', JSON.stringify({ event: 'pusher:subscribe', data: {} })],
];

for (const [what, text] of malformed) {
  test(`malformed input (${what}) gets pusher:error code null and the socket stays open`, async () => {
    const c = await RawClient.open(MAIN);
    c.send(text);
    const err = await c.waitEvent('pusher:error');
    assertError(err, null);
    await c.ping();
    assert.ok(c.isOpen);
  });
}

test('binary frame gets pusher:error code null and the socket stays open', async () => {
  const c = await RawClient.open(MAIN);
  c.ws.send(Buffer.from(JSON.stringify({ event: 'pusher:ping', data: {} })), { binary: true });
  const err = await c.waitEvent('pusher:error');
  assertError(err, null);
  await c.ping();
});

test('frame over the transport cap gets pusher:error then close 1009', async () => {
  const c = await RawClient.open(MAIN);
  const big = JSON.stringify({ event: 'client-big', channel: 'private-x', data: 'x'.repeat(70 * 1024) });
  c.send(big);
  const close = await c.waitClose();
  const err = c.all.find((f) => f.event === 'pusher:error');
  assert.ok(err, `expected a pusher:error before the close; got ${JSON.stringify(c.all)}`);
  assert.equal(close.code, 1009);
});

test('pusher-js connects and reports the socket id', async () => {
  const client = await connectClient(MAIN);
  assert.match(client.connection.socket_id, SOCKET_ID);
  assert.equal(client.connection.state, 'connected');
});
