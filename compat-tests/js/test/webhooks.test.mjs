// Webhooks (PUSHER-SPEC 4): a real HTTP receiver inside the test gets the POSTs
// of fixture app 6 and checks every one with the Node SDK's own validator
// (pusher.webhook({headers, rawBody}) → isValid(), getEvents(), getTime()).
//
// App 6 has two webhooks: /all (every type) and /vacated (event_types =
// ["channel_vacated"]). pushi batches events per webhook for at most 250 ms or
// 20 events, and holds channel_vacated / member_removed back for 3 s.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { WEBHOOK_APP, WEBHOOK_PORT, uniq, needWebhooks, WAIT_MS, QUIET_MS, sleep } from '../lib/env.mjs';
import { RawClient } from '../lib/raw.mjs';
import { serverSdk } from '../lib/http.mjs';
import { connectClient, connectClientB, subscribed, once } from '../lib/client.mjs';
import { closeAll } from '../lib/cleanup.mjs';

const skip = needWebhooks;
const sdk = serverSdk(WEBHOOK_APP);
const wrongSecret = serverSdk({ ...WEBHOOK_APP, secret: 'not-the-secret' });

// pushi's delay before channel_vacated / member_removed (Pusher: "up to 3 s").
const REMOVAL_DELAY_MS = 3000;
// Wait for something that comes after the removal delay.
const REMOVAL_WAIT_MS = REMOVAL_DELAY_MS + WAIT_MS;

// ---- the receiver ----

const requests = []; // every request, in arrival order
const failFirst = new Set(); // channels whose first delivery on /all is answered 500
const waiters = new Set();
let server = null;

function notify() {
  for (const w of [...waiters]) w();
}

function startReceiver() {
  server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const rawBody = Buffer.concat(chunks).toString('utf8');
      const webhook = sdk.webhook({ headers: req.headers, rawBody });
      const valid = webhook.isValid();
      const entry = {
        method: req.method,
        path: req.url,
        headers: req.headers,
        rawBody,
        at: Date.now(),
        valid,
        validWithWrongSecret: wrongSecret.webhook({ headers: req.headers, rawBody }).isValid(),
        events: valid ? webhook.getEvents() : [],
        time: valid ? webhook.getTime() : null,
        status: 200,
      };
      if (req.url === '/all') {
        for (const ch of failFirst) {
          if (entry.events.some((e) => e.channel === ch)) {
            failFirst.delete(ch);
            entry.status = 500;
          }
        }
      }
      requests.push(entry);
      res.writeHead(entry.status, { 'content-type': 'application/json' });
      res.end(entry.status === 200 ? '{}' : '{"error":"try again"}');
      notify();
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(WEBHOOK_PORT, '127.0.0.1', resolve);
  });
}

// Resolves once check() returns a value other than undefined, re-checked on every request.
function until(check, timeout, what) {
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const v = check();
      if (v === undefined) return false;
      done();
      resolve(v);
      return true;
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`timed out after ${timeout} ms waiting for ${what}; received: ${JSON.stringify(requests.map((r) => [r.path, r.status, r.events]))}`));
    }, timeout);
    const done = () => {
      clearTimeout(timer);
      waiters.delete(attempt);
    };
    if (!attempt()) waiters.add(attempt);
  });
}

// The events about `channel` delivered successfully (2xx) to `path`, in order,
// each with the request it came in.
function delivered(path, channel) {
  const out = [];
  for (const r of requests) {
    if (r.path !== path || r.status !== 200) continue;
    for (const e of r.events) if (e.channel === channel) out.push({ event: e, request: r });
  }
  return out;
}

// Waits until `path` has delivered at least n events about `channel`; returns the first n.
async function events(path, channel, n, timeout = WAIT_MS) {
  const got = await until(
    () => {
      const d = delivered(path, channel);
      return d.length >= n ? d.slice(0, n) : undefined;
    },
    timeout,
    `${n} webhook events about ${channel} on ${path}`,
  );
  for (const { request } of got) assertValidRequest(request);
  return got.map((g) => g.event);
}

