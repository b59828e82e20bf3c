// Laravel Echo (pusher broadcaster) against the server, with a real HTTP
// auth endpoint as a Laravel app would expose at /broadcasting/auth.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import Echo from 'laravel-echo';
import Pusher from 'pusher-js';
import { MAIN, PORT, PORT_B, uniq, needClientEvents, WAIT_MS } from '../lib/env.mjs';
import { serverSdk } from '../lib/http.mjs';
import { waitConnected, pusherOptions } from '../lib/client.mjs';
import { track, closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const sdk = serverSdk(MAIN);
const USERS = {
  1: { id: 1, name: 'Taylor' },
  2: { id: 2, name: 'Jess' },
};

let authServer;
let authUrl;
const authCalls = [];

// Authorizes every channel for the user named in the X-User header; user 0 is refused.
before(async () => {
  authServer = http.createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => (body += chunk));
    req.on('end', () => {
      const form = new URLSearchParams(body);
      const socketId = form.get('socket_id');
      const channel = form.get('channel_name');
      const userId = req.headers['x-user'];
      authCalls.push({ socketId, channel, userId });
      if (!USERS[userId]) {
        res.writeHead(403, { 'content-type': 'application/json' });
        res.end('{"message":"forbidden"}');
        return;
      }
      const user = USERS[userId];
      const presence = channel.startsWith('presence-') ? { user_id: user.id, user_info: user } : undefined;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(sdk.authorizeChannel(socketId, channel, presence)));
    });
  });
  await new Promise((r) => authServer.listen(0, '127.0.0.1', r));
  authUrl = `http://127.0.0.1:${authServer.address().port}/broadcasting/auth`;
});

after(() => authServer.close());

// `port`: the node (PORT_B: node B in cluster mode, where a test's receivers are).
async function echoFor(userId, { port = PORT } = {}) {
  const echo = new Echo({
    broadcaster: 'pusher',
    Pusher,
    key: MAIN.key,
    ...pusherOptions(MAIN, {}, port),
    authEndpoint: authUrl,
    auth: { headers: { 'X-User': String(userId) } },
  });
  track(echo);
  // Every frame this client receives, for failure messages.
  echo.frames = [];
  echo.connector.pusher.connection.bind('message', (m) => echo.frames.push(m));
  await waitConnected(echo.connector.pusher);
  return echo;
}

// Resolves on the first callback invocation; for Echo's fluent listener API.
function deferred(timeout = WAIT_MS, what = 'callback', ...echos) {
  let resolve;
  let reject;
  const p = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  const timer = setTimeout(() => {
    const seen = echos.map((e) => ({ socket: e.socketId(), frames: e.frames }));
    reject(new Error(`timed out waiting for ${what}; frames seen: ${JSON.stringify(seen)}`));
  }, timeout);
  return {
    promise: p,
    fn: (value) => {
      clearTimeout(timer);
      resolve(value);
    },
  };
}

// Echo's subscribed() only fires for a subscription_succeeded that arrives after it is
// bound, so a channel that is already subscribed resolves at once.
function subscribedP(channel, what) {
  if (channel.subscription?.subscribed) return Promise.resolve();
  const d = deferred(WAIT_MS, `${what} subscription`);
  channel.subscribed(d.fn);
  channel.error((e) => d.fn(Promise.reject(new Error(`subscription error ${JSON.stringify(e)}`))));
  return d.promise;
}

test('Echo.channel().listen() receives a namespaced Laravel event', async () => {
  const echo = await echoFor(1, { port: PORT_B });
  const name = uniq('orders');
  const d = deferred(WAIT_MS, 'OrderShipped');
  const channel = echo.channel(name).listen('OrderShipped', d.fn);
  await subscribedP(channel, name);
  await sdk.trigger(name, 'App\\Events\\OrderShipped', { order: { id: 7 } });
  assert.deepEqual(await d.promise, { order: { id: 7 } });
});

test('Echo listen() with a leading dot uses the raw event name', async () => {
  const echo = await echoFor(1, { port: PORT_B });
  const name = uniq('raw');
  const d = deferred(WAIT_MS, '.status-updated');
  const channel = echo.channel(name).listen('.status-updated', d.fn);
  await subscribedP(channel, name);
  await sdk.trigger(name, 'status-updated', { status: 'ok' });
  assert.deepEqual(await d.promise, { status: 'ok' });
});

test('Echo.private() authorizes through the auth endpoint and receives events', async () => {
  const echo = await echoFor(1, { port: PORT_B });
  const base = uniq('user');
  const d = deferred(WAIT_MS, 'private event');
  const channel = echo.private(base).listen('.notify', d.fn);
  await subscribedP(channel, `private-${base}`);
  assert.ok(authCalls.some((c) => c.channel === `private-${base}` && c.socketId === echo.socketId()));
  await sdk.trigger(`private-${base}`, 'notify', { n: 1 });
  assert.deepEqual(await d.promise, { n: 1 });
});

