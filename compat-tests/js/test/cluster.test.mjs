// Cluster mode only (compat-tests/run --cluster): nodes A (PUSHI_PORT) and B (PUSHI_PORT_B)
// share one Redis; node C (PUSHI_NODE_C_PORT, cluster.node_timeout 3 s) is there to be
// killed. Outside cluster mode every test here is skipped.
//
// The tests run in file order, and compat-tests/run runs this file after every other suite:
// the crash test kills node C, and the outage test stops Redis (and starts it again the way
// run did, on the same port).
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { spawn } from 'node:child_process';
import {
  MAIN,
  HOST,
  PORT,
  PORT_B,
  NODE_TIMEOUT,
  COMMAND_TIMEOUT,
  NODE_C_PORT,
  NODE_C_PID,
  NODE_C_TIMEOUT,
  REDIS_PORT,
  REDIS_PID,
  REDIS_PIDFILE,
  REDIS_START,
  uniq,
  needCluster,
  sleep,
} from '../lib/env.mjs';
import { RawClient } from '../lib/raw.mjs';
import { serverSdk, jsonOf } from '../lib/http.mjs';
import { connectClient, connectClientB, subscribed, once } from '../lib/client.mjs';
import { closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const skip = needCluster;
const sdkA = serverSdk(MAIN);
const sdkB = serverSdk(MAIN, { port: PORT_B });
const nodes = [
  ['A', PORT],
  ['B', PORT_B],
];

// True while the process exists and is not a zombie awaiting its parent.
function isRunning(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

// The user ids GET /channels/{channel}/users lists, sorted.
async function users(sdk, channel) {
  const body = await jsonOf(await sdk.get({ path: `/channels/${channel}/users` }));
  return body.users.map((u) => u.id).sort();
}

// GET /ready on a node: {status, body} (status null when the request itself failed).
async function ready(port) {
  try {
    const res = await fetch(`http://${HOST}:${port}/ready`, { signal: AbortSignal.timeout(2000) });
    const text = await res.text();
    let body = null;
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
    return { status: res.status, body };
  } catch (e) {
    return { status: null, body: String(e) };
  }
}

// Polls GET /ready until it answers `status` (bounded); returns the last answer.
async function readyBecomes(port, status, timeout) {
  const deadline = Date.now() + timeout;
  let last;
  do {
    last = await ready(port);
    if (last.status === status) return last;
    await sleep(100);
  } while (Date.now() < deadline);
  return last;
}

// Whether something accepts TCP connections on the port.
function accepts(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.setTimeout(1000);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
    s.once('timeout', () => {
      s.destroy();
      resolve(false);
    });
  });
}

async function until(check, timeout, what) {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(50);
  }
  throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
}

// The Redis that runs now: the PID in its pidfile (a restart writes its own), else run's.
function redisPid() {
  let pid = REDIS_PID;
  try {
    const fromFile = Number(fs.readFileSync(REDIS_PIDFILE, 'utf8').trim());
    if (fromFile) pid = fromFile;
  } catch {
    // no pidfile yet
  }
  const comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  assert.equal(comm, 'redis-server', `PID ${pid} is not the cluster's redis-server`);
  return pid;
}

// Starts Redis again the way compat-tests/run did (same port, no persistence), detached
// from this process; run stops it by the PID it writes to its pidfile.
async function startRedis() {
  const child = spawn(REDIS_START, [], { detached: true, stdio: 'ignore' });
  child.unref();
  await until(() => accepts(REDIS_PORT), 10000, `Redis accepting connections on port ${REDIS_PORT} again`);
}

test('presence across nodes: members on A and B see each other; B hears member_removed when A\'s member disconnects', { skip }, async () => {
  const name = uniq('presence-cluster');
  const alice = await connectClient(MAIN, { presence: { user_id: 'alice', user_info: { node: 'A' } } });
  const { channel: onA } = await subscribed(alice, name);
  assert.equal(onA.members.count, 1);
  const added = once(onA, 'pusher:member_added');

  const bob = await connectClientB(MAIN, { presence: { user_id: 'bob', user_info: { node: 'B' } } });
  const { channel: onB, data: members } = await subscribed(bob, name);
  // Node B's member list has node A's member, with her user_info.
  assert.equal(members.count, 2);
  const seen = {};
  members.each((m) => (seen[m.id] = m.info));
  assert.deepEqual(seen, { alice: { node: 'A' }, bob: { node: 'B' } });
  // Node A announces node B's member.
  assert.deepEqual((await added).data, { id: 'bob', info: { node: 'B' } });
  assert.equal(onA.members.count, 2);
  // Both nodes' HTTP API list both members.
  assert.deepEqual(await users(sdkA, name), ['alice', 'bob']);
  assert.deepEqual(await users(sdkB, name), ['alice', 'bob']);

  const removed = once(onB, 'pusher:member_removed');
  alice.disconnect();
  assert.deepEqual((await removed).data, { id: 'alice', info: { node: 'A' } });
  assert.equal(onB.members.count, 1);
  assert.deepEqual(await users(sdkA, name), ['bob']);
  assert.deepEqual(await users(sdkB, name), ['bob']);
});

