// Native TLS ([server.tls]) with the real SDKs: pusher-js with forceTLS over wss://, the
// Node server SDK with useTLS over https://, both trusting the suite's own CA (pusher-js
// through NODE_EXTRA_CA_CERTS, which compat-tests/run sets; the server SDK through its
// `agent` option), and a certificate renewed mid-run (new files, then SIGHUP) while
// connections stay open.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import Pusher from 'pusher-js';
import PusherServer from 'pusher';
import { MAIN, WAIT_MS, uniq, sleep, ENCRYPTION_MASTER_KEY_BASE64 } from '../lib/env.mjs';
import { waitConnected, subscribed, once, collect } from '../lib/client.mjs';
import { track, closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const TLS_PORT = process.env.PUSHI_TLS_PORT ? Number(process.env.PUSHI_TLS_PORT) : null;
const TLS_PID = process.env.PUSHI_TLS_PID ? Number(process.env.PUSHI_TLS_PID) : null;
const TLS_DIR = process.env.PUSHI_TLS_DIR || null;
const TLS_CA = process.env.PUSHI_TLS_CA || null;
const MAKE_CERT = process.env.PUSHI_TLS_MAKE_CERT || null;
const skip =
  TLS_PORT && TLS_PID && TLS_DIR && TLS_CA && MAKE_CERT
    ? false
    : 'needs the TLS instance (PUSHI_TLS_*, started by compat-tests/run; not available in --target mode)';
// The certificate names localhost and 127.0.0.1; clients use the name, as a site would.
const HOST = 'localhost';

function tlsClient(app = MAIN, extra = {}) {
  const sdk = tlsSdk(app);
  return track(
    new Pusher(app.key, {
      cluster: 'mt1',
      wsHost: HOST,
      wssPort: TLS_PORT,
      forceTLS: true,
      enabledTransports: ['ws'],
      disableStats: true,
      channelAuthorization: {
        customHandler: ({ socketId, channelName }, callback) => {
          try {
            callback(null, sdk.authorizeChannel(socketId, channelName));
          } catch (e) {
            callback(e, null);
          }
        },
      },
      ...extra,
    }),
  );
}

function tlsSdk(app = MAIN) {
  return new PusherServer({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: HOST,
    port: String(TLS_PORT),
    useTLS: true,
    // Trusts exactly the suite's CA.
    agent: new https.Agent({ ca: fs.readFileSync(TLS_CA), keepAlive: false }),
    timeout: 5000,
    encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY_BASE64,
  });
}

// The SHA-256 fingerprint of the certificate a new TLS connection is served, verified
// against the suite's CA.
function servedFingerprint() {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: HOST, port: TLS_PORT, servername: HOST, ca: fs.readFileSync(TLS_CA) }, () => {
      const fp = s.getPeerCertificate().fingerprint256;
      s.end();
      resolve(fp);
    });
    s.on('error', reject);
  });
}

test('pusher-js with forceTLS connects over wss:// and receives what the SDK publishes over https://', { skip }, async () => {
  const client = tlsClient();
  await waitConnected(client);
  assert.match(client.connection.socket_id, /^\d+\.\d+$/);
  const name = uniq('tls');
  const { channel } = await subscribed(client, name);
  const got = once(channel, 'greet');
  const res = await tlsSdk().trigger(name, 'greet', { over: 'tls', text: 'é'.repeat(4500) });
  assert.equal(res.status, 200);
  const { data } = await got;
  assert.equal(data.over, 'tls');
  assert.equal(data.text, 'é'.repeat(4500), 'an event near the 10 KB limit arrives whole');
  // The channel is seen over https:// too.
  const info = await (await tlsSdk().get({ path: `/channels/${name}` })).json();
  assert.equal(info.occupied, true);
});

test('private channels authorize over TLS, and a burst arrives in order', { skip }, async () => {
  const client = tlsClient();
  await waitConnected(client);
  const name = uniq('private-tls');
  const { channel } = await subscribed(client, name);
  const seen = collect(channel, 'n');
  const sdk = tlsSdk();
  const N = 50;
  for (let i = 0; i < N; i += 10) {
    await sdk.triggerBatch(Array.from({ length: 10 }, (_, j) => ({ channel: name, name: 'n', data: { i: i + j } })));
  }
  const deadline = Date.now() + WAIT_MS;
  while (seen.length < N && Date.now() < deadline) await sleep(20);
  assert.deepEqual(
    seen.map((e) => e.data.i),
    Array.from({ length: N }, (_, i) => i),
  );
});

test('plain http:// on the TLS port gets a 400 saying to use TLS', { skip }, async () => {
  const { status, body } = await new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: TLS_PORT, path: `/app/${MAIN.key}?protocol=7` }, (res) => {
      let b = '';
      res.on('data', (c) => (b += c));
      res.on('end', () => resolve({ status: res.statusCode, body: b }));
    });
    req.on('error', reject);
  });
  assert.equal(status, 400);
  assert.match(JSON.parse(body).error, /wss:\/\//);
});

test('a certificate renewed mid-run is served to new connections while open ones stay', { skip }, async () => {
  const before = await servedFingerprint();
  const kept = tlsClient();
  await waitConnected(kept);
  const socketId = kept.connection.socket_id;
  const changes = collect(kept.connection, 'state_change');
  const name = uniq('tls-renew');
  const { channel } = await subscribed(kept, name);

  // A renewal as certbot does one: new key and certificate moved over the old files, then
  // SIGHUP (the server also notices on its own, within seconds; the signal makes it now).
  const issued = execFileSync(MAKE_CERT, [TLS_DIR]).toString().trim();
  process.kill(TLS_PID, 'SIGHUP');
  let after = before;
  const deadline = Date.now() + 10000;
  while (after === before && Date.now() < deadline) {
    await sleep(100);
    after = await servedFingerprint();
  }
  assert.notEqual(after, before, 'new connections get the renewed certificate');
  assert.equal(after.replaceAll(':', ''), issued.replaceAll(':', ''), 'the certificate served is the one just issued');

  // A client connecting now completes its handshake with the new certificate.
  const fresh = tlsClient();
  await waitConnected(fresh);
  const { channel: freshChannel } = await subscribed(fresh, name);

  const a = once(channel, 'after-renewal');
  const b = once(freshChannel, 'after-renewal');
  const res = await tlsSdk().trigger(name, 'after-renewal', { ok: 1 });
  assert.equal(res.status, 200);
  assert.deepEqual((await a).data, { ok: 1 });
  assert.deepEqual((await b).data, { ok: 1 });
  // The open connection was never dropped: same socket, no state change since.
  assert.equal(kept.connection.socket_id, socketId);
  assert.equal(kept.connection.state, 'connected');
  assert.deepEqual(changes, [], 'the kept client did not reconnect');
});
