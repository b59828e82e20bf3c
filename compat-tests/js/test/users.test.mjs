// User authentication (PUSHER-SPEC 1.4 signin / server-to-user / watchlist rows,
// 1.5 code 4200, 2.2 terminate_connections, 3.4): pusher-js `signin()` with a
// customHandler backed by the Node SDK's authenticateUser, the SDK's
// sendToUser and terminateUserConnections, and raw frames for exact shapes.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { MAIN, PORT, PORT_B, uniq, WAIT_MS, QUIET_MS, sleep } from '../lib/env.mjs';
import { RawClient } from '../lib/raw.mjs';
import { serverSdk, hmac } from '../lib/http.mjs';
import { makeClient, waitConnected } from '../lib/client.mjs';
import { closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const sdk = serverSdk(MAIN);

// The SDK talks to node A. A client that receives what it sends (or a watcher of other
// users) is on node B (`B`; node A outside cluster mode).
const B = { port: PORT_B };

// A user id nobody else uses (user ids are app-wide, like channel names).
const uid = (name) => uniq(`user-${name}`);

// A pusher-js client whose user authentication goes through the Node SDK, as an
// app's user-auth endpoint would. `auths` records every {auth, user_data} handed out.
function userClient(userData, { port = PORT } = {}) {
  const auths = [];
  const client = makeClient(MAIN, {
    port,
    extra: {
      userAuthentication: {
        customHandler: ({ socketId }, callback) => {
          try {
            const auth = sdk.authenticateUser(socketId, userData);
            auths.push(auth);
            callback(null, auth);
          } catch (e) {
            callback(e, null);
          }
        },
      },
    },
  });
  client.auths = auths;
  return client;
}

// Resolves once pusher-js has signed in and its #server-to-user- channel is
// subscribed (only then are sendToUser events routed to pusher.user).
function waitSignedIn(client, timeout = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const ready = () => client.user.serverToUserChannel && client.user.serverToUserChannel.subscribed;
    if (ready()) return resolve(client.user.user_data);
    const errors = [];
    const onError = (e) => errors.push(e);
    const onMessage = () => {
      if (!ready()) return;
      done();
      resolve(client.user.user_data);
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`not signed in after ${timeout} ms (state ${client.connection.state}); errors: ${JSON.stringify(errors)}`));
    }, timeout);
    const done = () => {
      clearTimeout(timer);
      client.connection.unbind('message', onMessage);
      client.connection.unbind('error', onError);
    };
    client.connection.bind('message', onMessage);
    client.connection.bind('error', onError);
  });
}

async function signedIn(userData, opts = {}) {
  const client = userClient(userData, opts);
  await waitConnected(client);
  client.signin();
  await waitSignedIn(client);
  return client;
}

// Raw signin: sends pusher:signin signed by the Node SDK and returns the reply.
async function rawSignin(userData, opts = {}) {
  const c = await RawClient.open(MAIN, opts);
  const { auth, user_data } = sdk.authenticateUser(c.socketId, userData);
  c.send({ event: 'pusher:signin', data: { auth, user_data } });
  const reply = await c.waitFor(
    (f) => f.event === 'pusher:signin_success' || f.event === 'pusher:error',
    WAIT_MS,
    'signin reply',
  );
  assert.equal(reply.event, 'pusher:signin_success', `signin refused: ${JSON.stringify(reply)}`);
  return { c, userData: user_data, reply };
}

// Subscribes a raw signed-in client to its own server-to-user channel (what pusher-js does).
async function rawServerToUser(c, id) {
  c.subscribeFrame(`#server-to-user-${id}`, '');
  const f = await c.waitFor(
    (fr) => fr.channel === `#server-to-user-${id}` && fr.event !== 'pusher_internal:subscription_count',
    WAIT_MS,
    'server-to-user subscription result',
  );
  assert.equal(f.event, 'pusher_internal:subscription_succeeded', JSON.stringify(f));
}

// Waits for the next `event` on pusher.user (or the watchlist) matching pred.
function next(emitter, event, pred = () => true, timeout = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.unbind(event, handler);
      reject(new Error(`timed out after ${timeout} ms waiting for ${event}`));
    }, timeout);
    const handler = (data) => {
      if (!pred(data)) return;
      clearTimeout(timer);
      emitter.unbind(event, handler);
      resolve(data);
    };
    emitter.bind(event, handler);
  });
}

