// pusher-js clients (the real browser/Node client library) pointed at the
// server under test. Channel authorization goes through the server SDK's
// authorizeChannel inside a customHandler, as an app's auth endpoint would.
import Pusher from 'pusher-js';
import { HOST, PORT, PORT_B, WAIT_MS } from './env.mjs';
import { serverSdk } from './http.mjs';
import { track } from './cleanup.mjs';

// `port`: the node to connect to (PORT_B for node B in cluster mode; see env.mjs).
export function pusherOptions(app, extra = {}, port = PORT) {
  return {
    cluster: 'mt1',
    wsHost: HOST,
    wsPort: port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    ...extra,
  };
}

/**
 * presence: {user_id, user_info} used for presence channels.
 * authorize: optional override (params) => auth object or throws.
 * port: the node to connect to (default node A; see makeClientB).
 */
export function makeClient(app, { presence, authorize, extra = {}, port = PORT } = {}) {
  const sdk = serverSdk(app);
  const client = new Pusher(
    app.key,
    pusherOptions(app, {
      channelAuthorization: {
        customHandler: ({ socketId, channelName }, callback) => {
          try {
            const auth = authorize
              ? authorize({ socketId, channelName, sdk })
              : sdk.authorizeChannel(socketId, channelName, channelName.startsWith('presence-') ? presence : undefined);
            callback(null, auth);
          } catch (e) {
            callback(e, null);
          }
        },
      },
      ...extra,
    }, port),
  );
  return track(client);
}

// The same client on node B: the receiving side of a test (node A outside cluster mode).
export function makeClientB(app, opts = {}) {
  return makeClient(app, { ...opts, port: PORT_B });
}

export function waitConnected(client, timeout = WAIT_MS) {
  return new Promise((resolve, reject) => {
    if (client.connection.state === 'connected') return resolve(client);
    const timer = setTimeout(
      () => reject(new Error(`pusher-js not connected after ${timeout} ms (state ${client.connection.state})`)),
      timeout,
    );
    const onChange = ({ current }) => {
      if (current === 'connected') {
        clearTimeout(timer);
        client.connection.unbind('state_change', onChange);
        resolve(client);
      } else if (current === 'failed' || current === 'unavailable') {
        clearTimeout(timer);
        client.connection.unbind('state_change', onChange);
        reject(new Error(`pusher-js connection ${current}`));
      }
    };
    client.connection.bind('state_change', onChange);
  });
}

export async function connectClient(app, opts) {
  const c = makeClient(app, opts);
  await waitConnected(c);
  return c;
}

// connectClient on node B (node A outside cluster mode).
export function connectClientB(app, opts = {}) {
  return connectClient(app, { ...opts, port: PORT_B });
}

// Resolves with the next emission of `event` on a pusher-js channel/connection.
export function once(emitter, event, timeout = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.unbind(event, handler);
      reject(new Error(`timed out after ${timeout} ms waiting for ${event}`));
    }, timeout);
    const handler = (data, meta) => {
      clearTimeout(timer);
      emitter.unbind(event, handler);
      resolve({ data, meta });
    };
    emitter.bind(event, handler);
  });
}

// Subscribes and waits for pusher:subscription_succeeded (rejects on error).
export function subscribed(client, name, timeout = WAIT_MS) {
  const channel = client.subscribe(name);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`subscription to ${name} not confirmed after ${timeout} ms`)), timeout);
    channel.bind('pusher:subscription_succeeded', (data) => {
      clearTimeout(timer);
      resolve({ channel, data });
    });
    channel.bind('pusher:subscription_error', (err) => {
      clearTimeout(timer);
      reject(new Error(`subscription to ${name} failed: ${JSON.stringify(err)}`));
    });
  });
}

// Collects every emission of `event` on an emitter.
export function collect(emitter, event) {
  const items = [];
  emitter.bind(event, (data, meta) => items.push({ data, meta }));
  return items;
}
