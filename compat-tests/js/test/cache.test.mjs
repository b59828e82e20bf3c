// Cache channels (PUSHER-SPEC 1.4 pusher:cache_miss row, 2.2 info=cache): an
// empty cache channel answers a subscribe with pusher:cache_miss; otherwise the
// last event published over HTTP is replayed to each new subscriber.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { MAIN, uniq, QUIET_MS, sleep } from '../lib/env.mjs';
import { RawClient } from '../lib/raw.mjs';
import { serverSdk, signedRequest, jsonOf } from '../lib/http.mjs';
import { connectClientB, subscribed, once } from '../lib/client.mjs';
import { closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const sdk = serverSdk(MAIN);

// Subscribers are on node B (node A outside cluster mode), the HTTP publishes go to node A.

// Subscribes with every channel event recorded from the start (names in order,
// subscription counts left out: they are not part of the cache behaviour).
// With `until`, also waits for that event (the cache_miss or the replay), which follows
// subscription_succeeded as a separate message, so subscribed() may resolve first.
async function cacheSubscriber(name, { until } = {}) {
  const client = await connectClientB(MAIN);
  const channel = client.subscribe(name);
  const seen = [];
  channel.bind_global((event, data) => {
    if (event !== 'pusher:subscription_count') seen.push({ event, data });
  });
  const next = until ? once(channel, until) : null;
  await subscribed(client, name);
  if (next) await next;
  return { client, channel, seen };
}

test('pusher-js: pusher:cache_miss fires right after subscribing to an empty cache channel', async () => {
  const name = uniq('cache-empty');
  const client = await connectClientB(MAIN);
  const channel = client.subscribe(name);
  const seen = [];
  channel.bind_global((event) => {
    if (event !== 'pusher:subscription_count') seen.push(event);
  });
  const miss = once(channel, 'pusher:cache_miss');
  await subscribed(client, name);
  await miss;
  assert.deepEqual(seen, ['pusher:subscription_succeeded', 'pusher:cache_miss']);
  // Live events still arrive afterwards.
  const live = once(channel, 'live');
  await sdk.trigger(name, 'live', { n: 1 });
  assert.deepEqual((await live).data, { n: 1 });
});

test('raw: pusher:cache_miss is the frame right after subscription_succeeded', async () => {
  const ch = uniq('cache-raw');
  const c = await RawClient.open(MAIN);
  const before = c.all.length;
  await c.subscribe(ch);
  const miss = await c.waitEvent('pusher:cache_miss', ch);
  assert.equal(miss.event, 'pusher:cache_miss');
  assert.equal(miss.channel, ch);
  const frames = c.all.slice(before).filter((f) => f.event !== 'pusher_internal:subscription_count');
  assert.deepEqual(
    frames.map((f) => f.event),
    ['pusher_internal:subscription_succeeded', 'pusher:cache_miss'],
  );
});

test('pusher-js: a new subscriber gets the last HTTP-published event instead of a cache miss', async () => {
  const name = uniq('cache-last');
  const first = await cacheSubscriber(name, { until: 'pusher:cache_miss' });
  assert.deepEqual(first.seen.map((s) => s.event), ['pusher:subscription_succeeded', 'pusher:cache_miss']);

  const e1 = once(first.channel, 'update');
  await sdk.trigger(name, 'update', { v: 1 });
  await e1;
  const e2 = once(first.channel, 'update');
  await sdk.trigger(name, 'update', { v: 2 });
  assert.deepEqual((await e2).data, { v: 2 });

  // The late subscriber: the replay (the last event only) is its positive control.
  const client = await connectClientB(MAIN);
  const channel = client.subscribe(name);
  const seen = [];
  channel.bind_global((event, data) => {
    if (event !== 'pusher:subscription_count') seen.push({ event, data });
  });
  const replay = once(channel, 'update');
  await subscribed(client, name);
  assert.deepEqual((await replay).data, { v: 2 });
  await sleep(QUIET_MS);
  assert.deepEqual(seen, [
    { event: 'pusher:subscription_succeeded', data: {} },
    { event: 'update', data: { v: 2 } },
  ]);

  // The replay is not a new publication: the first subscriber saw each event once.
  assert.deepEqual(
    first.seen.filter((s) => s.event === 'update').map((s) => s.data),
    [{ v: 1 }, { v: 2 }],
  );
});

test('raw: the replayed event is the same frame a live subscriber received', async () => {
  const ch = uniq('cache-frame');
  const live = await RawClient.openB(MAIN);
  await live.subscribe(ch);
  await live.waitEvent('pusher:cache_miss', ch);
  await sdk.trigger(ch, 'snapshot', 'plain text');
  const liveFrame = await live.waitEvent('snapshot', ch);
  assert.deepEqual(liveFrame, { event: 'snapshot', channel: ch, data: 'plain text' });

  const late = await RawClient.openB(MAIN);
  const before = late.all.length;
  await late.subscribe(ch);
  const replayed = await late.waitEvent('snapshot', ch);
  assert.deepEqual(replayed, liveFrame);
  const frames = late.all.slice(before).filter((f) => f.event !== 'pusher_internal:subscription_count');
  assert.deepEqual(frames.map((f) => f.event), ['pusher_internal:subscription_succeeded', 'snapshot']);
  await late.expectNone((f) => f.event === 'pusher:cache_miss', undefined, 'cache_miss despite a cached event');
});

test('GET /channels/{cache-…}?info=cache: null when empty, then the last data and a ttl', async () => {
  const name = uniq('cache-info');
  const empty = await jsonOf(await sdk.get({ path: `/channels/${name}`, params: { info: 'cache' } }));
  assert.deepEqual(empty, { occupied: false, cache: null });

  await sdk.trigger(name, 'first', { a: 1 });
  await sdk.trigger(name, 'second', { b: 2 });
  const body = await jsonOf(await sdk.get({ path: `/channels/${name}`, params: { info: 'cache' } }));
  assert.deepEqual(Object.keys(body).sort(), ['cache', 'occupied']);
  assert.equal(body.occupied, false);
  assert.deepEqual(Object.keys(body.cache).sort(), ['data', 'ttl']);
  assert.equal(body.cache.data, '{"b":2}');
  assert.equal(Number.isInteger(body.cache.ttl), true);
  // Pusher keeps cached events for 30 minutes.
  assert.ok(body.cache.ttl > 0 && body.cache.ttl <= 1800, `ttl ${body.cache.ttl}`);

  // With a subscriber: occupied, and the subscriber got the replay.
  const late = await cacheSubscriber(name, { until: 'second' });
  assert.ok(late.channel.subscribed);
  const occupied = await jsonOf(await sdk.get({ path: `/channels/${name}`, params: { info: 'cache' } }));
  assert.equal(occupied.occupied, true);
  assert.equal(occupied.cache.data, '{"b":2}');
  assert.deepEqual(late.seen.map((x) => x.event), ['pusher:subscription_succeeded', 'second']);
});

test('GET /channels/{non-cache}?info=cache gets 400', async () => {
  const res = await signedRequest({ app: MAIN, method: 'GET', path: `/channels/${uniq('not-cache')}`, query: { info: 'cache' } });
  assert.equal(res.status, 400, res.text);
  assert.equal(typeof res.json.error, 'string');
});

test('private-cache- channels replay too (pusher-js, authorized by the SDK)', async () => {
  const name = uniq('private-cache');
  await sdk.trigger(name, 'stored', { secret: true });
  const client = await connectClientB(MAIN);
  const channel = client.subscribe(name);
  const replay = once(channel, 'stored');
  await subscribed(client, name);
  assert.deepEqual((await replay).data, { secret: true });
});
