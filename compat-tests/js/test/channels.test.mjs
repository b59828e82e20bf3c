// Public and private channels: subscription frames, authorization failures,
// channel name rules, delivery of HTTP-triggered events.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { MAIN, SECOND, uniq, needFull, needSubscriptionCount, QUIET_MS, WAIT_MS, sleep } from '../lib/env.mjs';
import { RawClient } from '../lib/raw.mjs';
import { serverSdk } from '../lib/http.mjs';
import { connectClient, connectClientB, subscribed, once } from '../lib/client.mjs';
import { closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const sdk = serverSdk(MAIN);

// Where a test publishes (HTTP on node A) and receives, the receiver is on node B (node A
// outside cluster mode); where two clients interact, one of them is.

// Both error frames a failed subscription produces, with the expected status.
async function expectSubscriptionError(c, channel, status) {
  const err = await c.waitEvent('pusher:error');
  assert.equal(typeof err.data, 'object');
  assert.equal(err.data.code, null);
  assert.equal(typeof err.data.message, 'string');
  assert.ok(err.data.message.length > 0);
  const sub = await c.waitEvent('pusher:subscription_error', channel);
  assert.deepEqual(Object.keys(sub).sort(), ['channel', 'data', 'event']);
  assert.equal(typeof sub.data, 'string', 'subscription_error data must be a JSON string');
  const data = JSON.parse(sub.data);
  assert.equal(data.type, status === 401 ? 'AuthError' : data.type);
  assert.equal(typeof data.type, 'string');
  assert.equal(typeof data.error, 'string');
  assert.equal(data.status, status);
  // No success frame, and the socket stays usable.
  await c.ping();
  assert.equal(c.take((f) => f.event === 'pusher_internal:subscription_succeeded' && f.channel === channel).length, 0);
  assert.ok(c.isOpen);
  return data;
}

test('public subscribe: exact subscription_succeeded frame', async () => {
  const c = await RawClient.open(MAIN);
  const ch = uniq('public');
  const ok = await c.subscribe(ch);
  assert.deepEqual(ok, { event: 'pusher_internal:subscription_succeeded', channel: ch, data: '{}' });
});

test('public subscribe with empty auth (as pusher-js sends it) succeeds', async () => {
  const c = await RawClient.open(MAIN);
  const ch = uniq('public');
  await c.subscribe(ch, '');
});

test('HTTP event reaches a public subscriber as {event, channel, data-string}', async () => {
  const c = await RawClient.openB(MAIN);
  const ch = uniq('public');
  await c.subscribe(ch);
  const res = await sdk.trigger(ch, 'my-event', { hello: 'world', n: 1 });
  assert.equal(res.status, 200);
  const f = await c.waitEvent('my-event', ch);
  assert.deepEqual(f, { event: 'my-event', channel: ch, data: '{"hello":"world","n":1}' });
  // A plain (non-JSON) string is delivered as is.
  await sdk.trigger(ch, 'my-event', 'just text');
  assert.deepEqual(await c.waitEvent('my-event', ch), { event: 'my-event', channel: ch, data: 'just text' });
});

test('unsubscribe has no reply and stops delivery', async () => {
  const c = await RawClient.openB(MAIN);
  const gone = uniq('public');
  const kept = uniq('public');
  await c.subscribe(gone);
  await c.subscribe(kept);
  const before = c.all.length;
  c.unsubscribe(gone);
  await c.ping(); // processed in order: the unsubscribe is done
  // App 1 counts subscriptions: the count for `kept` may still arrive after its
  // subscription_succeeded; it is not an answer to the unsubscribe.
  const after = c.all.slice(before).filter((f) => f.event !== 'pusher_internal:subscription_count');
  assert.deepEqual(after, [{ event: 'pusher:pong', data: '{}' }], 'unsubscribe must not be answered');
  await sdk.trigger([gone, kept], 'after-unsub', 'x');
  await c.waitEvent('after-unsub', kept); // positive control
  await c.expectNone((f) => f.event === 'after-unsub', undefined, 'event on an unsubscribed channel');
});

test('re-subscribing to a subscribed public channel succeeds again, one delivery', async () => {
  const c = await RawClient.openB(MAIN);
  const ch = uniq('public');
  await c.subscribe(ch);
  await c.subscribe(ch);
  await sdk.trigger(ch, 'once', 'x');
  await c.waitEvent('once', ch);
  await c.expectNone((f) => f.event === 'once', undefined, 'event delivered twice');
});

test('re-subscribing to a subscribed private channel succeeds again', async () => {
  const c = await RawClient.openB(MAIN);
  const ch = uniq('private-again');
  await c.subscribe(ch, sdk.authorizeChannel(c.socketId, ch).auth);
  await c.subscribe(ch, sdk.authorizeChannel(c.socketId, ch).auth);
  await sdk.trigger(ch, 'once', 'x');
  await c.waitEvent('once', ch);
  await c.expectNone((f) => f.event === 'once', undefined, 'event delivered twice');
});

test('invalid channel name is rejected with status 400, socket stays open', async () => {
  const c = await RawClient.open(MAIN);
  const ch = 'bad channel!';
  c.subscribeFrame(ch);
  await expectSubscriptionError(c, ch, 400);
});

test('channel names up to 164 characters are accepted, 165 rejected', async () => {
  const c = await RawClient.open(MAIN);
  const base = uniq('len');
  const ok = base + 'a'.repeat(164 - base.length);
  assert.equal(ok.length, 164);
  await c.subscribe(ok);
  const tooLong = ok + 'b';
  c.subscribeFrame(tooLong);
  await expectSubscriptionError(c, tooLong, 400);
});

test('channel name with every allowed character class is accepted', async () => {
  const c = await RawClient.openB(MAIN);
  const ch = uniq('Chars_-=@,.;09AZ');
  await c.subscribe(ch);
  await sdk.trigger(ch, 'ev', 'ok');
  await c.waitEvent('ev', ch);
});

test('private subscribe with a valid signature succeeds', async () => {
  const c = await RawClient.openB(MAIN);
  const ch = uniq('private-room');
  const { auth } = sdk.authorizeChannel(c.socketId, ch);
  const ok = await c.subscribe(ch, auth);
  assert.deepEqual(ok, { event: 'pusher_internal:subscription_succeeded', channel: ch, data: '{}' });
  await sdk.trigger(ch, 'secret-event', { a: 1 });
  assert.deepEqual(await c.waitEvent('secret-event', ch), { event: 'secret-event', channel: ch, data: '{"a":1}' });
});

const badAuths = [
  ['a bad signature', (c, ch) => `${MAIN.key}:${'0'.repeat(64)}`],
  ['no auth field', () => undefined],
  ['an empty auth', () => ''],
  ['a signature for another socket', (c, ch) => sdk.authorizeChannel('1.1', ch).auth],
  ['a signature for another channel', (c, ch) => sdk.authorizeChannel(c.socketId, `${ch}-other`).auth],
  ['another app key in the token', (c, ch) => `other-key:${sdk.authorizeChannel(c.socketId, ch).auth.split(':')[1]}`],
  ['a token without a colon', (c, ch) => sdk.authorizeChannel(c.socketId, ch).auth.split(':')[1]],
];

for (const [what, makeAuth] of badAuths) {
  test(`private subscribe with ${what}: pusher:error + subscription_error 401, socket stays open`, async () => {
    const c = await RawClient.openB(MAIN);
    const ch = uniq('private-room');
    c.subscribeFrame(ch, makeAuth(c, ch));
    const data = await expectSubscriptionError(c, ch, 401);
    assert.equal(data.type, 'AuthError');
    // Not subscribed: events on the channel do not arrive...
    const control = uniq('public');
    await c.subscribe(control);
    await sdk.trigger([ch, control], 'probe', 'x');
    await c.waitEvent('probe', control);
    await c.expectNone((f) => f.channel === ch && f.event === 'probe', undefined, 'event on a refused channel');
    // ...and a correct retry on the same socket succeeds.
    await c.subscribe(ch, sdk.authorizeChannel(c.socketId, ch).auth);
  });
}

test('pusher-js: public channel receives SDK events as parsed objects', async () => {
  const client = await connectClientB(MAIN);
  const name = uniq('public');
  const { channel } = await subscribed(client, name);
  const got = once(channel, 'greeting');
  await sdk.trigger(name, 'greeting', { text: 'hi' });
  const { data } = await got;
  assert.deepEqual(data, { text: 'hi' });
});

test('pusher-js: private channel with authorizeChannel receives events', async () => {
  const client = await connectClientB(MAIN);
  const name = uniq('private-pjs');
  const { channel } = await subscribed(client, name);
  const got = once(channel, 'private-greeting');
  await sdk.trigger(name, 'private-greeting', [1, 2, 3]);
  assert.deepEqual((await got).data, [1, 2, 3]);
});

test('pusher-js: bad private auth surfaces subscription_error 401 and the connection stays up', async () => {
  const client = await connectClientB(MAIN, {
    authorize: () => ({ auth: `${MAIN.key}:${'f'.repeat(64)}` }),
  });
  const errors = [];
  client.connection.bind('error', (e) => errors.push(e));
  const channel = client.subscribe(uniq('private-denied'));
  const { data } = await once(channel, 'pusher:subscription_error');
  assert.equal(data.type, 'AuthError');
  assert.equal(data.status, 401);
  assert.equal(channel.subscribed, false);
  assert.equal(client.connection.state, 'connected');
  // The connection still works for other channels.
  const name = uniq('public');
  const { channel: pub } = await subscribed(client, name);
  const got = once(pub, 'after');
  await sdk.trigger(name, 'after', 'x');
  assert.equal((await got).data, 'x');
  assert.ok(errors.length >= 1, 'pusher:error should reach the connection error handler');
  assert.equal(errors[0].type, 'PusherError');
});

test(
  'subscription_count: pusher-js sees the count change when another client subscribes',
  { skip: needSubscriptionCount },
  async () => {
    const name = uniq('counted');
    const first = await connectClient(MAIN);
    const { channel } = await subscribed(first, name);
    const counts = [];
    channel.bind('pusher:subscription_count', (d) => counts.push(d.subscription_count));
    const second = await connectClientB(MAIN);
    await subscribed(second, name);
    const deadline = Date.now() + 5000;
    while (!counts.includes(2) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.ok(counts.includes(2), `counts seen: ${JSON.stringify(counts)}`);
    assert.equal(channel.subscriptionCount, counts[counts.length - 1]);
  },
);

// Resolves when the channel's pusher:subscription_count reports n (bound before the change).
function countReaches(channel, n, timeout = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      channel.unbind('pusher:subscription_count', handler);
      reject(new Error(`subscription_count never reached ${n} (last ${channel.subscriptionCount})`));
    }, timeout);
    const handler = (d) => {
      if (d.subscription_count !== n) return;
      clearTimeout(timer);
      channel.unbind('pusher:subscription_count', handler);
      resolve();
    };
    channel.bind('pusher:subscription_count', handler);
  });
}

