// Every HTTP API endpoint, its response shapes and its limits.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { MAIN, DISABLED, HOST, PORT, PORT_B, FULL, uniq, needFull, needSubscriptionCount, WAIT_MS, sleep } from '../lib/env.mjs';
import { RawClient } from '../lib/raw.mjs';
import { serverSdk, signedRequest, sdkError, jsonOf, hmac } from '../lib/http.mjs';
import { connectClientB, subscribed, once } from '../lib/client.mjs';
import { closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const sdk = serverSdk(MAIN);

function assertErrorBody(res, status) {
  assert.equal(res.status, status, `expected HTTP ${status}, got ${res.status}: ${res.text}`);
  assert.ok(res.json && typeof res.json.error === 'string' && res.json.error.length > 0, `error body: ${res.text}`);
}

const postEvents = (body, extra = {}) => signedRequest({ app: MAIN, method: 'POST', path: '/events', body, ...extra });
const postBatch = (batch) => signedRequest({ app: MAIN, method: 'POST', path: '/batch_events', body: { batch } });
const get = (path, query = {}) => signedRequest({ app: MAIN, method: 'GET', path, query });

// The API requests go to node A. A subscriber that receives what they publish is on node B
// (`B`; node A outside cluster mode), and where several clients make up a count or a list,
// some are on each node.
const B = { port: PORT_B };
const subscriberB = (ch) => subscriber(ch, B);

async function subscriber(ch, opts = {}) {
  const c = await RawClient.open(MAIN, opts);
  await c.subscribe(ch);
  return c;
}

async function presenceMember(ch, userId, opts = {}) {
  const c = await RawClient.open(MAIN, opts);
  const channelData = JSON.stringify({ user_id: userId });
  await c.subscribe(ch, `${MAIN.key}:${hmac(MAIN.secret, `${c.socketId}:${ch}:${channelData}`)}`, channelData);
  return c;
}

// ---- POST /events ----

test('POST /events answers 200 with {} and a JSON content type', async () => {
  const ch = uniq('api');
  const res = await sdk.trigger(ch, 'ev', { a: 1 });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') || '', /application\/json/);
  assert.deepEqual(await jsonOf(res), {});
});

test('POST /events with a single "channel" field delivers', async () => {
  const ch = uniq('api');
  const c = await subscriberB(ch);
  const res = await postEvents({ name: 'single', channel: ch, data: 'd' });
  assert.equal(res.status, 200);
  assert.deepEqual(res.json, {});
  assert.deepEqual(await c.waitEvent('single', ch), { event: 'single', channel: ch, data: 'd' });
});

test('POST /events to several channels delivers to each once', async () => {
  const chans = [uniq('api'), uniq('api'), uniq('api')];
  const subs = await Promise.all(chans.map((ch) => subscriberB(ch)));
  await sdk.trigger(chans, 'multi', 'm');
  for (let i = 0; i < chans.length; i++) {
    assert.deepEqual(await subs[i].waitEvent('multi', chans[i]), { event: 'multi', channel: chans[i], data: 'm' });
  }
  // A socket on two of the channels gets one frame per channel.
  const both = await RawClient.openB(MAIN);
  await both.subscribe(chans[0]);
  await both.subscribe(chans[1]);
  await sdk.trigger(chans, 'multi2', 'm');
  const f1 = await both.waitEvent('multi2');
  const f2 = await both.waitEvent('multi2');
  assert.deepEqual([f1.channel, f2.channel].sort(), [chans[0], chans[1]].sort());
  await both.expectNone((f) => f.event === 'multi2', undefined, 'extra copy');
});

test('POST /events accepts 100 channels and refuses 101 with 400', async () => {
  const base = uniq('hundred');
  const chans = Array.from({ length: 100 }, (_, i) => `${base}-${i}`);
  const c = await subscriberB(chans[99]);
  const ok = await postEvents({ name: 'wide', channels: chans, data: 'x' });
  assert.equal(ok.status, 200, ok.text);
  await c.waitEvent('wide', chans[99]);
  const tooMany = await postEvents({ name: 'wide2', channels: [...chans, `${base}-100`], data: 'x' });
  assertErrorBody(tooMany, 400);
  await c.expectNone((f) => f.event === 'wide2', undefined, 'refused event delivered');
});

test('POST /events accepts data of exactly 10 KB and refuses 10 KB + 1 with 413', async () => {
  const ch = uniq('size');
  const c = await subscriberB(ch);
  const exact = 'x'.repeat(10 * 1024);
  const ok = await postEvents({ name: 'exact', channel: ch, data: exact });
  assert.equal(ok.status, 200, ok.text);
  const f = await c.waitEvent('exact', ch);
  assert.equal(f.data.length, 10 * 1024);
  const big = await postEvents({ name: 'big', channel: ch, data: exact + 'y' });
  assertErrorBody(big, 413);
  await c.expectNone((fr) => fr.event === 'big', undefined, 'oversize event delivered');
});

test('SDK trigger with oversize data gets 413', async () => {
  const err = await sdkError(sdk.trigger(uniq('size'), 'big', 'z'.repeat(20 * 1024)));
  assert.equal(err.status, 413);
});

const badEventBodies = [
  ['body that is not JSON', '{"name": "x", '],
  ['missing name', { channels: ['a'], data: 'x' }],
  ['missing data', { name: 'x', channels: ['a'] }],
  ['data that is not a string', { name: 'x', channels: ['a'], data: { obj: true } }],
  ['an invalid channel name', { name: 'x', channels: ['bad channel!'], data: 'x' }],
  ['a channel name over 164 characters', { name: 'x', channels: ['c'.repeat(165)], data: 'x' }],
  ['a malformed socket_id', { name: 'x', channels: ['a'], data: 'x', socket_id: 'abc' }],
];

for (const [what, body] of badEventBodies) {
  test(`POST /events with ${what} gets 400 {"error": ...}`, async () => {
    const res = await postEvents(body);
    assertErrorBody(res, 400);
  });
}

test('socket_id excludes exactly that connection', async () => {
  const ch = uniq('exclude');
  const a = await subscriberB(ch);
  const b = await subscriberB(ch);
  const res = await sdk.trigger(ch, 'not-for-a', 'x', { socket_id: a.socketId });
  assert.equal(res.status, 200);
  await b.waitEvent('not-for-a', ch);
  await a.ping();
  await a.expectNone((f) => f.event === 'not-for-a', undefined, 'excluded socket received the event');
});

test('socket_id exclusion works for a pusher-js client', async () => {
  const name = uniq('exclude-pjs');
  const me = await connectClientB(MAIN);
  const other = await connectClientB(MAIN);
  const { channel: mine } = await subscribed(me, name);
  const { channel: theirs } = await subscribed(other, name);
  const received = [];
  mine.bind('update', (d) => received.push(d));
  const got = once(theirs, 'update');
  await sdk.trigger(name, 'update', { v: 1 }, { socket_id: me.connection.socket_id });
  assert.deepEqual((await got).data, { v: 1 });
  // Control on the excluded client: a later event does arrive, the excluded one never did.
  const later = once(mine, 'later');
  await sdk.trigger(name, 'later', 'x');
  await later;
  assert.deepEqual(received, []);
});

test('POST /events info=subscription_count reports the count', { skip: needSubscriptionCount }, async () => {
  const ch = uniq('count');
  await subscriber(ch);
  await subscriberB(ch);
  const res = await sdk.trigger(ch, 'ev', 'x', { info: 'subscription_count' });
  assert.deepEqual(await jsonOf(res), { channels: { [ch]: { subscription_count: 2 } } });
});

test('POST /events info=user_count on a presence channel reports users', async () => {
  const ch = uniq('presence-count');
  await presenceMember(ch, 'u1');
  await presenceMember(ch, 'u2');
  await presenceMember(ch, 'u2', B); // same user, second connection (on node B)
  const res = await sdk.trigger(ch, 'ev', 'x', { info: 'user_count' });
  assert.deepEqual(await jsonOf(res), { channels: { [ch]: { user_count: 2 } } });
});

test('POST /events info=user_count on a non-presence channel gets 400', async () => {
  const res = await postEvents({ name: 'ev', channels: [uniq('public')], data: 'x', info: 'user_count' });
  assertErrorBody(res, 400);
});

// ---- POST /batch_events ----

test('POST /batch_events delivers every item and answers {}', async () => {
  const ch1 = uniq('batch');
  const ch2 = uniq('batch');
  const a = await subscriberB(ch1);
  const b = await subscriberB(ch2);
  const res = await sdk.triggerBatch([
    { channel: ch1, name: 'one', data: { n: 1 } },
    { channel: ch2, name: 'two', data: 'plain' },
    { channel: ch1, name: 'three', data: 'x', socket_id: a.socketId },
  ]);
  assert.equal(res.status, 200);
  assert.deepEqual(await jsonOf(res), {});
  assert.deepEqual(await a.waitEvent('one', ch1), { event: 'one', channel: ch1, data: '{"n":1}' });
  assert.deepEqual(await b.waitEvent('two', ch2), { event: 'two', channel: ch2, data: 'plain' });
  await a.ping();
  await a.expectNone((f) => f.event === 'three', undefined, 'batch socket_id exclusion ignored');
});

test('POST /batch_events accepts 10 items and refuses 11 with 400', async () => {
  const ch = uniq('batch10');
  const c = await subscriberB(ch);
  const items = (n, tag) => Array.from({ length: n }, (_, i) => ({ channel: ch, name: `${tag}-${i}`, data: String(i) }));
  const ok = await postBatch(items(10, 'ok'));
  assert.equal(ok.status, 200, ok.text);
  for (let i = 0; i < 10; i++) await c.waitEvent(`ok-${i}`, ch);
  const tooMany = await postBatch(items(11, 'no'));
  assertErrorBody(tooMany, 400);
  await c.expectNone((f) => f.event.startsWith('no-'), undefined, 'refused batch item delivered');
});

test('POST /batch_events with an oversize item gets 413 and delivers nothing', async () => {
  const ch = uniq('batch-big');
  const c = await subscriberB(ch);
  const res = await postBatch([
    { channel: ch, name: 'small', data: 'x' },
    { channel: ch, name: 'huge', data: 'y'.repeat(10 * 1024 + 1) },
  ]);
  assertErrorBody(res, 413);
  await c.expectNone((f) => f.event === 'small' || f.event === 'huge', undefined, 'item of a refused batch delivered');
});

test('POST /batch_events with info answers an index-aligned batch array', async () => {
  const pres = uniq('presence-binfo');
  const pub = uniq('binfo');
  await presenceMember(pres, 'p1', B);
  await subscriber(pub);
  const withCount = [
    { channel: pres, name: 'a', data: 'x', info: 'user_count' },
    { channel: pub, name: 'b', data: 'x' },
  ];
  const res = await postBatch(withCount);
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json, { batch: [{ user_count: 1 }, {}] });
});