test('Echo.private() refused by the auth endpoint reports the error', async () => {
  const echo = await echoFor(0);
  const d = deferred(WAIT_MS, 'error callback');
  echo.private(uniq('locked')).error(d.fn);
  const err = await d.promise;
  assert.equal(err.status, 403);
  assert.equal(echo.connectionStatus(), 'connected');
});

test('Echo.join(): here, joining and leaving', async () => {
  const base = uniq('room');
  const taylor = await echoFor(1);
  const here1 = deferred(WAIT_MS, 'here (taylor)');
  const joining = deferred(WAIT_MS, 'joining');
  const leaving = deferred(WAIT_MS, 'leaving');
  taylor.join(base).here(here1.fn).joining(joining.fn).leaving(leaving.fn);
  assert.deepEqual(await here1.promise, [USERS[1]]);

  const jess = await echoFor(2, { port: PORT_B });
  const here2 = deferred(WAIT_MS, 'here (jess)');
  jess.join(base).here(here2.fn);
  const members = await here2.promise;
  assert.deepEqual(
    members.sort((a, b) => a.id - b.id),
    [USERS[1], USERS[2]],
  );
  assert.deepEqual(await joining.promise, USERS[2]);

  jess.leave(base);
  assert.deepEqual(await leaving.promise, USERS[2]);
});

test('Echo whisper / listenForWhisper on a private channel', { skip: needClientEvents }, async () => {
  const base = uniq('chat');
  const a = await echoFor(1);
  const b = await echoFor(2, { port: PORT_B });
  const heard = deferred(WAIT_MS, 'whisper', a, b);
  const echoed = [];
  const chA = a.private(base).listenForWhisper('typing', (e) => echoed.push(e));
  const chB = b.private(base).listenForWhisper('typing', heard.fn);
  await subscribedP(chA, 'a');
  await subscribedP(chB, 'b');
  chA.whisper('typing', { name: 'Taylor' });
  assert.deepEqual(await heard.promise, { name: 'Taylor' });
  // The sender never hears itself: a later whisper from b reaches a, with nothing before it.
  const back = deferred(WAIT_MS, 'whisper back');
  chA.listenForWhisper('reply', back.fn);
  chB.whisper('reply', { ok: true });
  assert.deepEqual(await back.promise, { ok: true });
  assert.deepEqual(echoed, []);
});

test('Echo whisper on a presence channel', { skip: needClientEvents }, async () => {
  const base = uniq('party');
  const a = await echoFor(1);
  const b = await echoFor(2, { port: PORT_B });
  const hereA = deferred(WAIT_MS, 'here a');
  const hereB = deferred(WAIT_MS, 'here b');
  const chA = a.join(base).here(hereA.fn);
  const heard = deferred(WAIT_MS, 'presence whisper');
  b.join(base).here(hereB.fn).listenForWhisper('wave', heard.fn);
  await hereA.promise;
  await hereB.promise;
  chA.whisper('wave', { from: 'Taylor' });
  assert.deepEqual(await heard.promise, { from: 'Taylor' });
});

test('broadcast toOthers: the X-Socket-ID connection is excluded', async () => {
  const name = uniq('others');
  // Both on node B: the exclusion is applied where the excluded socket is.
  const me = await echoFor(1, { port: PORT_B });
  const other = await echoFor(2, { port: PORT_B });
  const mine = [];
  const theirs = deferred(WAIT_MS, 'event on the other client', me, other);
  const chMe = me.channel(name).listen('.update', (e) => mine.push(e));
  const chOther = other.channel(name).listen('.update', theirs.fn);
  await subscribedP(chMe, 'me');
  await subscribedP(chOther, 'other');
  await sdk.trigger(name, 'update', { v: 1 }, { socket_id: me.socketId() });
  assert.deepEqual(await theirs.promise, { v: 1 });
  const control = deferred(WAIT_MS, 'control');
  chMe.listen('.control', control.fn);
  await sdk.trigger(name, 'control', {});
  await control.promise;
  assert.deepEqual(mine, []);
});

test('Echo.leaveChannel() stops delivery', async () => {
  const name = uniq('leave');
  const echo = await echoFor(1, { port: PORT_B });
  const got = [];
  const ch = echo.channel(name).listen('.tick', (e) => got.push(e));
  await subscribedP(ch, name);
  await sdk.trigger(name, 'tick', { n: 1 });
  const deadline = Date.now() + WAIT_MS;
  while (got.length < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.equal(got.length, 1);
  echo.leaveChannel(name);
  // Once the server has processed the unsubscribe, the channel is vacated.
  let occupied = true;
  const until = Date.now() + WAIT_MS;
  while (occupied && Date.now() < until) {
    const res = await sdk.get({ path: `/channels/${name}` });
    occupied = (await res.json()).occupied;
    if (occupied) await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(occupied, false);
});