// Every request must be a signed JSON POST that the SDK accepts, with a fresh time_ms.
function assertValidRequest(r) {
  assert.equal(r.method, 'POST');
  assert.equal(r.headers['content-type'], 'application/json');
  assert.equal(r.headers['x-pusher-key'], WEBHOOK_APP.key);
  assert.match(r.headers['x-pusher-signature'] || '', /^[0-9a-f]{64}$/);
  assert.equal(r.valid, true, `the SDK rejected ${r.rawBody}`);
  assert.equal(r.validWithWrongSecret, false, 'a webhook must not validate with another secret');
  assert.ok(r.time instanceof Date);
  assert.ok(Math.abs(r.at - r.time.getTime()) < 5000, `time_ms ${r.time.getTime()} vs received ${r.at}`);
  const body = JSON.parse(r.rawBody);
  assert.deepEqual(Object.keys(body).sort(), ['events', 'time_ms']);
  assert.ok(body.events.length >= 1 && body.events.length <= 20, `${body.events.length} events in one request`);
}

// Asserts nothing more about `channel` reaches `path` within QUIET_MS (after a positive control).
async function expectNoMore(path, channel, count) {
  await sleep(QUIET_MS);
  assert.deepEqual(
    delivered(path, channel).slice(count).map((d) => d.event),
    [],
    `unexpected webhook events about ${channel} on ${path}`,
  );
}

const names = (evs) => evs.map((e) => e.name);

before(async () => {
  if (!skip) await startReceiver();
});

afterEach(closeAll);

