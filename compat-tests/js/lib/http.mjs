// HTTP API access: the official Node server SDK, and hand-signed requests
// (PUSHER-SPEC 2.1) for cases an SDK refuses to produce.
import crypto from 'node:crypto';
import PusherServer from 'pusher';
import { HOST, PORT, ENCRYPTION_MASTER_KEY_BASE64 } from './env.mjs';

// `port`: the node the SDK talks to (default node A; PORT_B for node B in cluster mode).
export function serverSdk(app, { port = PORT } = {}) {
  return new PusherServer({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: HOST,
    port: String(port),
    useTLS: false,
    timeout: 5000,
    encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY_BASE64,
  });
}

export const md5 = (s) => crypto.createHash('md5').update(s).digest('hex');
export const hmac = (secret, s) => crypto.createHmac('sha256', secret).update(s).digest('hex');

// Canonical query string: lowercased keys, sorted, key=value joined by &,
// no URL escaping; auth_signature excluded.
export function canonicalQuery(params) {
  return Object.keys(params)
    .filter((k) => k.toLowerCase() !== 'auth_signature')
    .map((k) => [k.toLowerCase(), params[k]])
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
}

/**
 * Sends a request signed by hand.
 *   app: {id,key,secret}; method; path relative to /apps/{id} (e.g. "/events") or absolute via fullPath;
 *   query: extra (non-auth) query params; body: string or object (JSON-encoded);
 *   overrides: replace/remove ("undefined") auth params after signing or before signing:
 *     timestamp, key (auth_key), signWithSecret, bodyMd5, omit: [names], signature, sendBody (body actually sent);
 *   port: the node to send it to (default node A).
 */
export async function signedRequest({
  app,
  method = 'GET',
  path = '',
  fullPath,
  query = {},
  body,
  timestamp,
  authKey,
  signSecret,
  bodyMd5,
  omit = [],
  signature,
  sendBody,
  headers = {},
  port = PORT,
}) {
  const reqPath = fullPath ?? `/apps/${app.id}${path}`;
  const bodyStr = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
  const params = {
    auth_key: authKey ?? app.key,
    auth_timestamp: String(timestamp ?? Math.floor(Date.now() / 1000)),
    auth_version: '1.0',
    ...query,
  };
  if (bodyStr !== undefined && bodyStr.length > 0) params.body_md5 = bodyMd5 ?? md5(bodyStr);
  else if (bodyMd5 !== undefined) params.body_md5 = bodyMd5;
  for (const k of omit) delete params[k];
  const stringToSign = `${method.toUpperCase()}\n${reqPath}\n${canonicalQuery(params)}`;
  const sig = signature ?? hmac(signSecret ?? app.secret, stringToSign);
  if (!omit.includes('auth_signature')) params.auth_signature = sig;
  const qs = Object.entries(params)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
    .join('&');
  const url = `http://${HOST}:${port}${reqPath}?${qs}`;
  const sent = sendBody !== undefined ? sendBody : bodyStr;
  const res = await fetch(url, {
    method,
    body: sent,
    headers: sent !== undefined ? { 'content-type': 'application/json', ...headers } : headers,
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, text, json, headers: res.headers, stringToSign };
}

// Runs an SDK call expected to fail; returns {status, body}.
export async function sdkError(promise) {
  try {
    const res = await promise;
    return { status: res.status, body: await res.text() };
  } catch (e) {
    if (e && e.status !== undefined) return { status: e.status, body: e.body };
    throw e;
  }
}

export async function jsonOf(res) {
  return JSON.parse(await res.text());
}