for (const prefix of ['counted', 'private-counted']) {
  test(
    `subscription_count: pusher-js on ${prefix}-… sees 1, 2 on a join, 1 after an unsubscribe and after a disconnect`,
    { skip: needSubscriptionCount },
    async () => {
      const name = uniq(prefix);
      const first = await connectClient(MAIN);
      const channel = first.subscribe(name);
      const counts = [];
      channel.bind('pusher:subscription_count', (d) => counts.push(d.subscription_count));
      const one = countReaches(channel, 1);
      await subscribed(first, name);
      await one;

      const two = countReaches(channel, 2);
      const second = await connectClientB(MAIN);
      await subscribed(second, name);
      await two;
      const backToOne = countReaches(channel, 1);
      second.unsubscribe(name);
      await backToOne;

      const twoAgain = countReaches(channel, 2);
      const third = await connectClientB(MAIN);
      await subscribed(third, name);
      await twoAgain;
      const oneAgain = countReaches(channel, 1);
      third.disconnect();
      await oneAgain;

      assert.deepEqual(counts, [1, 2, 1, 2, 1]);
      assert.equal(channel.subscriptionCount, 1);
    },
  );
}

test('subscription_count: never sent on presence channels (pusher-js)', { skip: needSubscriptionCount }, async () => {
  const name = uniq('presence-counted');
  const a = await connectClient(MAIN, { presence: { user_id: 'a' } });
  const { channel } = await subscribed(a, name);
  const counts = [];
  channel.bind('pusher:subscription_count', (d) => counts.push(d));
  const added = once(channel, 'pusher:member_added');
  const b = await connectClientB(MAIN, { presence: { user_id: 'b' } });
  await subscribed(b, name);
  await added;
  // Control: an HTTP event sent after the join arrives; no count came before it.
  const control = once(channel, 'control');
  await sdk.trigger(name, 'control', 'x');
  await control;
  await sleep(QUIET_MS);
  assert.deepEqual(counts, []);
});

test(
  'subscription_count events are not sent for an app without the feature',
  { skip: needFull('fixture app 2 (subscription_count off)') },
  async () => {
    const ch = uniq('uncounted');
    const a = await RawClient.openB(SECOND);
    const b = await RawClient.open(SECOND);
    await a.subscribe(ch);
    await b.subscribe(ch);
    await serverSdk(SECOND).trigger(ch, 'control', 'x');
    await a.waitEvent('control', ch);
    await a.expectNone((f) => f.event === 'pusher_internal:subscription_count', undefined, 'subscription_count sent');
  },
);