// ---- signin ----

test('raw signin: pusher:signin_success carries exactly the signed user_data (data is a JSON string)', async () => {
  const id = uid('raw');
  const userData = { id, user_info: { name: 'Raw', tags: ['a', 'b'] }, watchlist: [] };
  const { reply, userData: signed } = await rawSignin(userData);
  assert.equal(signed, JSON.stringify(userData));
  assert.deepEqual(reply, { event: 'pusher:signin_success', data: JSON.stringify({ user_data: signed }) });
  assert.deepEqual(Object.keys(reply).sort(), ['data', 'event']);
});

test('raw signin: user_data is echoed byte for byte (spaces kept) and verified as sent', async () => {
  const c = await RawClient.open(MAIN);
  const userData = `{"id": "${uid('spaced')}", "user_info": {"k": "v"}}`;
  const auth = `${MAIN.key}:${hmac(MAIN.secret, `${c.socketId}::user::${userData}`)}`;
  c.send({ event: 'pusher:signin', data: { auth, user_data: userData } });
  const reply = await c.waitEvent('pusher:signin_success');
  assert.equal(JSON.parse(reply.data).user_data, userData);
});

test('raw signin with a signature over other user_data is refused with pusher:error', async () => {
  const c = await RawClient.open(MAIN);
  const signed = JSON.stringify({ id: uid('alice') });
  const sent = JSON.stringify({ id: uid('mallory') });
  const auth = `${MAIN.key}:${hmac(MAIN.secret, `${c.socketId}::user::${signed}`)}`;
  c.send({ event: 'pusher:signin', data: { auth, user_data: sent } });
  const err = await c.waitFor(
    (f) => f.event === 'pusher:error' || f.event === 'pusher:signin_success',
    WAIT_MS,
    'signin reply',
  );
  assert.equal(err.event, 'pusher:error', JSON.stringify(err));
  // The connection stays usable.
  await c.ping();
});

test('pusher-js signin(): user_data is what authenticateUser signed', async () => {
  const id = uid('pjs');
  const userData = { id, user_info: { name: 'PJS' } };
  const client = userClient(userData);
  const frames = [];
  client.connection.bind('message', (ev) => {
    if (ev.event === 'pusher:signin_success') frames.push(ev);
  });
  await waitConnected(client);
  client.signin();
  const user = await waitSignedIn(client);
  assert.deepEqual(user, userData);
  assert.equal(client.auths.length, 1);
  assert.equal(frames.length, 1);
  assert.deepEqual(frames[0].data, { user_data: client.auths[0].user_data });
  assert.equal(client.user.serverToUserChannel.name, `#server-to-user-${id}`);
});

// ---- server to user ----

test('sendToUser reaches pusher.user.bind of that user only', async () => {
  const aliceId = uid('alice');
  const bobId = uid('bob');
  const alice = await signedIn({ id: aliceId }, B);
  const bob = await signedIn({ id: bobId });
  const bobGot = [];
  bob.user.bind('notice', (d) => bobGot.push(d));

  const got = next(alice.user, 'notice');
  const res = await sdk.sendToUser(aliceId, 'notice', { text: 'hi alice' });
  assert.equal(res.status, 200);
  assert.deepEqual(await got, { text: 'hi alice' });

  // Positive control for bob: his own event arrives, alice's never did.
  const bobsOwn = next(bob.user, 'notice');
  await sdk.sendToUser(bobId, 'notice', { text: 'hi bob' });
  assert.deepEqual(await bobsOwn, { text: 'hi bob' });
  assert.deepEqual(bobGot, [{ text: 'hi bob' }]);
});

test('sendToUser reaches every tab of the user', async () => {
  const id = uid('tabs');
  const tab1 = await signedIn({ id });
  const tab2 = await signedIn({ id }, B);
  assert.notEqual(tab1.connection.socket_id, tab2.connection.socket_id);
  const got1 = next(tab1.user, 'both');
  const got2 = next(tab2.user, 'both');
  await sdk.sendToUser(id, 'both', 'plain text');
  assert.equal(await got1, 'plain text');
  assert.equal(await got2, 'plain text');
});