test(
  'crash: node C killed with SIGKILL is reaped; a pusher-js client on A gets member_removed, the users list drops the member',
  { skip: skip || (NODE_C_PORT && NODE_C_PID ? false : 'needs node C (PUSHI_NODE_C_PORT / PUSHI_NODE_C_PID, started by compat-tests/run --cluster)') },
  async () => {
    assert.ok(isRunning(NODE_C_PID), `node C (pid ${NODE_C_PID}) is not running`);
    const name = uniq('presence-crash');
    const watcher = await connectClient(MAIN, { presence: { user_id: 'watcher', user_info: {} } });
    const { channel } = await subscribed(watcher, name);
    const added = once(channel, 'pusher:member_added');
    // The member on node C: a raw socket, which does not try to reconnect once C is gone.
    const doomed = await RawClient.open(MAIN, { port: NODE_C_PORT });
    const auth = sdkA.authorizeChannel(doomed.socketId, name, { user_id: 'doomed', user_info: { node: 'C' } });
    await doomed.subscribe(name, auth.auth, auth.channel_data);
    assert.deepEqual((await added).data, { id: 'doomed', info: { node: 'C' } });
    assert.deepEqual(await users(sdkA, name), ['doomed', 'watcher']);

    // Node C's deadline passes NODE_C_TIMEOUT after its last heartbeat; nodes A and B reap
    // on their own heartbeat, every third of their node_timeout. Plus 2 s of margin.
    const bound = (NODE_C_TIMEOUT + NODE_TIMEOUT / 3) * 1000 + 2000;
    const removed = once(channel, 'pusher:member_removed', bound);
    const killedAt = Date.now();
    process.kill(NODE_C_PID, 'SIGKILL');
    await doomed.waitClose();
    const { data } = await removed;
    const took = Date.now() - killedAt;
    assert.deepEqual(data, { id: 'doomed', info: { node: 'C' } });
    assert.ok(took <= bound, `member_removed ${took} ms after the kill (bound ${bound} ms)`);
    assert.equal(channel.members.count, 1);
    assert.equal(watcher.connection.state, 'connected');
    assert.deepEqual(await users(sdkA, name), ['watcher']);
    assert.deepEqual(await users(sdkB, name), ['watcher']);
  },
);

test(
  'Redis outage: /ready answers 503 while Redis is down; once it is back both nodes are ready and a publish on A reaches the subscriber on B again',
  { skip: skip || (REDIS_PORT && REDIS_PIDFILE && REDIS_START ? false : 'needs PUSHI_REDIS_PORT / PUSHI_REDIS_PIDFILE / PUSHI_REDIS_START (set by compat-tests/run --cluster)') },
  async () => {
    const name = uniq('outage');
    const client = await connectClientB(MAIN);
    const { channel } = await subscribed(client, name);
    const socketId = client.connection.socket_id;
    const states = [];
    client.connection.bind('state_change', ({ current }) => states.push(current));
    const resubscribed = [];
    channel.bind('pusher:subscription_succeeded', () => resubscribed.push(Date.now()));
    // Control: the path works before the outage.
    const before = once(channel, 'before');
    await sdkA.trigger(name, 'before', { n: 0 });
    assert.deepEqual((await before).data, { n: 0 });
    for (const [node, port] of nodes) assert.equal((await ready(port)).status, 200, `node ${node} not ready before the outage`);

    const pid = redisPid();
    process.kill(pid, 'SIGKILL');
    try {
      await until(async () => !(await accepts(REDIS_PORT)), 5000, 'Redis to stop accepting connections');
      // A node notices when its pub/sub connection drops, at the latest when its next
      // heartbeat fails (every third of node_timeout, command_timeout each).
      const bound = (NODE_TIMEOUT / 3 + 2 * COMMAND_TIMEOUT) * 1000 + 2000;
      for (const [node, port] of nodes) {
        const r = await readyBecomes(port, 503, bound);
        assert.equal(r.status, 503, `node ${node} GET /ready while Redis is down: ${JSON.stringify(r)}`);
        assert.equal(r.body.ready, false);
        assert.equal(r.body.cluster.state, 'disconnected', JSON.stringify(r.body));
      }
      // Still down: not ready on A after the wait on B.
      assert.equal((await ready(PORT)).status, 503);
    } finally {
      await startRedis();
    }

    for (const [node, port] of nodes) {
      const r = await readyBecomes(port, 200, 20000);
      assert.equal(r.status, 200, `node ${node} GET /ready after Redis came back: ${JSON.stringify(r)}`);
      assert.equal(r.body.cluster.state, 'ok');
    }

    // The subscriber from before the outage, without resubscribing, gets node A's publish.
    const after = once(channel, 'after');
    const res = await sdkA.trigger(name, 'after', { n: 1 });
    assert.equal(res.status, 200);
    assert.deepEqual((await after).data, { n: 1 });
    assert.equal(client.connection.state, 'connected');
    assert.equal(client.connection.socket_id, socketId);
    assert.deepEqual(states, [], 'the pusher-js client on node B reconnected');
    assert.deepEqual(resubscribed, [], 'the pusher-js client on node B resubscribed');
  },
);