test('POST /batch_events info=subscription_count per item', { skip: needSubscriptionCount }, async () => {
  const pub = uniq('binfo');
  await subscriber(pub);
  await subscriberB(pub);
  const res = await postBatch([
    { channel: uniq('binfo-empty'), name: 'a', data: 'x' },
    { channel: pub, name: 'b', data: 'x', info: 'subscription_count' },
  ]);
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json, { batch: [{}, { subscription_count: 2 }] });
});

test('POST /batch_events with malformed items gets 400', async () => {
  assertErrorBody(await signedRequest({ app: MAIN, method: 'POST', path: '/batch_events', body: { nope: [] } }), 400);
  assertErrorBody(await postBatch([{ channel: uniq('b'), data: 'x' }]), 400);
  assertErrorBody(await postBatch([{ channel: uniq('b'), name: 'n', data: { o: 1 } }]), 400);
});

// ---- GET /channels ----

test('GET /channels lists occupied channels only, filtered by prefix', async () => {
  const prefix = uniq('list');
  const a = `${prefix}-a`;
  const b = `${prefix}-b`;
  const gone = `${prefix}-gone`;
  await subscriber(a);
  await subscriberB(b);
  const leaver = await subscriberB(gone);
  leaver.unsubscribe(gone);
  await leaver.ping();
  const res = await sdk.get({ path: '/channels', params: { filter_by_prefix: prefix } });
  assert.equal(res.status, 200);
  assert.deepEqual(await jsonOf(res), { channels: { [a]: {}, [b]: {} } });
});