test('raw: a server-to-user event is an ordinary channel frame on #server-to-user-<id>', async () => {
  const id = uid('rawframe');
  const { c } = await rawSignin({ id }, B);
  await rawServerToUser(c, id);
  await sdk.sendToUser(id, 'frame-check', { n: 1 });
  assert.deepEqual(await c.waitEvent('frame-check'), {
    event: 'frame-check',
    channel: `#server-to-user-${id}`,
    data: '{"n":1}',
  });
});

test("a raw client cannot subscribe to another user's #server-to-user- channel", async () => {
  const aliceId = uid('alice');
  const alice = await signedIn({ id: aliceId }, B);
  const channel = `#server-to-user-${aliceId}`;

  const { c: mallory } = await rawSignin({ id: uid('mallory') }, B);
  const anonymous = await RawClient.open(MAIN);
  for (const c of [mallory, anonymous]) {
    c.subscribeFrame(channel, '');
    const refused = await c.waitFor(
      (f) =>
        f.channel === channel &&
        (f.event === 'pusher:subscription_error' || f.event === 'pusher_internal:subscription_succeeded'),
      WAIT_MS,
      `subscription result for ${channel}`,
    );
    assert.equal(refused.event, 'pusher:subscription_error', JSON.stringify(refused));
    await c.ping();
  }

  // Positive control: alice gets the event, the refused sockets do not.
  const got = next(alice.user, 'private-note');
  await sdk.sendToUser(aliceId, 'private-note', 'for alice');
  assert.equal(await got, 'for alice');
  for (const c of [mallory, anonymous]) {
    await c.expectNone((f) => f.event === 'private-note', undefined, 'server-to-user event leaked');
  }
});

// ---- watchlist ----

test('watchlist: initial online/offline state, then online and offline as a watched user comes and goes', async () => {
  const watcherId = uid('watcher');
  const bobId = uid('bob');
  const carolId = uid('carol');
  const carol = await signedIn({ id: carolId });

  const watcher = userClient({ id: watcherId, watchlist: [bobId, carolId] }, B);
  const events = [];
  watcher.user.watchlist.bind('online', (e) => events.push(e));
  watcher.user.watchlist.bind('offline', (e) => events.push(e));
  const raw = [];
  watcher.connection.bind('message', (ev) => {
    if (ev.event === 'pusher_internal:watchlist_events') raw.push(ev);
  });
  const initialOffline = next(watcher.user.watchlist, 'offline');
  await waitConnected(watcher);
  watcher.signin();
  await waitSignedIn(watcher);
  await initialOffline;
  // One frame with the initial state: carol online, bob offline.
  assert.equal(raw.length, 1);
  assert.deepEqual(raw[0].data, {
    events: [
      { name: 'online', user_ids: [carolId] },
      { name: 'offline', user_ids: [bobId] },
    ],
  });
  assert.deepEqual(events, [
    { name: 'online', user_ids: [carolId] },
    { name: 'offline', user_ids: [bobId] },
  ]);

  // Bob signs in: online.
  const online = next(watcher.user.watchlist, 'online');
  const bob = await signedIn({ id: bobId });
  assert.deepEqual(await online, { name: 'online', user_ids: [bobId] });

  // Bob disconnects: offline.
  const offline = next(watcher.user.watchlist, 'offline');
  bob.disconnect();
  assert.deepEqual(await offline, { name: 'offline', user_ids: [bobId] });

  // Carol disconnects too.
  const carolOffline = next(watcher.user.watchlist, 'offline');
  carol.disconnect();
  assert.deepEqual(await carolOffline, { name: 'offline', user_ids: [carolId] });
  assert.deepEqual(events.slice(2), [
    { name: 'online', user_ids: [bobId] },
    { name: 'offline', user_ids: [bobId] },
    { name: 'offline', user_ids: [carolId] },
  ]);
});

test('watchlist: a user is offline only when the last of its connections closes', async () => {
  const watcherId = uid('watcher');
  const bobId = uid('bob');
  const watcher = userClient({ id: watcherId, watchlist: [bobId] }, B);
  const events = [];
  watcher.user.watchlist.bind('online', (e) => events.push(e));
  watcher.user.watchlist.bind('offline', (e) => events.push(e));
  const initial = next(watcher.user.watchlist, 'offline');
  await waitConnected(watcher);
  watcher.signin();
  await waitSignedIn(watcher);
  await initial;

  const online = next(watcher.user.watchlist, 'online');
  const { c: tab1 } = await rawSignin({ id: bobId });
  await online;
  const { c: tab2 } = await rawSignin({ id: bobId }, B);

  // Closing one tab: bob stays online. Control: a server-to-user event sent
  // after the close was processed reaches the watcher first.
  tab1.close();
  await tab1.waitClose();
  const control = next(watcher.user, 'control');
  await sdk.sendToUser(watcherId, 'control', 'x');
  await control;
  await sleep(QUIET_MS);
  assert.deepEqual(events, [
    { name: 'offline', user_ids: [bobId] },
    { name: 'online', user_ids: [bobId] },
  ]);

  const offline = next(watcher.user.watchlist, 'offline');
  tab2.close();
  assert.deepEqual(await offline, { name: 'offline', user_ids: [bobId] });
  assert.equal(events.length, 3);
});

