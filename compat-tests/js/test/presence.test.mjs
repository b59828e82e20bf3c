// Presence channels: member list, member_added/removed per user (not per
// connection), validation of channel_data, the users endpoint.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { MAIN, PORT_B, uniq } from '../lib/env.mjs';
import { RawClient } from '../lib/raw.mjs';
import { serverSdk, jsonOf, hmac } from '../lib/http.mjs';
import { connectClient, connectClientB, subscribed, once } from '../lib/client.mjs';
import { closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const sdk = serverSdk(MAIN);

// Signs exactly the channel_data string that is sent.
function presenceAuth(socketId, channel, channelData) {
  return `${MAIN.key}:${hmac(MAIN.secret, `${socketId}:${channel}:${channelData}`)}`;
}

// Where members see each other, or a member receives an HTTP publish (sent to node A), one
// of them is on node B (`B`; node A outside cluster mode).
const B = { port: PORT_B };

async function join(channel, member, opts = {}) {
  const c = await RawClient.open(MAIN, opts);
  const channelData = typeof member === 'string' ? member : JSON.stringify(member);
  const ok = await c.subscribe(channel, presenceAuth(c.socketId, channel, channelData), channelData);
  return { c, ok, presence: JSON.parse(ok.data).presence };
}

async function users(channel) {
  const res = await sdk.get({ path: `/channels/${channel}/users` });
  const body = await jsonOf(res);
  return body.users.map((u) => u.id).sort();
}

function memberEventPred(channel) {
  return (f) => f.channel === channel && f.event.startsWith('pusher_internal:member_');
}

test('first member: subscription_succeeded carries ids, hash and count', async () => {
  const ch = uniq('presence-room');
  const { ok, presence } = await join(ch, { user_id: 'alice', user_info: { name: 'Alice' } });
  assert.deepEqual(Object.keys(ok).sort(), ['channel', 'data', 'event']);
  assert.equal(typeof ok.data, 'string');
  assert.deepEqual(presence, { ids: ['alice'], hash: { alice: { name: 'Alice' } }, count: 1 });
});

test('member_added to others only, member_removed when the member leaves', async () => {
  const ch = uniq('presence-room');
  const a = await join(ch, { user_id: 'alice', user_info: { name: 'Alice' } });
  const b = await join(ch, { user_id: 'bob', user_info: { name: 'Bob', age: 30 } }, B);
  assert.equal(b.presence.count, 2);
  assert.deepEqual([...b.presence.ids].sort(), ['alice', 'bob']);
  assert.deepEqual(b.presence.hash, { alice: { name: 'Alice' }, bob: { name: 'Bob', age: 30 } });

  const added = await a.c.waitEvent('pusher_internal:member_added', ch);
  assert.deepEqual(added, {
    event: 'pusher_internal:member_added',
    channel: ch,
    data: JSON.stringify({ user_id: 'bob', user_info: { name: 'Bob', age: 30 } }),
  });
  assert.deepEqual(JSON.parse(added.data), { user_id: 'bob', user_info: { name: 'Bob', age: 30 } });
  // The joiner is not told about itself.
  await b.c.ping();
  await b.c.expectNone(memberEventPred(ch), undefined, 'member event sent to the joining socket');

  assert.deepEqual(await users(ch), ['alice', 'bob']);

  b.c.close();
  const removed = await a.c.waitEvent('pusher_internal:member_removed', ch);
  assert.deepEqual(removed, { event: 'pusher_internal:member_removed', channel: ch, data: '{"user_id":"bob"}' });
  assert.deepEqual(await users(ch), ['alice']);
});

test('unsubscribe from presence triggers member_removed', async () => {
  const ch = uniq('presence-room');
  const a = await join(ch, { user_id: 'alice', user_info: {} });
  const b = await join(ch, { user_id: 'bob', user_info: {} }, B);
  await a.c.waitEvent('pusher_internal:member_added', ch);
  b.c.unsubscribe(ch);
  const removed = await a.c.waitEvent('pusher_internal:member_removed', ch);
  assert.equal(removed.data, '{"user_id":"bob"}');
  // b stays connected.
  await b.c.ping();
});

test('two tabs of one user count as one member: one added, one removed', async () => {
  const ch = uniq('presence-room');
  // alice (who gets the HTTP controls) and bob's second tab on node B, his first on node A.
  const a = await join(ch, { user_id: 'alice', user_info: { tab: 0 } }, B);
  const tab1 = await join(ch, { user_id: 'bob', user_info: { tab: 1 } });
  await a.c.waitEvent('pusher_internal:member_added', ch);
  const tab2 = await join(ch, { user_id: 'bob', user_info: { tab: 1 } }, B);
  assert.equal(tab2.presence.count, 2);
  assert.deepEqual([...tab2.presence.ids].sort(), ['alice', 'bob']);

  // Positive control: an HTTP event reaches alice; no second member_added.
  await sdk.trigger(ch, 'control', 'x');
  await a.c.waitEvent('control', ch);
  await a.c.expectNone(memberEventPred(ch), undefined, 'second member_added for the same user');

  const info = await jsonOf(await sdk.get({ path: `/channels/${ch}`, params: { info: 'user_count' } }));
  assert.equal(info.occupied, true);
  assert.equal(info.user_count, 2);
  assert.deepEqual(await users(ch), ['alice', 'bob']);

  // Closing one tab removes nobody.
  tab1.c.close();
  await tab1.c.waitClose();
  await sdk.trigger(ch, 'control2', 'x');
  await a.c.waitEvent('control2', ch);
  await a.c.expectNone(memberEventPred(ch), undefined, 'member_removed while the user still has a tab');
  assert.deepEqual(await users(ch), ['alice', 'bob']);

  // Closing the last tab removes the user once.
  tab2.c.close();
  const removed = await a.c.waitEvent('pusher_internal:member_removed', ch);
  assert.equal(removed.data, '{"user_id":"bob"}');
  await sdk.trigger(ch, 'control3', 'x');
  await a.c.waitEvent('control3', ch);
  await a.c.expectNone(memberEventPred(ch), undefined, 'extra member event');
  assert.deepEqual(await users(ch), ['alice']);
});

test('numeric user_id is stringified everywhere', async () => {
  const ch = uniq('presence-num');
  const a = await join(ch, { user_id: 10, user_info: { name: 'Mr. Pusher' } });
  assert.deepEqual(a.presence, { ids: ['10'], hash: { 10: { name: 'Mr. Pusher' } }, count: 1 });
  const b = await join(ch, { user_id: 11 }, B);
  const added = await a.c.waitEvent('pusher_internal:member_added', ch);
  const data = JSON.parse(added.data);
  assert.equal(data.user_id, '11');
  assert.deepEqual(await users(ch), ['10', '11']);
  b.c.close();
  const removed = await a.c.waitEvent('pusher_internal:member_removed', ch);
  assert.equal(removed.data, '{"user_id":"11"}');
});

test('signature is checked over the channel_data bytes as sent (spaces kept)', async () => {
  const ch = uniq('presence-bytes');
  // Python's json.dumps style, with spaces: must be verified verbatim.
  const { presence } = await join(ch, '{"user_id": "spaced", "user_info": {"k": "v"}}');
  assert.deepEqual(presence, { ids: ['spaced'], hash: { spaced: { k: 'v' } }, count: 1 });
});

test('presence auth that signs different channel_data is rejected (401)', async () => {
  const ch = uniq('presence-tamper');
  const c = await RawClient.open(MAIN);
  const signed = JSON.stringify({ user_id: 'alice' });
  const sent = JSON.stringify({ user_id: 'mallory' });
  c.subscribeFrame(ch, presenceAuth(c.socketId, ch, signed), sent);
  await c.waitEvent('pusher:error');
  const sub = await c.waitEvent('pusher:subscription_error', ch);
  const data = JSON.parse(sub.data);
  assert.equal(data.type, 'AuthError');
  assert.equal(data.status, 401);
  await c.ping();
});

const badChannelData = [
  ['missing channel_data', undefined],
  ['channel_data that is not JSON', 'not json'],
  ['channel_data without user_id', JSON.stringify({ user_info: {} })],
];

for (const [what, channelData] of badChannelData) {
  test(`presence subscribe with ${what} is rejected with 400`, async () => {
    const ch = uniq('presence-bad');
    const c = await RawClient.open(MAIN);
    const auth = presenceAuth(c.socketId, ch, channelData ?? '');
    c.subscribeFrame(ch, channelData === undefined ? sdk.authorizeChannel(c.socketId, ch).auth : auth, channelData);
    const err = await c.waitEvent('pusher:error');
    assert.equal(err.data.code, null);
    const sub = await c.waitEvent('pusher:subscription_error', ch);
    const data = JSON.parse(sub.data);
    assert.equal(data.status, 400);
    await c.ping();
  });
}

test('user_info over 1 KB is rejected with 400', async () => {
  const ch = uniq('presence-big');
  const c = await RawClient.open(MAIN);
  const channelData = JSON.stringify({ user_id: 'big', user_info: { blob: 'x'.repeat(1100) } });
  c.subscribeFrame(ch, presenceAuth(c.socketId, ch, channelData), channelData);
  await c.waitEvent('pusher:error');
  const sub = await c.waitEvent('pusher:subscription_error', ch);
  assert.equal(JSON.parse(sub.data).status, 400);
  await c.ping();
});

test('subscribing twice to the same presence channel on one socket is an error', async () => {
  const ch = uniq('presence-twice');
  const a = await join(ch, { user_id: 'alice' }, B);
  const channelData = JSON.stringify({ user_id: 'alice' });
  a.c.subscribeFrame(ch, presenceAuth(a.c.socketId, ch, channelData), channelData);
  const err = await a.c.waitEvent('pusher:error');
  assert.equal(err.data.code, null);
  const sub = await a.c.waitEvent('pusher:subscription_error', ch);
  assert.equal(JSON.parse(sub.data).status, 400);
  // The original subscription still works.
  await sdk.trigger(ch, 'still-here', 'x');
  await a.c.waitEvent('still-here', ch);
});

test('presence channel is full at 100 members: the 101st is rejected with 400', async () => {
  const ch = uniq('presence-full');
  const members = [];
  // Every other member on node B: the limit counts the whole cluster's members.
  for (let i = 0; i < 100; i++) members.push(join(ch, { user_id: `u${i}` }, i % 2 ? B : {}));
  const joined = await Promise.all(members);
  assert.equal(joined.length, 100);
  const c = await RawClient.open(MAIN);
  const channelData = JSON.stringify({ user_id: 'u100' });
  c.subscribeFrame(ch, presenceAuth(c.socketId, ch, channelData), channelData);
  await c.waitEvent('pusher:error');
  const sub = await c.waitEvent('pusher:subscription_error', ch);
  assert.equal(JSON.parse(sub.data).status, 400);
  // An existing user may still open another tab (u5's first is on node B, this one on A).
  const extra = await join(ch, { user_id: 'u5' });
  assert.equal(extra.presence.count, 100);
  const info = await jsonOf(await sdk.get({ path: `/channels/${ch}`, params: { info: 'user_count' } }));
  assert.equal(info.user_count, 100);
});

test('pusher-js presence: members, me, member_added and member_removed', async () => {
  const name = uniq('presence-pjs');
  const alice = await connectClient(MAIN, { presence: { user_id: 'alice', user_info: { name: 'Alice' } } });
  const { channel: chA } = await subscribed(alice, name);
  assert.equal(chA.members.count, 1);
  assert.equal(chA.members.me.id, 'alice');
  assert.deepEqual(chA.members.me.info, { name: 'Alice' });

  const addedP = once(chA, 'pusher:member_added');
  const bob = await connectClientB(MAIN, { presence: { user_id: 7, user_info: { name: 'Bob' } } });
  const { channel: chB, data: members } = await subscribed(bob, name);
  assert.equal(members.count, 2);
  const seen = [];
  members.each((m) => seen.push(m.id));
  assert.deepEqual(seen.sort(), ['7', 'alice']);
  // members.me comes from the client's own channel_data (a number here).
  assert.equal(String(chB.members.me.id), '7');

  const { data: added } = await addedP;
  assert.deepEqual(added, { id: '7', info: { name: 'Bob' } });
  assert.equal(chA.members.count, 2);

  const removedP = once(chA, 'pusher:member_removed');
  bob.disconnect();
  const { data: removed } = await removedP;
  assert.deepEqual(removed, { id: '7', info: { name: 'Bob' } });
  assert.equal(chA.members.count, 1);
});
