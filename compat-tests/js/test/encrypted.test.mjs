// End-to-end encrypted channels: the server SDK encrypts, the server forwards
// the payload opaquely, pusher-js decrypts with the shared secret.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { MAIN, uniq } from '../lib/env.mjs';
import { RawClient } from '../lib/raw.mjs';
import { serverSdk } from '../lib/http.mjs';
import { connectClientB, subscribed, once } from '../lib/client.mjs';
import { closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const sdk = serverSdk(MAIN);

// The SDK publishes on node A; the receivers are on node B (node A outside cluster mode).

test('pusher-js decrypts an event the server SDK encrypted', async () => {
  const client = await connectClientB(MAIN);
  const name = uniq('private-encrypted-vault');
  const { channel } = await subscribed(client, name);
  const got = once(channel, 'secret');
  const res = await sdk.trigger(name, 'secret', { message: 'top secret', n: 42 });
  assert.equal(res.status, 200);
  assert.deepEqual((await got).data, { message: 'top secret', n: 42 });
});

test('the server forwards only the ciphertext envelope', async () => {
  const name = uniq('private-encrypted-vault');
  const raw = await RawClient.openB(MAIN);
  // The wire subscription is an ordinary private-channel auth (no shared secret sent).
  await raw.subscribe(name, sdk.authorizeChannel(raw.socketId, name).auth);
  await sdk.trigger(name, 'secret', { message: 'plaintext-marker' });
  const f = await raw.waitEvent('secret', name);
  assert.deepEqual(Object.keys(f).sort(), ['channel', 'data', 'event']);
  assert.equal(typeof f.data, 'string');
  assert.ok(!f.data.includes('plaintext-marker'), 'plaintext leaked');
  const envelope = JSON.parse(f.data);
  assert.deepEqual(Object.keys(envelope).sort(), ['ciphertext', 'nonce']);
  assert.equal(Buffer.from(envelope.nonce, 'base64').length, 24);
  assert.ok(Buffer.from(envelope.ciphertext, 'base64').length > 16);
});

test('batch event on an encrypted channel is decrypted by pusher-js', async () => {
  const client = await connectClientB(MAIN);
  const enc = uniq('private-encrypted-batch');
  const pub = uniq('public-batch');
  const { channel: encCh } = await subscribed(client, enc);
  const { channel: pubCh } = await subscribed(client, pub);
  const gotEnc = once(encCh, 'b-enc');
  const gotPub = once(pubCh, 'b-pub');
  const res = await sdk.triggerBatch([
    { channel: enc, name: 'b-enc', data: { k: 'encrypted' } },
    { channel: pub, name: 'b-pub', data: { k: 'public' } },
  ]);
  assert.equal(res.status, 200);
  assert.deepEqual((await gotEnc).data, { k: 'encrypted' });
  assert.deepEqual((await gotPub).data, { k: 'public' });
});

test('encrypted channel subscription requires a valid signature', async () => {
  const name = uniq('private-encrypted-denied');
  const raw = await RawClient.open(MAIN);
  raw.subscribeFrame(name, `${MAIN.key}:${'a'.repeat(64)}`);
  await raw.waitEvent('pusher:error');
  const sub = await raw.waitEvent('pusher:subscription_error', name);
  assert.equal(JSON.parse(sub.data).status, 401);
  await raw.ping();
});
