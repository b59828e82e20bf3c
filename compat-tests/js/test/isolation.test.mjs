// Multi-app isolation: apps on one server share nothing, even channel names.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { MAIN, SECOND, PORT_B, uniq, needFull } from '../lib/env.mjs';
import { RawClient } from '../lib/raw.mjs';
import { serverSdk, jsonOf, hmac } from '../lib/http.mjs';
import { closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const skip = needFull('fixture app 2');
const sdk1 = serverSdk(MAIN);
const sdk2 = serverSdk(SECOND);

// The HTTP requests go to node A; the receiving sockets are on node B (node A outside
// cluster mode), where the apps must stay as separate as on one node.

async function member(app, ch, userId, opts = {}) {
  const c = await RawClient.open(app, opts);
  const channelData = JSON.stringify({ user_id: userId });
  await c.subscribe(ch, `${app.key}:${hmac(app.secret, `${c.socketId}:${ch}:${channelData}`)}`, channelData);
  return c;
}

test('app 1 events never reach app 2 sockets on the same channel name', { skip }, async () => {
  const ch = uniq('shared');
  const one = await RawClient.openB(MAIN);
  const two = await RawClient.openB(SECOND);
  await one.subscribe(ch);
  await two.subscribe(ch);
  await sdk1.trigger(ch, 'from-app-1', 'one');
  await one.waitEvent('from-app-1', ch);
  await sdk2.trigger(ch, 'from-app-2', 'two');
  // App 2's own event arrives (after app 1's was sent); app 1's never does.
  assert.deepEqual(await two.waitEvent('from-app-2', ch), { event: 'from-app-2', channel: ch, data: 'two' });
  await two.expectNone((f) => f.event === 'from-app-1', undefined, 'app 1 event leaked to app 2');
  await one.expectNone((f) => f.event === 'from-app-2', undefined, 'app 2 event leaked to app 1');
});

test('channel listings are per app', { skip }, async () => {
  const prefix = uniq('iso-list');
  const one = await RawClient.openB(MAIN);
  await one.subscribe(`${prefix}-only-on-1`);
  const l1 = await jsonOf(await sdk1.get({ path: '/channels', params: { filter_by_prefix: prefix } }));
  const l2 = await jsonOf(await sdk2.get({ path: '/channels', params: { filter_by_prefix: prefix } }));
  assert.deepEqual(l1, { channels: { [`${prefix}-only-on-1`]: {} } });
  assert.deepEqual(l2, { channels: {} });
  const c2 = await jsonOf(await sdk2.get({ path: `/channels/${prefix}-only-on-1` }));
  assert.deepEqual(c2, { occupied: false });
});

test('presence members are per app', { skip }, async () => {
  const ch = uniq('presence-iso');
  const a1 = await member(MAIN, ch, 'alice', { port: PORT_B });
  const b2 = await member(SECOND, ch, 'bob');
  const u1 = await jsonOf(await sdk1.get({ path: `/channels/${ch}/users` }));
  const u2 = await jsonOf(await sdk2.get({ path: `/channels/${ch}/users` }));
  assert.deepEqual(u1, { users: [{ id: 'alice' }] });
  assert.deepEqual(u2, { users: [{ id: 'bob' }] });
  // No cross-app member_added either.
  await sdk1.trigger(ch, 'ctl', 'x');
  await a1.waitEvent('ctl', ch);
  await a1.expectNone((f) => f.event === 'pusher_internal:member_added', undefined, 'member from app 2 seen on app 1');
  await b2.ping();
  assert.equal(b2.take((f) => f.event === 'pusher_internal:member_added').length, 0);
});

test('a private-channel signature from app 1 is refused on app 2', { skip }, async () => {
  const ch = uniq('private-iso');
  const two = await RawClient.open(SECOND);
  const forged = sdk1.authorizeChannel(two.socketId, ch).auth; // app-key:sig(app-secret)
  two.subscribeFrame(ch, forged);
  await two.waitEvent('pusher:error');
  const sub = await two.waitEvent('pusher:subscription_error', ch);
  assert.equal(JSON.parse(sub.data).status, 401);
  // Right key, wrong secret.
  two.subscribeFrame(ch, `${SECOND.key}:${hmac(MAIN.secret, `${two.socketId}:${ch}`)}`);
  const sub2 = await two.waitEvent('pusher:subscription_error', ch);
  assert.equal(JSON.parse(sub2.data).status, 401);
});

test('client events stay within their app', { skip }, async () => {
  const ch = uniq('private-iso-chat');
  const a = await RawClient.open(MAIN);
  const b = await RawClient.openB(MAIN);
  const x = await RawClient.openB(SECOND);
  await a.subscribe(ch, sdk1.authorizeChannel(a.socketId, ch).auth);
  await b.subscribe(ch, sdk1.authorizeChannel(b.socketId, ch).auth);
  await x.subscribe(ch, sdk2.authorizeChannel(x.socketId, ch).auth);
  a.send({ event: 'client-cross', channel: ch, data: {} });
  await b.waitEvent('client-cross', ch);
  await x.expectNone((f) => f.event === 'client-cross', undefined, 'client event crossed apps');
});

test('an app 2 socket_id does not exclude an app 1 socket', { skip }, async () => {
  const ch = uniq('iso-exclude');
  const one = await RawClient.openB(MAIN);
  const two = await RawClient.open(SECOND);
  await one.subscribe(ch);
  // Socket ids are unique server-wide, so excluding the app 2 socket changes nothing on app 1.
  await sdk1.trigger(ch, 'everyone', 'x', { socket_id: two.socketId });
  await one.waitEvent('everyone', ch);
  assert.notEqual(one.socketId, two.socketId);
});
