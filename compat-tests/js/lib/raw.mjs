// A raw WebSocket client that records every frame, for asserting the exact
// wire protocol. Frames are matched by predicate and consumed when matched, so
// assertions do not depend on unrelated frames arriving in between.
import WebSocket from 'ws';
import { HOST, PORT, PORT_B, WAIT_MS, QUIET_MS, sleep } from './env.mjs';
import { track } from './cleanup.mjs';

export function wsUrl(key, { protocol = 7, port = PORT, path, query } = {}) {
  const p = path ?? `/app/${key}`;
  let q = query;
  if (q === undefined) q = protocol === null ? 'client=js&version=8.6.0' : `protocol=${protocol}&client=js&version=8.6.0`;
  return `ws://${HOST}:${port}${p}${q ? `?${q}` : ''}`;
}

export class RawClient {
  constructor(ws) {
    this.ws = ws;
    this.frames = []; // unconsumed parsed frames
    this.all = []; // every frame received, for diagnostics
    this.closeInfo = null;
    this.waiters = new Set();
    this.socketId = null;
    this.activityTimeout = null;
    ws.on('message', (data, isBinary) => {
      const text = data.toString();
      let frame;
      try {
        frame = JSON.parse(text);
      } catch {
        frame = { __unparsed: text, __binary: isBinary };
      }
      this.frames.push(frame);
      this.all.push(frame);
      this._notify();
    });
    ws.on('close', (code, reason) => {
      this.closeInfo = { code, reason: reason.toString() };
      this._notify();
    });
    ws.on('error', () => {});
  }

  static connect(url) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      const client = track(new RawClient(ws));
      const timer = setTimeout(() => reject(new Error(`timed out opening ${url}`)), WAIT_MS);
      ws.once('open', () => {
        clearTimeout(timer);
        resolve(client);
      });
      ws.once('unexpected-response', (_req, res) => {
        clearTimeout(timer);
        reject(new Error(`HTTP ${res.statusCode} instead of a WebSocket upgrade for ${url}`));
      });
      ws.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  }

  // Connects to an app and waits for pusher:connection_established (opts.port: the node).
  static async open(app, opts = {}) {
    const c = await RawClient.connect(wsUrl(app.key, opts));
    const f = await c.waitFor((fr) => fr.event === 'pusher:connection_established' || fr.event === 'pusher:error');
    if (f.event !== 'pusher:connection_established') {
      throw new Error(`connection refused: ${JSON.stringify(f)}`);
    }
    const data = JSON.parse(f.data);
    c.socketId = data.socket_id;
    c.activityTimeout = data.activity_timeout;
    c.established = f;
    return c;
  }

  // open() on node B (node A outside cluster mode).
  static openB(app, opts = {}) {
    return RawClient.open(app, { ...opts, port: PORT_B });
  }

  _notify() {
    for (const w of [...this.waiters]) w();
  }

  send(obj) {
    this.ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj));
  }

  // Resolves with (and consumes) the first frame matching pred.
  waitFor(pred, timeout = WAIT_MS, what = 'frame') {
    return new Promise((resolve, reject) => {
      const check = () => {
        const i = this.frames.findIndex(pred);
        if (i >= 0) {
          const [f] = this.frames.splice(i, 1);
          done();
          resolve(f);
          return true;
        }
        if (this.closeInfo) {
          done();
          reject(
            new Error(
              `socket closed (${this.closeInfo.code} ${this.closeInfo.reason}) while waiting for ${what}; received: ${JSON.stringify(this.all)}`,
            ),
          );
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${timeout} ms waiting for ${what}; received: ${JSON.stringify(this.all)}`));
      }, timeout);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      if (!check()) this.waiters.add(check);
    });
  }

  waitEvent(event, channel, timeout = WAIT_MS) {
    return this.waitFor(
      (f) => f.event === event && (channel === undefined || f.channel === channel),
      timeout,
      `${event}${channel ? ` on ${channel}` : ''}`,
    );
  }

  // Asserts that no frame matching pred arrives within ms (bounded wait).
  async expectNone(pred, ms = QUIET_MS, what = 'unexpected frame') {
    await sleep(ms);
    const f = this.frames.find(pred);
    if (f) throw new Error(`${what}: ${JSON.stringify(f)}`);
  }

  // Frames matching pred that are already buffered (consumes them).
  take(pred) {
    const out = [];
    this.frames = this.frames.filter((f) => {
      if (pred(f)) {
        out.push(f);
        return false;
      }
      return true;
    });
    return out;
  }

  waitClose(timeout = WAIT_MS) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.closeInfo) {
          done();
          resolve(this.closeInfo);
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`socket not closed after ${timeout} ms; received: ${JSON.stringify(this.all)}`));
      }, timeout);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      if (!check()) this.waiters.add(check);
    });
  }

  // Round trip proving the socket is open and processing frames in order.
  async ping(timeout = WAIT_MS) {
    this.send({ event: 'pusher:ping', data: {} });
    return this.waitEvent('pusher:pong', undefined, timeout);
  }

  subscribeFrame(channel, auth, channelData) {
    const data = { channel };
    if (auth !== undefined) data.auth = auth;
    if (channelData !== undefined) data.channel_data = channelData;
    this.send({ event: 'pusher:subscribe', data });
  }

  // Subscribes and waits for success; throws with the error frame otherwise.
  async subscribe(channel, auth, channelData) {
    this.subscribeFrame(channel, auth, channelData);
    const f = await this.waitFor(
      (fr) =>
        (fr.event === 'pusher_internal:subscription_succeeded' && fr.channel === channel) ||
        (fr.event === 'pusher:subscription_error' && fr.channel === channel),
      WAIT_MS,
      `subscription result for ${channel}`,
    );
    if (f.event !== 'pusher_internal:subscription_succeeded') {
      throw new Error(`subscription to ${channel} failed: ${JSON.stringify(f)}`);
    }
    return f;
  }

  unsubscribe(channel) {
    this.send({ event: 'pusher:unsubscribe', data: { channel } });
  }

  close() {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) {
      try {
        this.ws.close();
      } catch {
        this.ws.terminate();
      }
    }
  }

  terminate() {
    this.ws.terminate();
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }
}

// Opens a socket expected to be refused: returns the first frame and the close info.
export async function expectRefused(url) {
  const c = await RawClient.connect(url);
  const first = await c.waitFor(() => true, WAIT_MS, 'first frame');
  const close = await c.waitClose();
  return { first, close, client: c };
}
