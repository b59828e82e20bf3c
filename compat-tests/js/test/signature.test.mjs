// HTTP API request signing (PUSHER-SPEC 2.1), with requests signed by hand
// so every edge case can be produced.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { MAIN, SECOND, HOST, PORT, uniq, needFull } from '../lib/env.mjs';
import { RawClient } from '../lib/raw.mjs';
import { signedRequest, canonicalQuery, hmac, md5 } from '../lib/http.mjs';
import { closeAll } from '../lib/cleanup.mjs';

afterEach(closeAll);

const now = () => Math.floor(Date.now() / 1000);
const eventBody = () => ({ name: 'signed', channels: [uniq('sig')], data: '{"some":"data"}' });

function assert401(res) {
  assert.equal(res.status, 401, `expected 401, got ${res.status}: ${res.text}`);
  assert.ok(res.json && typeof res.json.error === 'string' && res.json.error.length > 0, `error body: ${res.text}`);
}

test('signing helper reproduces the documented vector', () => {
  const body = '{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}';
  assert.equal(md5(body), 'ec365a775a4cd0599faeb73354201b6f');
  const q = canonicalQuery({
    auth_key: '278d425bdf160c739803',
    auth_timestamp: '1353088179',
    auth_version: '1.0',
    body_md5: md5(body),
  });
  assert.equal(
    hmac('7ad3773142a6692b25b8', `POST\n/apps/3/events\n${q}`),
    'da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c',
  );
});

test('hand-signed POST is accepted (control)', async () => {
  const res = await signedRequest({ app: MAIN, method: 'POST', path: '/events', body: eventBody() });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json, {});
});

test('hand-signed GET with extra params is accepted and delivers the right data', async () => {
  const prefix = uniq('sigq');
  const c = await RawClient.open(MAIN);
  await c.subscribe(`${prefix}-x`);
  const res = await signedRequest({ app: MAIN, method: 'GET', path: '/channels', query: { filter_by_prefix: prefix } });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json, { channels: { [`${prefix}-x`]: {} } });
});

test('query values are signed unescaped (characters that need URL encoding)', async () => {
  // "@", "," and ";" are valid in channel names and are percent-encoded on the wire.
  const prefix = `${uniq('esc')}@a,b;c`;
  const c = await RawClient.open(MAIN);
  await c.subscribe(`${prefix}-1`);
  const res = await signedRequest({ app: MAIN, method: 'GET', path: '/channels', query: { filter_by_prefix: prefix } });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json, { channels: { [`${prefix}-1`]: {} } });
});

test('upper-case query keys are lowercased for signing', async () => {
  const prefix = uniq('case');
  const res = await signedRequest({ app: MAIN, method: 'GET', path: '/channels', query: { Filter_By_Prefix: prefix } });
  // Either the server treats the key case-insensitively or ignores it; the signature must verify.
  assert.notEqual(res.status, 401, res.text);
});

test('GET carrying body_md5 of the empty body is accepted (as the Python SDK sends)', async () => {
  const res = await signedRequest({ app: MAIN, method: 'GET', path: '/channels', bodyMd5: md5('') });
  assert.equal(res.status, 200, res.text);
});

test('wrong signature gets 401', async () => {
  assert401(await signedRequest({ app: MAIN, method: 'POST', path: '/events', body: eventBody(), signature: 'f'.repeat(64) }));
});

test('signature made with another secret gets 401', async () => {
  assert401(await signedRequest({ app: MAIN, method: 'GET', path: '/channels', signSecret: 'not-the-secret' }));
});

test('unknown auth_key gets 401', async () => {
  assert401(await signedRequest({ app: MAIN, method: 'GET', path: '/channels', authKey: 'no-such-key' }));
});

test('another app\'s key and secret against this app get 401', { skip: needFull('fixture app 2') }, async () => {
  assert401(
    await signedRequest({ app: MAIN, method: 'GET', path: '/channels', authKey: SECOND.key, signSecret: SECOND.secret }),
  );
  assert401(await signedRequest({ app: MAIN, method: 'GET', path: '/channels', authKey: SECOND.key }));
});

test('signature for another path gets 401', async () => {
  const good = await signedRequest({ app: MAIN, method: 'GET', path: '/channels' });
  assert.equal(good.status, 200);
  const params = new URLSearchParams(good.stringToSign.split('\n')[2]);
  params.set('auth_signature', hmac(MAIN.secret, good.stringToSign));
  const res = await fetch(`http://${HOST}:${PORT}/apps/${MAIN.id}/channels/${uniq('other')}?${params}`);
  const text = await res.text();
  assert.equal(res.status, 401, text);
});

