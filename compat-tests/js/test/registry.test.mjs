// The MongoDB app registry: an app created with `pushi apps create --json` (by
// compat-tests/run, before the server starts) is served next to the fixture's
// [[apps]] and works with pusher-js and the Node server SDK like any other app.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { MAIN, REGISTRY_APP, uniq, needRegistry } from '../lib/env.mjs';
import { RawClient } from '../lib/raw.mjs';
import { serverSdk, jsonOf } from '../lib/http.mjs';
import { connectClient, connectClientB, subscribed, once } from '../lib/client.mjs';
import { closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const skip = needRegistry;
const app = REGISTRY_APP;
const sdk = () => serverSdk(app);

// The SDK talks to node A; the receiving clients are on node B (node A outside cluster
// mode), which loads the same registry.

// Rejects with the Node SDK's RequestError; returns its HTTP status.
async function refusedStatus(promise) {
  try {
    await promise;
  } catch (e) {
    assert.equal(typeof e.status, 'number', `no HTTP status in ${e}`);
    return e.status;
  }
  assert.fail('request with a wrong secret was accepted');
}

test('registry app: pusher-js connects and receives a Node SDK event on a public channel', { skip }, async () => {
  const client = await connectClientB(app);
  assert.match(client.connection.socket_id, /^\d+\.\d+$/);
  const ch = uniq('registry-public');
  const { channel } = await subscribed(client, ch);
  const got = once(channel, 'registry-event');
  const res = await sdk().trigger(ch, 'registry-event', { from: 'registry', n: 1 });
  assert.equal(res.status, 200);
  const { data } = await got;
  assert.deepEqual(data, { from: 'registry', n: 1 });
});

test('registry app: private channel authorized with its secret (Node SDK authorizeChannel)', { skip }, async () => {
  const client = await connectClientB(app);
  const ch = uniq('private-registry');
  const { channel } = await subscribed(client, ch);
  const got = once(channel, 'secret-event');
  await sdk().trigger(ch, 'secret-event', 'only for authorized sockets');
  const { data } = await got;
  assert.equal(data, 'only for authorized sockets');
});

test('registry app: client events are on, as created with --client-events true', { skip }, async () => {
  const a = await connectClient(app);
  const b = await connectClientB(app);
  const ch = uniq('private-registry-chat');
  const { channel: ca } = await subscribed(a, ch);
  const { channel: cb } = await subscribed(b, ch);
  const got = once(cb, 'client-typing');
  assert.equal(ca.trigger('client-typing', { who: 'a' }), true);
  const { data } = await got;
  assert.deepEqual(data, { who: 'a' });
});

test('registry app: the Node SDK sees its channels and nothing of the fixture app', { skip }, async () => {
  const prefix = uniq('registry-list');
  const client = await connectClientB(app);
  await subscribed(client, `${prefix}-a`);
  const mine = await jsonOf(await sdk().get({ path: '/channels', params: { filter_by_prefix: prefix } }));
  assert.deepEqual(mine, { channels: { [`${prefix}-a`]: {} } });
  const other = await jsonOf(await serverSdk(MAIN).get({ path: '/channels', params: { filter_by_prefix: prefix } }));
  assert.deepEqual(other, { channels: {} });
});

test('registry app: a private-channel signature made with a wrong secret is refused', { skip }, async () => {
  const c = await RawClient.open(app);
  const ch = uniq('private-registry-forged');
  const forged = serverSdk({ ...app, secret: 'not-the-secret' }).authorizeChannel(c.socketId, ch).auth;
  c.subscribeFrame(ch, forged);
  const sub = await c.waitEvent('pusher:subscription_error', ch);
  assert.equal(JSON.parse(sub.data).status, 401);
});

test('registry app: the Node SDK with a wrong secret gets 401', { skip }, async () => {
  const bad = serverSdk({ ...app, secret: 'not-the-secret' });
  assert.equal(await refusedStatus(bad.trigger(uniq('registry'), 'ev', 'x')), 401);
  assert.equal(await refusedStatus(bad.get({ path: '/channels' })), 401);
  // The fixture app's secret is no good for the registry app either.
  assert.equal(await refusedStatus(serverSdk({ ...app, secret: MAIN.secret }).trigger(uniq('registry'), 'ev', 'x')), 401);
});