test('GET /channels?filter_by_prefix=presence-…&info=user_count', async () => {
  const prefix = uniq('presence-list');
  const p1 = `${prefix}-1`;
  const p2 = `${prefix}-2`;
  await presenceMember(p1, 'x');
  await presenceMember(p1, 'y', B);
  await presenceMember(p2, 'z', B);
  const res = await sdk.get({ path: '/channels', params: { filter_by_prefix: prefix, info: 'user_count' } });
  assert.deepEqual(await jsonOf(res), { channels: { [p1]: { user_count: 2 }, [p2]: { user_count: 1 } } });
});

test('GET /channels info=user_count without a presence- prefix gets 400', async () => {
  assertErrorBody(await get('/channels', { filter_by_prefix: uniq('pub'), info: 'user_count' }), 400);
  assertErrorBody(await get('/channels', { info: 'user_count' }), 400);
});

// ---- GET /channels/{name} ----

test('GET /channels/{name} for an empty channel is {"occupied":false}', async () => {
  const res = await sdk.get({ path: `/channels/${uniq('empty')}` });
  assert.deepEqual(await jsonOf(res), { occupied: false });
});

test('GET /channels/{name} for an occupied channel', async () => {
  const ch = uniq('occ');
  await subscriber(ch);
  const res = await sdk.get({ path: `/channels/${ch}` });
  assert.deepEqual(await jsonOf(res), { occupied: true });
});