test('signature for another method gets 401', async () => {
  const ts = now();
  const query = { auth_key: MAIN.key, auth_timestamp: String(ts), auth_version: '1.0' };
  const sig = hmac(MAIN.secret, `POST\n/apps/${MAIN.id}/channels\n${canonicalQuery(query)}`);
  const res = await fetch(`http://${HOST}:${PORT}/apps/${MAIN.id}/channels?${new URLSearchParams({ ...query, auth_signature: sig })}`);
  assert.equal(res.status, 401, await res.text());
});

test('timestamp 600 s or more in the past gets 401', async () => {
  assert401(await signedRequest({ app: MAIN, method: 'GET', path: '/channels', timestamp: now() - 601 }));
  assert401(await signedRequest({ app: MAIN, method: 'GET', path: '/channels', timestamp: now() - 3600 }));
});

test('timestamp 600 s or more in the future gets 401', async () => {
  assert401(await signedRequest({ app: MAIN, method: 'GET', path: '/channels', timestamp: now() + 601 }));
});

test('timestamp skew under 600 s is accepted', async () => {
  const past = await signedRequest({ app: MAIN, method: 'GET', path: '/channels', timestamp: now() - 590 });
  assert.equal(past.status, 200, past.text);
  const future = await signedRequest({ app: MAIN, method: 'GET', path: '/channels', timestamp: now() + 590 });
  assert.equal(future.status, 200, future.text);
});

test('missing auth_timestamp gets 401', async () => {
  assert401(await signedRequest({ app: MAIN, method: 'GET', path: '/channels', omit: ['auth_timestamp'] }));
});

test('non-numeric auth_timestamp gets 401', async () => {
  assert401(await signedRequest({ app: MAIN, method: 'GET', path: '/channels', timestamp: 'yesterday' }));
});

test('missing auth_signature gets 401', async () => {
  assert401(await signedRequest({ app: MAIN, method: 'GET', path: '/channels', omit: ['auth_signature'] }));
});

test('missing auth_key gets 401', async () => {
  assert401(await signedRequest({ app: MAIN, method: 'GET', path: '/channels', omit: ['auth_key'] }));
});

test('no query string at all gets 401', async () => {
  const res = await fetch(`http://${HOST}:${PORT}/apps/${MAIN.id}/channels`);
  assert.equal(res.status, 401, await res.text());
});

test('wrong body_md5 gets 401', async () => {
  assert401(await signedRequest({ app: MAIN, method: 'POST', path: '/events', body: eventBody(), bodyMd5: md5('something else') }));
});

test('missing body_md5 on a POST with a body gets 401', async () => {
  assert401(await signedRequest({ app: MAIN, method: 'POST', path: '/events', body: eventBody(), omit: ['body_md5'] }));
});

test('body changed after signing gets 401 (and is not delivered)', async () => {
  const ch = uniq('tamper');
  // The receiver is on node B (node A outside cluster mode).
  const c = await RawClient.openB(MAIN);
  await c.subscribe(ch);
  const original = { name: 'legit', channels: [ch], data: 'a' };
  const forged = JSON.stringify({ name: 'forged', channels: [ch], data: 'b' });
  assert401(await signedRequest({ app: MAIN, method: 'POST', path: '/events', body: original, sendBody: forged }));
  // Control: a correctly signed event arrives, the forged one never does.
  const ok = await signedRequest({ app: MAIN, method: 'POST', path: '/events', body: { name: 'real', channels: [ch], data: 'c' } });
  assert.equal(ok.status, 200);
  await c.waitEvent('real', ch);
  await c.expectNone((f) => f.event === 'forged', undefined, 'forged event delivered');
});

test('signature is checked before the body is validated', async () => {
  // An invalid body with a bad signature is an auth error, not a 400.
  assert401(
    await signedRequest({ app: MAIN, method: 'POST', path: '/events', body: '{"not":"an event"}', signature: '0'.repeat(64) }),
  );
});

test('auth failures on other endpoints also get 401', async () => {
  const bad = { signature: 'e'.repeat(64) };
  assert401(await signedRequest({ app: MAIN, method: 'GET', path: `/channels/${uniq('x')}`, ...bad }));
  assert401(await signedRequest({ app: MAIN, method: 'GET', path: `/channels/presence-${uniq('x')}/users`, ...bad }));
  assert401(await signedRequest({ app: MAIN, method: 'POST', path: '/batch_events', body: { batch: [] }, ...bad }));
  assert401(await signedRequest({ app: MAIN, method: 'POST', path: '/users/u1/terminate_connections', body: {}, ...bad }));
});
