// pushi's extensions (EXTENSIONS.md) with stock pusher-js and the stock Node server SDK, no
// plugin: offline subscriptions through the SDK's generic signed request
// (`pusher.post({path, body})`, `pusher.get({path, params})`), the personal channel
// `private-personal-<user_id>` (aggregation, replay on subscribe, recovery with `since`),
// and peer channels on a presence channel.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { MAIN, uniq, needFull, needClientEvents, QUIET_MS, sleep } from '../lib/env.mjs';
import { serverSdk, jsonOf } from '../lib/http.mjs';
import { connectClient, connectClientB, subscribed, once, collect } from '../lib/client.mjs';
import { closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const skip = needFull('the pushi extensions');
const sdk = () => serverSdk(MAIN);

async function offline(route, user, channel) {
  const res = await sdk().post({ path: `/${route}`, body: { user_id: user, event: channel } });
  assert.equal(res.status, 200);
  assert.deepEqual(await jsonOf(res), {});
}

async function storedEvents(user, params = {}) {
  const res = await sdk().get({ path: `/users/${user}/events`, params });
  return (await jsonOf(res)).events;
}

// A pusher-js client whose auth endpoint signs `{"since": cursor}` for the personal channel.
// It receives what the SDK publishes on node A, so it is on node B (node A outside cluster
// mode).
function personalClient(since) {
  return connectClientB(MAIN, {
    authorize: ({ socketId, channelName, sdk: s }) =>
      s.authorizeChannel(socketId, channelName, since === undefined ? undefined : { since }),
  });
}

test('offline subscriptions: the Node SDK subscribes, lists and reads a user\'s stored events', { skip }, async () => {
  const user = uniq('sdk-user');
  const news = uniq('news');
  const sport = uniq('sport');
  await offline('subscribe', user, news);
  // `channel` is accepted for `event`.
  const res = await sdk().post({ path: '/subscribe', body: { user_id: user, channel: sport } });
  assert.equal(res.status, 200);
  await sdk().trigger(news, 'headline', { n: 1 });
  await sdk().trigger(sport, 'score', '2-1');
  const subs = await jsonOf(await sdk().get({ path: `/users/${user}/subscriptions` }));
  assert.deepEqual(subs.channels.sort(), [news, sport].sort());
  const events = await storedEvents(user);
  assert.deepEqual(events.map((e) => e.event), ['score', 'headline']);
  assert.equal(events[1].channel, news);
  assert.deepEqual(JSON.parse(events[1].data), { n: 1 });
  assert.ok(events[0].id > events[1].id);
  const older = await storedEvents(user, { before: events[0].id, limit: 1 });
  assert.deepEqual(older.map((e) => e.event), ['headline']);
  await offline('unsubscribe', user, news);
  const after = await jsonOf(await sdk().get({ path: `/users/${user}/subscriptions` }));
  assert.deepEqual(after.channels, [sport]);
  // A bad limit is a 400 the SDK reports.
  await assert.rejects(sdk().get({ path: `/users/${user}/events`, params: { limit: 101 } }), (e) => e.status === 400);
});

test('personal channel: both offline-subscribed streams arrive, relabelled, with the replay on subscribe', { skip }, async () => {
  const user = uniq('reader');
  const a = uniq('feed-a');
  const b = uniq('feed-b');
  await offline('subscribe', user, a);
  await offline('subscribe', user, b);
  await sdk().trigger(a, 'while-away', 'missed');
  const client = await personalClient();
  const name = `private-personal-${user}`;
  const { channel, data } = await subscribed(client, name);
  assert.deepEqual(data.channels.sort(), [a, b].sort());
  assert.deepEqual(data.events.map((e) => e.event), ['while-away']);
  assert.equal(data.events[0].channel, a);
  const gotA = once(channel, 'from-a');
  const gotB = once(channel, 'from-b');
  await sdk().trigger(a, 'from-a', { x: 1 });
  await sdk().trigger(b, 'from-b', { y: 2 });
  assert.deepEqual((await gotA).data, { x: 1 });
  assert.deepEqual((await gotB).data, { y: 2 });
  // A publish straight to the personal channel reaches it too.
  const direct = once(channel, 'direct');
  await sdk().trigger(name, 'direct', 'hi');
  assert.equal((await direct).data, 'hi');
});

test('personal channel: reconnecting with since receives exactly the missed events', { skip }, async () => {
  const user = uniq('returning');
  const feed = uniq('feed');
  await offline('subscribe', user, feed);
  const first = await personalClient();
  const { channel } = await subscribed(first, `private-personal-${user}`);
  const seen = once(channel, 'seen');
  await sdk().trigger(feed, 'seen', 1);
  await seen;
  // The cursor: the highest id the client has (a pushi-aware client reads it off the frame;
  // here the events route tells it).
  const cursor = (await storedEvents(user, { limit: 1 }))[0].id;
  first.disconnect();
  for (const i of [1, 2, 3]) await sdk().trigger(feed, `missed-${i}`, i);
  const back = await personalClient(cursor);
  const { channel: again, data } = await subscribed(back, `private-personal-${user}`);
  assert.deepEqual(data.events.map((e) => e.event), ['missed-1', 'missed-2', 'missed-3']);
  // Then the live stream, without a repeat of the replay.
  const live = collect(again, 'missed-3');
  const fresh = once(again, 'fresh');
  await sdk().trigger(feed, 'fresh', 4);
  await fresh;
  assert.equal(live.length, 0);
});

function peerMember(user) {
  return { user_id: user, user_info: { name: user }, peer: true };
}

test('peer channels: two peer members are paired, exchange client events, a third is refused, leaving ends it', { skip: skip || needClientEvents }, async () => {
  const base = uniq('room');
  const presence = `presence-${base}`;
  const alice = await connectClient(MAIN, { presence: peerMember('alice') });
  // bob is on node B (node A outside cluster mode): the pair spans both nodes.
  const bob = await connectClientB(MAIN, { presence: peerMember('bob') });
  // Bound before subscribing: the announcement follows subscription_succeeded at once.
  const aliceHears = once(alice.subscribe(presence), 'pushi:peer_added');
  const { channel: pa } = await subscribed(alice, presence);
  const bobHears = once(bob.subscribe(presence), 'pushi:peer_added');
  await subscribed(bob, presence);
  const { data: toAlice } = await aliceHears;
  const { data: toBob } = await bobHears;
  const peer = `peer-${base};alice,bob`;
  assert.deepEqual(toAlice, { channel: peer, user_id: 'bob' });
  assert.deepEqual(toBob, { channel: peer, user_id: 'alice' });

  const { channel: la } = await subscribed(alice, toAlice.channel);
  const { channel: lb } = await subscribed(bob, toBob.channel);
  const got = once(lb, 'client-hello');
  assert.equal(la.trigger('client-hello', { text: 'hi bob' }), true);
  // (user_id is on the frame; pusher-js passes it to callbacks on presence channels only,
  // and a peer channel's other side is known from pushi:peer_added.)
  const { data } = await got;
  assert.deepEqual(data, { text: 'hi bob' });
  // The Node SDK publishes to the pair too.
  const both = [once(la, 'server-note'), once(lb, 'server-note')];
  await sdk().trigger(peer, 'server-note', 'for both');
  for (const p of both) assert.equal((await p).data, 'for both');

  // A third member cannot subscribe to the pair's channel.
  const carol = await connectClient(MAIN, { presence: peerMember('carol') });
  await subscribed(carol, presence);
  await assert.rejects(subscribed(carol, peer), /subscription to .* failed/);

  // bob leaves the presence channel: alice hears the pair ended, and nothing more arrives.
  const ended = once(pa, 'pushi:peer_removed');
  bob.unsubscribe(presence);
  assert.deepEqual((await ended).data, { channel: peer, user_id: 'bob' });
  const late = collect(la, 'after');
  await sdk().trigger(peer, 'after', 'x');
  await sleep(QUIET_MS);
  assert.equal(late.length, 0);
});
