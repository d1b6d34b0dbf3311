// The framed protocol of PROTOCOL.md §10 (the WebTransport control stream), which the WebRTC
// DataChannel carries unchanged (§13): length-prefixed JSON frames, the hello/welcome/auth
// handshake, requests and replies, subscriptions with (epoch, cursor) resume. One class holds
// it; a link over a transport (connection.js WebTransportLink, rtc-link.js RtcLink) supplies
// only the carriage:
//
//   writeBytes(bytes) -> Promise      send the bytes of one or more frames
//   readChunk() -> Promise<bytes>     the next bytes received (throws when the carriage ended)
//   expandLarge(message) -> Promise   a "large" placeholder's payload (WebTransport only)
//   teardown()                        close the carriage (called once, from shut())

import { signWelcome } from "./auth.js";

const enc = new TextEncoder();
const dec = new TextDecoder();
export const HANDSHAKE_TIMEOUT = 8000; // per handshake step

export const frame = (message) => {
  const body = enc.encode(JSON.stringify(message));
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length);
  out.set(body, 4);
  return out;
};
export const join = (a, b) => {
  if (!a.length) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
};
export const withTimeout = (promise, ms, what) => {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(what + " timed out")), ms);
    }),
  ]).finally(() => clearTimeout(timer));
};

export class FramedLink {
  kind = "framed"; // "webtransport", "webrtc"
  path = "direct"; // what the header shows: "direct", "peer-to-peer", "relayed"

  constructor() {
    this.buffer = new Uint8Array(0);
    this.nextId = 1;
    this.pending = new Map(); // request id -> resolve
    this.subs = new Map(); // sub id -> {deliver, end}
    this.closed = false;
    this.ended = new Promise((resolve) => { this.onEnded = resolve; });
  }

  expandLarge() {
    return Promise.reject(new Error("a large frame on a link without streams"));
  }

  /** hello → welcome (whose `cert` must satisfy `certOk`) → auth → ready; the welcome. */
  async handshake(device, certOk, what) {
    await this.send({ type: "hello", versions: [1], client: "sidecode-trio web" });
    const welcome = await withTimeout(this.next(), HANDSHAKE_TIMEOUT, "welcome");
    if (welcome.type !== "welcome" || !certOk(welcome.cert)) {
      throw new Error("unexpected welcome from the daemon");
    }
    await this.send({ type: "auth", device: device.id,
      signature: await signWelcome(device, welcome) });
    const ready = await withTimeout(this.next(), HANDSHAKE_TIMEOUT, "auth");
    if (ready.type !== "ready") throw new Error(`${what} authentication failed`);
    return welcome;
  }

  send(message) {
    return this.writeBytes(frame(message));
  }

  async next() {
    for (;;) {
      if (this.buffer.length >= 4) {
        const size = new DataView(this.buffer.buffer, this.buffer.byteOffset).getUint32(0);
        if (this.buffer.length >= 4 + size) {
          const payload = this.buffer.slice(4, 4 + size);
          this.buffer = this.buffer.slice(4 + size);
          const message = JSON.parse(dec.decode(payload));
          // A large frame is applied in its placeholder's place: wait for its stream.
          return message.type === "large" ? await this.expandLarge(message) : message;
        }
      }
      this.buffer = join(this.buffer, await this.readChunk());
    }
  }

  async pump() {
    try {
      for (;;) this.dispatch(await this.next());
    } catch {
      this.shut();
    }
  }

  dispatch(message) {
    if (message.type === "reply" && this.pending.has(message.id)) {
      this.pending.get(message.id)(message);
      this.pending.delete(message.id);
      return;
    }
    if (message.type === "close") { // the daemon closes on purpose (lagging, revoked, ...)
      console.warn("the daemon closed the link:", message.code || message.reason, message.message);
      this.shut();
      return;
    }
    const sub = this.subs.get(message.sub ?? message.id);
    if (!sub) return;
    if (message.type === "reply" && message.status !== 200) {
      this.subs.delete(message.id);
      const error = new Error(message.body?.error?.message || `subscribe: ${message.status}`);
      sub.end(Object.assign(error, { status: message.status })); // 404: the session is gone
    } else if (message.type === "snapshot") {
      sub.deliver({ kind: "snapshot", id: message.id, reason: message.reason,
        snapshot: message.snapshot });
    } else if (message.type === "event") {
      sub.deliver({ kind: "event", id: message.id, envelope: message.data });
    } else if (message.type === "sessions") {
      sub.deliver({ kind: "sessions", sessions: message.sessions });
    } else if (message.type === "session") {
      sub.deliver({ kind: "session", session: message.session });
    } else if (message.type === "end") {
      this.subs.delete(message.sub);
      sub.end(message.reason === "unsubscribed" ? null : new Error("ended: " + message.reason));
    }
  }

  shut() {
    if (this.closed) return;
    this.closed = true;
    for (const resolve of this.pending.values()) {
      resolve({ status: 0, body: { error: { code: "disconnected", message: "disconnected" } } });
    }
    for (const sub of this.subs.values()) sub.end(new Error("disconnected"));
    this.pending.clear();
    this.subs.clear();
    try { this.teardown(); } catch { /* closed already */ }
    this.onEnded();
  }

  async request(method, path, body) {
    if (this.closed) throw new Error("disconnected");
    const id = this.nextId++;
    const reply = new Promise((resolve) => this.pending.set(id, resolve));
    await this.send({ type: "request", id, method, path, ...(body === undefined ? {} : { body }) });
    const { status, body: answer } = await reply;
    if (status === 0) throw new Error("disconnected");
    return { status, body: answer };
  }

  /** Follow `path` from `since`; `deliver` gets each frame; resolves when the stream ends. */
  stream(path, since, deliver, signal) {
    return new Promise((resolve, reject) => {
      if (this.closed) return reject(new Error("disconnected"));
      const id = this.nextId++;
      this.subs.set(id, { deliver, end: (error) => (error ? reject(error) : resolve()) });
      signal.addEventListener("abort", () => {
        if (this.subs.delete(id)) this.send({ type: "unsubscribe", id }).catch(() => {});
        resolve();
      });
      this.send({ type: "subscribe", id, path, ...(since ? { since } : {}) }).catch(reject);
    });
  }

  close() {
    this.shut();
  }
}
