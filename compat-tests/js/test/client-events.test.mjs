// Client events (client-*): delivery, every rejection rule, rate limit.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { MAIN, QUIET, PORT_B, uniq, needFull, needClientEvents, sleep } from '../lib/env.mjs';
import { RawClient } from '../lib/raw.mjs';
import { serverSdk, hmac } from '../lib/http.mjs';
import { connectClient, connectClientB, subscribed, once } from '../lib/client.mjs';
import { closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const sdk = serverSdk(MAIN);
const skip = needClientEvents;

// a (the sender) on node A, b (the receiver) on node B (node A outside cluster mode).
async function privatePair(prefix = 'private-chat', app = MAIN) {
  const ch = uniq(prefix);
  const appSdk = app === MAIN ? sdk : serverSdk(app);
  const a = await RawClient.open(app);
  const b = await RawClient.openB(app);
  await a.subscribe(ch, appSdk.authorizeChannel(a.socketId, ch).auth);
  await b.subscribe(ch, appSdk.authorizeChannel(b.socketId, ch).auth);
  return { ch, a, b };
}

async function presenceMember(ch, userId, opts = {}) {
  const c = await RawClient.open(MAIN, opts);
  const channelData = JSON.stringify({ user_id: userId, user_info: { n: userId } });
  await c.subscribe(ch, `${MAIN.key}:${hmac(MAIN.secret, `${c.socketId}:${ch}:${channelData}`)}`, channelData);
  return c;
}

// Sender gets pusher:error code null; the other socket gets nothing; both stay open.
async function expectRejected(sender, receiver, ch, event) {
  const err = await sender.waitEvent('pusher:error');
  assert.equal(typeof err.data, 'object');
  assert.equal(err.data.code, null);
  assert.equal(typeof err.data.message, 'string');
  await sender.ping();
  if (receiver) {
    // Positive control: a valid HTTP event still reaches the receiver.
    await sdk.trigger(ch, 'control', 'x');
    await receiver.waitEvent('control', ch);
    await receiver.expectNone((f) => f.event === event, undefined, 'rejected client event was delivered');
  }
  return err;
}

test('private channel: object data forwarded verbatim to others, not echoed', { skip }, async () => {
  const { ch, a, b } = await privatePair();
  a.send({ event: 'client-typing', channel: ch, data: { who: 'a', nested: { x: [1, 2] } } });
  const f = await b.waitEvent('client-typing', ch);
  assert.deepEqual(f, { event: 'client-typing', channel: ch, data: { who: 'a', nested: { x: [1, 2] } } });
  // Not echoed: a round trip on a proves it had time to arrive.
  await a.ping();
  await a.expectNone((fr) => fr.event === 'client-typing', undefined, 'client event echoed to sender');
});

test('private channel: string data stays a string', { skip }, async () => {
  const { ch, a, b } = await privatePair();
  a.send({ event: 'client-msg', channel: ch, data: '{"looks":"like json"}' });
  const f = await b.waitEvent('client-msg', ch);
  assert.deepEqual(f, { event: 'client-msg', channel: ch, data: '{"looks":"like json"}' });
});

test('client event reaches every other subscriber', { skip }, async () => {
  const { ch, a, b } = await privatePair();
  // b is on node B, c on the sender's node.
  const c = await RawClient.open(MAIN);
  await c.subscribe(ch, sdk.authorizeChannel(c.socketId, ch).auth);
  a.send({ event: 'client-all', channel: ch, data: { n: 1 } });
  await b.waitEvent('client-all', ch);
  await c.waitEvent('client-all', ch);
});

test('presence channel: delivered frame carries the sender user_id', { skip }, async () => {
  const ch = uniq('presence-chat');
  const a = await presenceMember(ch, 'alice');
  const b = await presenceMember(ch, 'bob', { port: PORT_B });
  a.send({ event: 'client-hello', channel: ch, data: { hi: true } });
  const f = await b.waitEvent('client-hello', ch);
  assert.deepEqual(f, { event: 'client-hello', channel: ch, data: { hi: true }, user_id: 'alice' });
  await a.ping();
  await a.expectNone((fr) => fr.event === 'client-hello', undefined, 'client event echoed to sender');
});

test('public channel: client event rejected', { skip }, async () => {
  const ch = uniq('public-chat');
  const a = await RawClient.open(MAIN);
  const b = await RawClient.openB(MAIN);
  await a.subscribe(ch);
  await b.subscribe(ch);
  a.send({ event: 'client-nope', channel: ch, data: {} });
  await expectRejected(a, b, ch, 'client-nope');
});

test('private-encrypted channel: client event rejected', { skip }, async () => {
  const { ch, a, b } = await privatePair('private-encrypted-chat');
  a.send({ event: 'client-nope', channel: ch, data: {} });
  await expectRejected(a, b, ch, 'client-nope');
});

test('sender not subscribed: client event rejected', { skip }, async () => {
  const { ch, b } = await privatePair();
  const outsider = await RawClient.open(MAIN);
  outsider.send({ event: 'client-intrude', channel: ch, data: {} });
  await expectRejected(outsider, b, ch, 'client-intrude');
});

test('event name without client- prefix from a client is rejected', { skip }, async () => {
  const { ch, a, b } = await privatePair();
  a.send({ event: 'server-event', channel: ch, data: {} });
  await expectRejected(a, b, ch, 'server-event');
});

test('client event data over 10 KB is rejected', { skip }, async () => {
  const { ch, a, b } = await privatePair();
  a.send({ event: 'client-big', channel: ch, data: 'x'.repeat(11 * 1024) });
  await expectRejected(a, b, ch, 'client-big');
});

test(
  'app with client events disabled rejects them with the documented message',
  { skip: needFull('fixture app 5 (client events off)') },
  async () => {
    const { ch, a, b } = await privatePair('private-quiet', QUIET);
    a.send({ event: 'client-hush', channel: ch, data: {} });
    const err = await a.waitEvent('pusher:error');
    assert.deepEqual(err.data, { code: null, message: 'Client events are not enabled for this app' });
    await a.ping();
    await b.ping();
    await b.expectNone((f) => f.event === 'client-hush', undefined, 'client event delivered on app 5');
  },
);

test('rate limit: more than 10 per second gets 4301 and is dropped, socket stays open', { skip }, async () => {
  const { ch, a, b } = await privatePair();
  const sent = 25;
  for (let i = 0; i < sent; i++) a.send({ event: 'client-burst', channel: ch, data: { i } });
  await a.ping();
  // Everything accepted is delivered before this HTTP control event.
  await sdk.trigger(ch, 'control', 'x');
  await b.waitEvent('control', ch);
  await b.ping();
  const delivered = b.take((f) => f.event === 'client-burst');
  const errors = a.take((f) => f.event === 'pusher:error');
  for (const e of errors) {
    assert.equal(e.data.code, 4301);
    assert.equal(typeof e.data.message, 'string');
  }
  assert.ok(errors.length >= 1, 'no 4301 for a burst of 25');
  assert.equal(delivered.length + errors.length, sent, 'each event is either delivered or rejected');
  // A burst of 25 spans at most two one-second windows.
  assert.ok(delivered.length >= 10 && delivered.length <= 20, `delivered ${delivered.length}`);
  // Delivered in order, without duplicates.
  const idx = delivered.map((f) => f.data.i);
  assert.deepEqual(idx, [...idx].sort((x, y) => x - y));
  assert.ok(a.isOpen);
  // After the window passes, events flow again.
  await sleep(1100);
  a.send({ event: 'client-after', channel: ch, data: {} });
  await b.waitEvent('client-after', ch);
});

test('pusher-js: trigger on a private channel reaches another pusher-js client', { skip }, async () => {
  const name = uniq('private-pjs-chat');
  const a = await connectClient(MAIN);
  const b = await connectClientB(MAIN);
  const { channel: chA } = await subscribed(a, name);
  const { channel: chB } = await subscribed(b, name);
  const got = once(chB, 'client-note');
  assert.equal(chA.trigger('client-note', { text: 'hello' }), true);
  assert.deepEqual((await got).data, { text: 'hello' });
});

test('pusher-js: presence client event exposes metadata.user_id', { skip }, async () => {
  const name = uniq('presence-pjs-chat');
  const a = await connectClient(MAIN, { presence: { user_id: 'anna', user_info: {} } });
  const b = await connectClientB(MAIN, { presence: { user_id: 'ben', user_info: {} } });
  const { channel: chA } = await subscribed(a, name);
  const { channel: chB } = await subscribed(b, name);
  const got = once(chB, 'client-wave');
  chA.trigger('client-wave', { w: 1 });
  const { data, meta } = await got;
  assert.deepEqual(data, { w: 1 });
  assert.equal(meta.user_id, 'anna');
});