after(async () => {
  if (!server) return;
  await closeAll();
  // Let every channel these tests occupied be reported vacated on both webhooks,
  // so no delivery is left retrying against a closed port (bounded; not an assertion).
  const occupied = () =>
    new Set(requests.flatMap((r) => r.events.filter((e) => e.name === 'channel_occupied').map((e) => e.channel)));
  const vacated = (path) =>
    new Set(
      requests
        .filter((r) => r.status === 200 && r.path === path)
        .flatMap((r) => r.events.filter((e) => e.name === 'channel_vacated').map((e) => e.channel)),
    );
  await until(
    () => {
      const all = vacated('/all');
      const filtered = vacated('/vacated');
      return [...occupied()].every((c) => all.has(c) && filtered.has(c)) ? true : undefined;
    },
    REMOVAL_WAIT_MS,
    'channel_vacated for every occupied channel',
  ).catch(() => {});
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

// ---- tests ----

test('channel_occupied at once, channel_vacated about 3 s after the last subscriber leaves', { skip }, async () => {
  const name = uniq('wh-occupy');
  const client = await connectClient(WEBHOOK_APP);
  await subscribed(client, name);
  const first = await events('/all', name, 2);
  assert.deepEqual(first, [
    { name: 'channel_occupied', channel: name },
    { name: 'subscription_count', channel: name, subscription_count: 1 },
  ]);

  // A second subscriber neither occupies again nor (when it leaves) vacates.
  const second = await connectClient(WEBHOOK_APP);
  await subscribed(second, name);
  second.disconnect();
  const counts = await events('/all', name, 4);
  assert.deepEqual(counts.slice(2), [
    { name: 'subscription_count', channel: name, subscription_count: 2 },
    { name: 'subscription_count', channel: name, subscription_count: 1 },
  ]);

  const left = Date.now();
  client.disconnect();
  const all = await until(
    () => {
      const d = delivered('/all', name).map((x) => x.event);
      return d.some((e) => e.name === 'channel_vacated') ? d : undefined;
    },
    REMOVAL_WAIT_MS,
    `channel_vacated for ${name}`,
  );
  const vacatedAt = delivered('/all', name).find((x) => x.event.name === 'channel_vacated').request.at;
  const delay = vacatedAt - left;
  assert.ok(delay >= REMOVAL_DELAY_MS - 200 && delay < REMOVAL_DELAY_MS + 2000, `channel_vacated after ${delay} ms`);
  for (const { request } of delivered('/all', name)) assertValidRequest(request);
  assert.deepEqual(
    all.filter((e) => e.name !== 'subscription_count'),
    [
      { name: 'channel_occupied', channel: name },
      { name: 'channel_vacated', channel: name },
    ],
  );

  // The event_types-filtered webhook got channel_vacated only.
  assert.deepEqual(await events('/vacated', name, 1), [{ name: 'channel_vacated', channel: name }]);
  await expectNoMore('/vacated', name, 1);
});

test('a quick re-subscribe within the delay sends neither channel_vacated nor a second channel_occupied', { skip }, async () => {
  const name = uniq('wh-flap');
  const a = await connectClient(WEBHOOK_APP);
  await subscribed(a, name);
  await events('/all', name, 2);
  a.unsubscribe(name);
  await events('/all', name, 3); // subscription_count 0
  await subscribed(a, name);
  await events('/all', name, 4); // subscription_count 1
  // Control: past the removal delay, a channel that really was left is reported vacated.
  const control = uniq('wh-flap-control');
  const b = await connectClient(WEBHOOK_APP);
  await subscribed(b, control);
  await events('/all', control, 2);
  b.unsubscribe(control);
  await events('/vacated', control, 1, REMOVAL_WAIT_MS);
  assert.deepEqual(names(delivered('/all', name).map((d) => d.event)), [
    'channel_occupied',
    'subscription_count',
    'subscription_count',
    'subscription_count',
  ]);
  assert.deepEqual(
    delivered('/all', name).map((d) => d.event.subscription_count).filter((n) => n !== undefined),
    [1, 0, 1],
  );
  assert.deepEqual(delivered('/vacated', name), []);
});

test('events of one burst are batched into few requests of at most 20 events', { skip }, async () => {
  const prefix = uniq('wh-burst');
  const channels = Array.from({ length: 15 }, (_, i) => `${prefix}-${i}`);
  const c = await RawClient.open(WEBHOOK_APP);
  for (const ch of channels) c.subscribeFrame(ch);
  const start = Date.now();
  for (const ch of channels) await events('/all', ch, 2);
  const reqs = new Set(channels.flatMap((ch) => delivered('/all', ch).map((d) => d.request)));
  for (const r of reqs) assertValidRequest(r);
  // 30 events: at least two requests (20 at most each), and batched (not one per event).
  assert.ok(reqs.size >= 2 && reqs.size <= 4, `${reqs.size} requests for 30 events`);
  assert.ok([...reqs].some((r) => r.events.length === 20), `sizes ${[...reqs].map((r) => r.events.length)}`);
  assert.ok(Math.max(...[...reqs].map((r) => r.at)) - start < 2000, 'burst not delivered within 2 s');
});

test('presence: member_added per user (user_id as a string), member_removed after the delay, by user not connection', { skip }, async () => {
  const name = uniq('presence-wh');
  const alice = await connectClient(WEBHOOK_APP, { presence: { user_id: 'alice', user_info: { n: 1 } } });
  await subscribed(alice, name);
  const joined = await events('/all', name, 2);
  assert.deepEqual(joined, [
    { name: 'channel_occupied', channel: name },
    { name: 'member_added', channel: name, user_id: 'alice' },
  ]);

  const bobTab1 = await connectClient(WEBHOOK_APP, { presence: { user_id: 7, user_info: {} } });
  await subscribed(bobTab1, name);
  assert.deepEqual((await events('/all', name, 3))[2], { name: 'member_added', channel: name, user_id: '7' });
  const bobTab2 = await connectClient(WEBHOOK_APP, { presence: { user_id: 7, user_info: {} } });
  const { channel: tab2 } = await subscribed(bobTab2, name);
  assert.equal(tab2.members.count, 2);

  // Closing one of bob's tabs: no member_removed, even after the delay.
  bobTab1.disconnect();
  // Closing the last: member_removed about 3 s later.
  await sleep(500);
  const left = Date.now();
  bobTab2.disconnect();
  const removed = await events('/all', name, 4, REMOVAL_WAIT_MS);
  assert.deepEqual(removed[3], { name: 'member_removed', channel: name, user_id: '7' });
  const at = delivered('/all', name)[3].request.at;
  assert.ok(at - left >= REMOVAL_DELAY_MS - 200, `member_removed after ${at - left} ms`);

  // The last member leaves: member_removed and channel_vacated.
  alice.disconnect();
  const end = await events('/all', name, 6, REMOVAL_WAIT_MS);
  assert.deepEqual(
    end.slice(4).sort((x, y) => (x.name < y.name ? -1 : 1)),
    [
      { name: 'channel_vacated', channel: name },
      { name: 'member_removed', channel: name, user_id: 'alice' },
    ],
  );
  // Presence channels get no subscription_count webhooks.
  assert.equal(delivered('/all', name).length, 6);
  await expectNoMore('/all', name, 6);
});

test('client_event: private without user_id, presence with the sender\'s user_id; data as sent (a string)', { skip }, async () => {
  const priv = uniq('private-wh-client');
  const pres = uniq('presence-wh-client');
  // The receiver is on node B (node A outside cluster mode).
  const sender = await connectClient(WEBHOOK_APP, { presence: { user_id: 'sender-1', user_info: {} } });
  const receiver = await connectClientB(WEBHOOK_APP, { presence: { user_id: 'receiver-1', user_info: {} } });
  const { channel: sPriv } = await subscribed(sender, priv);
  const { channel: sPres } = await subscribed(sender, pres);
  const { channel: rPriv } = await subscribed(receiver, priv);
  const { channel: rPres } = await subscribed(receiver, pres);
  const got1 = once(rPriv, 'client-obj');
  const got2 = once(rPres, 'client-str');
  assert.equal(sPriv.trigger('client-obj', { a: 1, b: [true, null] }), true);
  assert.equal(sPres.trigger('client-str', 'hello'), true);
  await got1;
  await got2;
  const socketId = sender.connection.socket_id;

  const privEvents = await until(
    () => {
      const d = delivered('/all', priv).map((x) => x.event).filter((e) => e.name === 'client_event');
      return d.length ? d : undefined;
    },
    WAIT_MS,
    `client_event on ${priv}`,
  );
  assert.deepEqual(privEvents, [
    { name: 'client_event', channel: priv, event: 'client-obj', data: '{"a":1,"b":[true,null]}', socket_id: socketId },
  ]);
  const presEvents = await until(
    () => {
      const d = delivered('/all', pres).map((x) => x.event).filter((e) => e.name === 'client_event');
      return d.length ? d : undefined;
    },
    WAIT_MS,
    `client_event on ${pres}`,
  );
  assert.deepEqual(presEvents, [
    { name: 'client_event', channel: pres, event: 'client-str', data: 'hello', socket_id: socketId, user_id: 'sender-1' },
  ]);
  for (const { request } of [...delivered('/all', priv), ...delivered('/all', pres)]) assertValidRequest(request);
});

test('cache_miss when a subscriber finds a cache channel empty, none once an event is cached', { skip }, async () => {
  const name = uniq('cache-wh');
  const a = await connectClient(WEBHOOK_APP);
  const ch = a.subscribe(name);
  const miss = once(ch, 'pusher:cache_miss');
  await subscribed(a, name);
  await miss;
  assert.deepEqual(await events('/all', name, 3), [
    { name: 'channel_occupied', channel: name },
    { name: 'subscription_count', channel: name, subscription_count: 1 },
    { name: 'cache_miss', channel: name },
  ]);

  await sdk.trigger(name, 'cached', { c: 1 });
  // The late subscriber is on node B (node A outside cluster mode).
  const b = await connectClientB(WEBHOOK_APP);
  const chB = b.subscribe(name);
  const replay = once(chB, 'cached');
  await subscribed(b, name);
  assert.deepEqual((await replay).data, { c: 1 });
  // Control: the subscription_count webhook of b's subscribe; no cache_miss with it.
  assert.deepEqual((await events('/all', name, 4))[3], { name: 'subscription_count', channel: name, subscription_count: 2 });
  await expectNoMore('/all', name, 4);
});

test('subscription_count webhooks follow subscribes and unsubscribes', { skip }, async () => {
  const name = uniq('wh-count');
  const a = await connectClient(WEBHOOK_APP);
  await subscribed(a, name);
  const b = await connectClient(WEBHOOK_APP);
  await subscribed(b, name);
  const c = await connectClient(WEBHOOK_APP);
  await subscribed(c, name);
  b.unsubscribe(name);
  await events('/all', name, 5);
  c.disconnect();
  assert.deepEqual(await events('/all', name, 6), [
    { name: 'channel_occupied', channel: name },
    { name: 'subscription_count', channel: name, subscription_count: 1 },
    { name: 'subscription_count', channel: name, subscription_count: 2 },
    { name: 'subscription_count', channel: name, subscription_count: 3 },
    { name: 'subscription_count', channel: name, subscription_count: 2 },
    { name: 'subscription_count', channel: name, subscription_count: 1 },
  ]);
  await expectNoMore('/all', name, 6);
});

test('a delivery answered with 500 is retried with the same events and a new time_ms', { skip }, async () => {
  const name = uniq('wh-retry');
  failFirst.add(name);
  const client = await connectClient(WEBHOOK_APP);
  await subscribed(client, name);
  const failed = await until(
    () => requests.find((r) => r.path === '/all' && r.status === 500 && r.events.some((e) => e.channel === name)),
    WAIT_MS,
    'the failed delivery',
  );
  const retry = await until(
    () => requests.find((r) => r.path === '/all' && r.status === 200 && r.events.some((e) => e.channel === name)),
    WAIT_MS,
    'the retried delivery',
  );
  assertValidRequest(failed);
  assertValidRequest(retry);
  assert.deepEqual(retry.events, failed.events);
  assert.deepEqual(
    retry.events.filter((e) => e.channel === name),
    [
      { name: 'channel_occupied', channel: name },
      { name: 'subscription_count', channel: name, subscription_count: 1 },
    ],
  );
  assert.ok(retry.time.getTime() > failed.time.getTime(), 'time_ms is set per attempt');
  // pushi backs off 1 s before the first retry (then 2 s, 4 s, ... for 5 minutes).
  assert.ok(retry.at - failed.at >= 900, `retried after ${retry.at - failed.at} ms`);
  // Exactly one failed and one successful copy.
  assert.equal(requests.filter((r) => r.path === '/all' && r.events.some((e) => e.channel === name)).length, 2);
});

test('the event_types-filtered webhook only ever received channel_vacated', { skip }, async () => {
  // Every channel these tests vacated so far was reported to /vacated as well.
  const vacatedAll = requests
    .filter((r) => r.path === '/all' && r.status === 200)
    .flatMap((r) => r.events.filter((e) => e.name === 'channel_vacated').map((e) => e.channel));
  assert.ok(vacatedAll.length >= 2, `vacated channels seen: ${vacatedAll}`);
  await until(
    () => {
      const got = new Set(
        requests.filter((r) => r.path === '/vacated' && r.status === 200).flatMap((r) => r.events.map((e) => e.channel)),
      );
      return vacatedAll.every((c) => got.has(c)) ? true : undefined;
    },
    WAIT_MS,
    'the same channel_vacated events on /vacated',
  );
  const onVacated = requests.filter((r) => r.path === '/vacated');
  assert.ok(onVacated.length >= 1);
  for (const r of onVacated) {
    assertValidRequest(r);
    assert.deepEqual([...new Set(names(r.events))], ['channel_vacated']);
  }
  assert.deepEqual(
    requests.filter((r) => !['/all', '/vacated'].includes(r.path)).map((r) => r.path),
    [],
  );
});