// ---- terminate_connections ----

test('terminateUserConnections: the user\'s sockets get pusher:error 4200 and close 4200; pusher-js reconnects; others stay', async () => {
  const victimId = uid('victim');
  const otherId = uid('bystander');

  // The pusher-js victim and the bystander on node B, the raw victim on node A.
  const victim = await signedIn({ id: victimId }, B);
  const bystander = await signedIn({ id: otherId }, B);
  const { c: victimRaw } = await rawSignin({ id: victimId });
  // A connection that is only a presence member with the same id, never signed in.
  const presenceOnly = await RawClient.openB(MAIN);
  const pch = uniq('presence-terminate');
  const channelData = JSON.stringify({ user_id: victimId });
  await presenceOnly.subscribe(pch, sdk.authorizeChannel(presenceOnly.socketId, pch, { user_id: victimId }).auth, channelData);

  const victimSocket = victim.connection.socket_id;
  const bystanderSocket = bystander.connection.socket_id;
  const victimStates = [];
  victim.connection.bind('state_change', ({ current }) => victimStates.push(current));
  const bystanderStates = [];
  bystander.connection.bind('state_change', ({ current }) => bystanderStates.push(current));
  const victimErrors = [];
  victim.connection.bind('error', (e) => victimErrors.push(e));
  const left = next(victim.connection, 'state_change', ({ previous }) => previous === 'connected');

  const res = await sdk.terminateUserConnections(victimId);
  assert.equal(res.status, 200);

  // Raw: pusher:error with code 4200, then the close with 4200.
  const err = await victimRaw.waitEvent('pusher:error');
  assert.equal(err.data.code, 4200);
  assert.equal(typeof err.data.message, 'string');
  const close = await victimRaw.waitClose();
  assert.equal(close.code, 4200);

  // pusher-js: leaves 'connected', reports the 4200 error, reconnects with a new
  // socket and signs in again (the app still authenticates the user).
  const { current } = await left;
  assert.equal(current, 'connecting');
  await waitConnected(victim);
  assert.notEqual(victim.connection.socket_id, victimSocket);
  const pusherError = victimErrors.find((e) => e.type === 'PusherError');
  assert.ok(pusherError, `no PusherError seen: ${JSON.stringify(victimErrors)}`);
  assert.equal(pusherError.data.code, 4200);
  await waitSignedIn(victim);
  assert.equal(victim.auths.length, 2);
  const again = next(victim.user, 'after');
  await sdk.sendToUser(victimId, 'after', 'back');
  assert.equal(await again, 'back');

  // The other user was not touched.
  assert.equal(bystander.connection.state, 'connected');
  assert.equal(bystander.connection.socket_id, bystanderSocket);
  assert.deepEqual(bystanderStates, []);
  const still = next(bystander.user, 'still');
  await sdk.sendToUser(otherId, 'still', 'here');
  assert.equal(await still, 'here');
  // Presence membership alone is not a signin: that socket stays open.
  await presenceOnly.ping();
  assert.ok(presenceOnly.isOpen);
  assert.deepEqual(victimStates.slice(0, 2), ['connecting', 'connected']);
});

test('terminateUserConnections for a user with no connections answers {} and touches nobody', async () => {
  const other = await signedIn({ id: uid('someone') }, B);
  const socket = other.connection.socket_id;
  const res = await sdk.terminateUserConnections(uid('nobody'));
  assert.equal(res.status, 200);
  assert.deepEqual(JSON.parse(await res.text()), {});
  const still = next(other.user, 'ok');
  await sdk.sendToUser(other.user.user_data.id, 'ok', 'x');
  await still;
  assert.equal(other.connection.socket_id, socket);
});
