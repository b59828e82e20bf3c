// apps[].allowed_origins with pusher-js: a browser's Origin header is checked at the
// handshake; a refused origin gets pusher:error 4009 and close 4009, on which pusher-js
// gives up instead of reconnecting. pusher-js in Node sends no Origin, so the tests give
// its WebSocket one, as a browser page on that origin would.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import Pusher from 'pusher-js';
import { ORIGIN_APP, needFull, uniq, WAIT_MS, sleep } from '../lib/env.mjs';
import { makeClient, makeClientB, waitConnected, subscribed, once } from '../lib/client.mjs';
import { serverSdk } from '../lib/http.mjs';
import { closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const skip = needFull('the fixture app 7 with allowed_origins');

// Every WebSocket pusher-js opens from now on carries `Origin: origin`.
function withOrigin(origin) {
  const runtime = Pusher.Runtime;
  const Client = runtime.getWebSocketAPI();
  runtime.createWebSocket = (url) => new Client(url, [], { headers: { Origin: origin } });
}

test('an allowed origin connects, subscribes and receives events', { skip }, async () => {
  for (const origin of ['https://good.example', 'https://app.example.org']) {
    withOrigin(origin);
    // On node B (node A outside cluster mode): the SDK publishes on node A.
    const client = await waitConnected(makeClientB(ORIGIN_APP));
    const name = uniq('origins-');
    const { channel } = await subscribed(client, name);
    const got = once(channel, 'hello');
    await serverSdk(ORIGIN_APP).trigger(name, 'hello', { origin });
    assert.deepEqual((await got).data, { origin });
    client.disconnect();
  }
});

test('a refused origin gets 4009 and pusher-js does not reconnect', { skip }, async () => {
  withOrigin('https://evil.example');
  const states = [];
  const errors = [];
  const client = makeClient(ORIGIN_APP);
  client.connection.bind('state_change', ({ current }) => states.push(current));
  client.connection.bind('error', (e) => errors.push(e));
  // Bounded wait for the refusal to reach pusher-js.
  const deadline = Date.now() + WAIT_MS;
  // pusher-js wraps the server's pusher:error: {type: 'WebSocketError', error: {data}}.
  const code = (e) => e?.error?.data?.code;
  while (!errors.some((e) => code(e) === 4009) && Date.now() < deadline) await sleep(20);
  const refusal = errors.find((e) => code(e) === 4009)?.error;
  assert.ok(refusal, `no 4009 error reached pusher-js: ${JSON.stringify(errors)} states ${states}`);
  assert.match(refusal.data.message, /origin/i);
  assert.notEqual(client.connection.state, 'connected');
  // 4000-4099 means "do not reconnect as is": no new attempt follows.
  const attempts = states.filter((s) => s === 'connecting').length;
  await sleep(1500);
  assert.equal(states.filter((s) => s === 'connecting').length, attempts, `states: ${states}`);
  assert.notEqual(client.connection.state, 'connected');
  client.disconnect();
});