test('GET /channels/{name}?info=subscription_count', { skip: needSubscriptionCount }, async () => {
  const ch = uniq('occ');
  await subscriber(ch);
  await subscriberB(ch);
  const third = await subscriberB(ch);
  const res = await sdk.get({ path: `/channels/${ch}`, params: { info: 'subscription_count' } });
  assert.deepEqual(await jsonOf(res), { occupied: true, subscription_count: 3 });
  // Leaving is reflected (the server learns of the close asynchronously).
  third.close();
  await third.waitClose();
  const deadline = Date.now() + WAIT_MS;
  let body;
  do {
    body = await jsonOf(await sdk.get({ path: `/channels/${ch}`, params: { info: 'subscription_count' } }));
    if (body.subscription_count === 2) break;
    await sleep(50);
  } while (Date.now() < deadline);
  assert.deepEqual(body, { occupied: true, subscription_count: 2 });
});

test('GET /channels/{presence}?info=user_count', async () => {
  const ch = uniq('presence-info');
  await presenceMember(ch, 'one');
  await presenceMember(ch, 'two', B);
  const res = await sdk.get({ path: `/channels/${ch}`, params: { info: 'user_count' } });
  assert.deepEqual(await jsonOf(res), { occupied: true, user_count: 2 });
});

test('GET /channels/{public}?info=user_count gets 400', async () => {
  const ch = uniq('occ');
  await subscriber(ch);
  assertErrorBody(await get(`/channels/${ch}`, { info: 'user_count' }), 400);
});

test('GET /channels/{name} with an invalid channel name gets 400', async () => {
  assertErrorBody(await get(`/channels/${'n'.repeat(165)}`), 400);
});

test('channel becomes unoccupied after its last subscriber disconnects', async () => {
  const ch = uniq('vacate');
  const c = await subscriberB(ch);
  assert.deepEqual(await jsonOf(await sdk.get({ path: `/channels/${ch}` })), { occupied: true });
  c.close();
  await c.waitClose();
  const deadline = Date.now() + WAIT_MS;
  let body;
  do {
    body = await jsonOf(await sdk.get({ path: `/channels/${ch}` }));
    if (!body.occupied) break;
    await sleep(50);
  } while (Date.now() < deadline);
  assert.deepEqual(body, { occupied: false });
});

// ---- GET /channels/{name}/users ----

test('GET /channels/{presence}/users lists distinct user ids', async () => {
  const ch = uniq('presence-users');
  await presenceMember(ch, 'u-1');
  await presenceMember(ch, 'u-2');
  await presenceMember(ch, 'u-2', B);
  const body = await jsonOf(await sdk.get({ path: `/channels/${ch}/users` }));
  assert.deepEqual(Object.keys(body), ['users']);
  assert.deepEqual(
    body.users.sort((x, y) => (x.id < y.id ? -1 : 1)),
    [{ id: 'u-1' }, { id: 'u-2' }],
  );
});

test('GET /channels/{presence}/users on an empty channel is an empty list', async () => {
  const body = await jsonOf(await sdk.get({ path: `/channels/${uniq('presence-nobody')}/users` }));
  assert.deepEqual(body, { users: [] });
});

test('GET /channels/{non-presence}/users gets 400', async () => {
  const ch = uniq('nousers');
  await subscriber(ch);
  assertErrorBody(await get(`/channels/${ch}/users`), 400);
  assertErrorBody(await get(`/channels/private-${ch}/users`), 400);
});

// ---- users/terminate_connections ----

test('POST /users/{id}/terminate_connections answers {}', async () => {
  const res = await sdk.terminateUserConnections('user-1');
  assert.equal(res.status, 200);
  assert.deepEqual(await jsonOf(res), {});
});

// ---- app resolution ----

test('unknown app id gets 404 {"error": ...}', async () => {
  const res = await signedRequest({ app: { id: '987654', key: MAIN.key, secret: MAIN.secret }, method: 'GET', path: '/channels' });
  assertErrorBody(res, 404);
});

test('disabled app gets 403 {"error": ...}', { skip: needFull('the disabled fixture app 3') }, async () => {
  assertErrorBody(await signedRequest({ app: DISABLED, method: 'GET', path: '/channels' }), 403);
  assertErrorBody(
    await signedRequest({ app: DISABLED, method: 'POST', path: '/events', body: { name: 'x', channels: ['a'], data: 'x' } }),
    403,
  );
});

// Health endpoints are pushi's own (not part of the Pusher API).
const pushiOnly = needFull('pushi health endpoints');

test('GET /up answers 200', { skip: pushiOnly }, async () => {
  const res = await fetch(`http://${HOST}:${PORT}/up`);
  assert.equal(res.status, 200);
});

test('GET /up/{app_id}: 200 for an enabled app, 404 for unknown or disabled', { skip: pushiOnly }, async () => {
  assert.equal((await fetch(`http://${HOST}:${PORT}/up/${MAIN.id}`)).status, 200);
  assert.equal((await fetch(`http://${HOST}:${PORT}/up/987654`)).status, 404);
  if (FULL) assert.equal((await fetch(`http://${HOST}:${PORT}/up/${DISABLED.id}`)).status, 404);
});
