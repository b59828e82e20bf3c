// Connection parameters and fixture apps, read from the environment that
// compat-tests/run exports.
import crypto from 'node:crypto';

function required(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set; run the suite through compat-tests/run`);
  return v;
}

export const HOST = required('PUSHI_HOST');
export const PORT = Number(required('PUSHI_PORT'));

// Cluster mode (compat-tests/run --cluster): PUSHI_PORT is node A, PUSHI_PORT_B a second
// node of the same cluster (same apps, one Redis). Tests open their receiving client on
// node B, so that what they check crosses nodes; without PUSHI_PORT_B (default and
// --target mode) node B is node A and every test runs as before.
export const PORT_B = process.env.PUSHI_PORT_B ? Number(process.env.PUSHI_PORT_B) : PORT;
export const CLUSTER = process.env.PUSHI_CLUSTER === '1';
// cluster.node_timeout of nodes A and B (they reap a dead node on their heartbeat, every
// third of it).
export const NODE_TIMEOUT = Number(process.env.PUSHI_NODE_TIMEOUT || 10);
// cluster.command_timeout of nodes A and B.
export const COMMAND_TIMEOUT = Number(process.env.PUSHI_COMMAND_TIMEOUT || 2);
// Node C: a third node (short cluster.node_timeout) for the crash test, which kills it.
export const NODE_C_PORT = process.env.PUSHI_NODE_C_PORT ? Number(process.env.PUSHI_NODE_C_PORT) : null;
export const NODE_C_PID = process.env.PUSHI_NODE_C_PID ? Number(process.env.PUSHI_NODE_C_PID) : null;
export const NODE_C_TIMEOUT = Number(process.env.PUSHI_NODE_C_NODE_TIMEOUT || 3);
// The cluster's Redis: its port, its PID (written to PUSHI_REDIS_PIDFILE, also by a
// restart) and PUSHI_REDIS_START, a script that starts it again the same way on that port.
export const REDIS_PORT = process.env.PUSHI_REDIS_PORT ? Number(process.env.PUSHI_REDIS_PORT) : null;
export const REDIS_PID = process.env.PUSHI_REDIS_PID ? Number(process.env.PUSHI_REDIS_PID) : null;
export const REDIS_PIDFILE = process.env.PUSHI_REDIS_PIDFILE || null;
export const REDIS_START = process.env.PUSHI_REDIS_START || null;

// PUSHI_FULL=1: the server runs fixtures/compat.toml, so apps 2-5 exist
// with their documented settings.
export const FULL = process.env.PUSHI_FULL === '1';
// Features of the main app that --target mode cannot know about unless told.
export const CLIENT_EVENTS = FULL || process.env.PUSHI_CLIENT_EVENTS === '1';
export const SUBSCRIPTION_COUNT = FULL || process.env.PUSHI_SUBSCRIPTION_COUNT === '1';

// Optional second server with a short activity timeout (default mode only).
export const HEARTBEAT_PORT = process.env.PUSHI_HEARTBEAT_PORT ? Number(process.env.PUSHI_HEARTBEAT_PORT) : null;
export const HEARTBEAT_PID = process.env.PUSHI_HEARTBEAT_PID ? Number(process.env.PUSHI_HEARTBEAT_PID) : null;
export const HEARTBEAT_ACTIVITY = Number(process.env.PUSHI_HEARTBEAT_ACTIVITY_TIMEOUT || 2);
export const HEARTBEAT_PONG = Number(process.env.PUSHI_HEARTBEAT_PONG_TIMEOUT || 2);

export const MAIN = {
  id: required('PUSHI_APP_ID'),
  key: required('PUSHI_KEY'),
  secret: required('PUSHI_SECRET'),
};

// Fixture apps from fixtures/compat.toml (only usable when FULL).
export const SECOND = { id: '2', key: 'app-key-2', secret: 'app-secret-2' };
export const DISABLED = { id: '3', key: 'disabled-key', secret: 'disabled-secret' };
export const LIMITED = { id: '4', key: 'limited-key', secret: 'limited-secret' };
export const QUIET = { id: '5', key: 'quiet-key', secret: 'quiet-secret' };
// App 6: client events and subscription counts on, two webhooks (every type to
// /all, channel_vacated only to /vacated) sent to 127.0.0.1:PUSHI_WEBHOOK_PORT.
export const WEBHOOK_APP = { id: '6', key: 'webhook-key', secret: 'webhook-secret' };
// App 7: allowed_origins = ["https://good.example", "*.example.org"].
export const ORIGIN_APP = { id: '7', key: 'origin-key', secret: 'origin-secret' };
export const WEBHOOK_PORT = process.env.PUSHI_WEBHOOK_PORT ? Number(process.env.PUSHI_WEBHOOK_PORT) : null;

// The app that compat-tests/run creates with `pushi apps create --json` in the MongoDB
// registry (client events on; default mode only). null when not set.
export const REGISTRY_APP =
  process.env.PUSHI_REGISTRY_APP_ID && process.env.PUSHI_REGISTRY_APP_KEY && process.env.PUSHI_REGISTRY_APP_SECRET
    ? {
        id: process.env.PUSHI_REGISTRY_APP_ID,
        key: process.env.PUSHI_REGISTRY_APP_KEY,
        secret: process.env.PUSHI_REGISTRY_APP_SECRET,
      }
    : null;

// Values for the `skip` option of node:test.
export const needFull = (what) => (FULL ? false : `needs ${what} (fixture config only; not available in --target mode)`);
export const needWebhooks =
  FULL && WEBHOOK_PORT
    ? false
    : 'needs the webhook fixture app 6 and PUSHI_WEBHOOK_PORT (set by compat-tests/run; not available in --target mode)';
export const needRegistry = REGISTRY_APP
  ? false
  : 'needs the MongoDB registry app (PUSHI_REGISTRY_APP_*, created by compat-tests/run; not available in --target mode)';
export const needClientEvents = CLIENT_EVENTS ? false : 'needs client events enabled on the target app (pass --client-events)';
export const needCluster =
  CLUSTER && PORT_B !== PORT
    ? false
    : 'needs cluster mode (compat-tests/run --cluster: Redis and several pushi nodes; not available in default or --target mode)';
export const needSubscriptionCount = SUBSCRIPTION_COUNT
  ? false
  : 'needs subscription_count enabled on the target app (pass --subscription-count)';

// A master key for end-to-end encrypted channels (known only to the SDKs).
export const ENCRYPTION_MASTER_KEY_BASE64 = crypto.randomBytes(32).toString('base64');

let counter = 0;
// Unique channel names so that test files can run in parallel on one server.
export function uniq(prefix) {
  counter += 1;
  return `${prefix}-${process.pid}-${counter}-${crypto.randomBytes(3).toString('hex')}`;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Bounded wait used by "nothing arrives" checks, always after a positive control.
export const QUIET_MS = 400;
export const WAIT_MS = 5000;
