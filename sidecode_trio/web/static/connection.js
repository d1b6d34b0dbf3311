// The connection to the daemon: WebTransport when it works (PROTOCOL.md §10, certificate pinned
// by hash), otherwise HTTP with event streams read through fetch() (§6, §7). Subscriptions
// survive transport changes: each remembers the id of the last event it delivered and resumes
// from it, so a reconnect replays exactly what was missed (or the daemon sends a snapshot).

import { authorization, authorizedFetch, daemonInfo, hexBytes, loadDevice, signWelcome }
  from "./auth.js";

const enc = new TextEncoder();
const dec = new TextDecoder();
const BACKOFF = [500, 1000, 2000, 4000, 8000, 15000];
const WT_TIMEOUT = 8000; // per handshake step; a network that drops UDP falls back after it
const WT_RETRY_AFTER = 60_000; // after WebTransport failed, use HTTP for this long

const frame = (message) => {
  const body = enc.encode(JSON.stringify(message));
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length);
  out.set(body, 4);
  return out;
};
const join = (a, b) => {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
};
const withTimeout = (promise, ms, what) => Promise.race([
  promise,
  new Promise((_, reject) => setTimeout(() => reject(new Error(what + " timed out")), ms)),
]);

// -- WebTransport ----------------------------------------------------------------------------

class WebTransportLink {
  kind = "webtransport";

  constructor(wt, writer, reader) {
    this.wt = wt;
    this.writer = writer;
    this.reader = reader;
    this.buffer = new Uint8Array(0);
    this.nextId = 1;
    this.pending = new Map(); // request id -> resolve
    this.subs = new Map(); // sub id -> {deliver, end}
    this.large = new Map(); // ref -> payload or waiter
    this.closed = false;
    this.ended = new Promise((resolve) => { this.onEnded = resolve; });
  }

  static async open(url, hashes, device) {
    const wt = new WebTransport(url, {
      serverCertificateHashes: hashes.map((h) => ({ algorithm: "sha-256", value: hexBytes(h) })),
    });
    wt.closed.catch(() => {}); // a failed connection rejects it; the caller sees ready fail
    try {
      await withTimeout(wt.ready, WT_TIMEOUT, "WebTransport");
      const control = await wt.createBidirectionalStream();
      const link = new WebTransportLink(wt, control.writable.getWriter(),
        control.readable.getReader());
      link.readLarge();
      await link.send({ type: "hello", versions: [1], client: "sidecode-trio web" });
      const welcome = await withTimeout(link.next(), WT_TIMEOUT, "welcome");
      if (welcome.type !== "welcome" || !hashes.includes(welcome.cert)) {
        throw new Error("unexpected welcome from the daemon");
      }
      await link.send({ type: "auth", device: device.id,
        signature: await signWelcome(device, welcome) });
      const ready = await withTimeout(link.next(), WT_TIMEOUT, "auth");
      if (ready.type !== "ready") throw new Error("WebTransport authentication failed");
      link.heartbeat(welcome.heartbeat || 20);
      link.pump();
      wt.closed.then(() => link.shut(), () => link.shut());
      return link;
    } catch (error) {
      try { wt.close(); } catch { /* already closed */ }
      throw error;
    }
  }

  send(message) {
    return this.writer.write(frame(message));
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
          return message.type === "large" ? await this.largePayload(message.ref) : message;
        }
      }
      const { value, done } = await this.reader.read();
      if (done) throw new Error("the control stream ended");
      this.buffer = join(this.buffer, value);
    }
  }

  largePayload(ref) {
    const have = this.large.get(ref);
    if (have && have.payload !== undefined) {
      this.large.delete(ref);
      return Promise.resolve(have.payload);
    }
    return new Promise((resolve) => this.large.set(ref, { resolve }));
  }

  async readLarge() {
    const streams = this.wt.incomingUnidirectionalStreams.getReader();
    try {
      for (;;) {
        const { value: stream, done } = await streams.read();
        if (done) return;
        this.readOneLarge(stream);
      }
    } catch { /* the connection ended */ }
  }

  async readOneLarge(stream) {
    let all = new Uint8Array(0);
    const reader = stream.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        all = join(all, value);
      }
    } catch { return; }
    const ref = new DataView(all.buffer, all.byteOffset).getUint32(0);
    const payload = JSON.parse(dec.decode(all.slice(4)));
    const waiter = this.large.get(ref);
    if (waiter && waiter.resolve) {
      this.large.delete(ref);
      waiter.resolve(payload);
    } else {
      this.large.set(ref, { payload });
    }
  }

  heartbeat(seconds) {
    const writer = this.wt.datagrams.writable.getWriter();
    this.beat = setInterval(() => writer.write(enc.encode("ping")).catch(() => {}),
      Math.max(5, seconds) * 1000);
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
    clearInterval(this.beat);
    for (const resolve of this.pending.values()) {
      resolve({ status: 0, body: { error: { code: "disconnected", message: "disconnected" } } });
    }
    for (const sub of this.subs.values()) sub.end(new Error("disconnected"));
    this.pending.clear();
    this.subs.clear();
    try { this.wt.close({ closeCode: 0, reason: "done" }); } catch { /* closed */ }
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

// -- HTTP + streamed SSE ---------------------------------------------------------------------

/** Parse an SSE body read through fetch(); calls `onFrame({event, id, data})`. */
export async function readEventStream(body, onFrame) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    text += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = text.indexOf("\n\n")) >= 0) {
      const block = text.slice(0, cut);
      text = text.slice(cut + 2);
      const frame = { event: "message", id: null, data: [] };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") frame.data.push(val);
        else if (field === "event") frame.event = val;
        else if (field === "id") frame.id = val;
      }
      if (frame.data.length) onFrame({ ...frame, data: frame.data.join("\n") });
    }
  }
}

class HTTPLink {
  kind = "sse";
  closed = false;

  constructor() {
    this.ended = new Promise((resolve) => { this.onEnded = resolve; });
  }

  async request(method, path, body) {
    const init = { method, headers: {} };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await authorizedFetch(path, init);
    return { status: response.status, body: await response.json().catch(() => null) };
  }

  async stream(path, since, deliver, signal) {
    const headers = { Accept: "text/event-stream" };
    if (since) headers["Last-Event-ID"] = since;
    const response = await authorizedFetch(path, { headers, signal, cache: "no-store" });
    if (response.status !== 200) {
      const body = await response.json().catch(() => ({}));
      throw Object.assign(new Error(body.error?.message || `stream: ${response.status}`),
        { status: response.status });
    }
    try {
      await readEventStream(response.body, ({ event, id, data }) => {
        const parsed = JSON.parse(data);
        if (event === "snapshot") {
          deliver({ kind: "snapshot", id, reason: parsed.reason, snapshot: parsed.snapshot });
        } else if (event === "sessions") {
          deliver({ kind: "sessions", sessions: parsed.sessions });
        } else if (event === "session") {
          deliver({ kind: "session", session: parsed });
        } else if (id) {
          deliver({ kind: "event", id, envelope: parsed });
        }
      });
    } catch (error) {
      if (signal.aborted) return;
      throw error;
    }
    if (!signal.aborted) throw new Error("the event stream ended");
  }

  close() {
    this.closed = true;
    this.onEnded();
  }
}

// -- the client ------------------------------------------------------------------------------

/**
 * One logical connection. `onStatus({state, transport, retryIn})` reports what the indicator
 * shows: state is "connecting", "live" or "offline".
 */
export class Client {
  constructor({ onStatus = () => {}, preferWebTransport = true } = {}) {
    this.onStatus = onStatus;
    this.preferWT = preferWebTransport && typeof WebTransport !== "undefined";
    this.link = null;
    this.linking = null;
    this.wtFailedAt = 0;
    this.subs = new Set();
    this.wakers = new Set();
    this.lastStatus = null;
    this.info = null;
    const wake = () => this.wakeAll();
    if (typeof window !== "undefined") {
      window.addEventListener("online", wake);
      // The network is gone: say so now (a stream can hang for a long time before it fails)
      // and break the streams, which retry with backoff and resume when it is back.
      window.addEventListener("offline", () => {
        this.status("offline", { retryIn: null });
        this.drop();
      });
      document.addEventListener("visibilitychange", () => {
        if (document.visibilityState === "visible") wake();
      });
    }
  }

  status(state, extra = {}) {
    const transport = this.link && !this.link.closed ? this.link.kind : null;
    this.lastStatus = { state, transport, ...extra };
    this.onStatus(this.lastStatus);
  }

  async connect() {
    if (this.link && !this.link.closed) return this.link;
    if (!this.linking) {
      this.linking = this.openLink().finally(() => { this.linking = null; });
    }
    return this.linking;
  }

  async openLink() {
    this.status("connecting");
    const device = await loadDevice();
    if (!device) throw new Error("not paired");
    const { info, hashes } = await daemonInfo(device);
    this.info = info; // remote_modes: what a paired device may choose (modes.js)
    const urls = info.quic && info.quic.length ? info.quic : device.daemon.quic;
    const wtAllowed = this.preferWT && urls.length && hashes.length
      && Date.now() - this.wtFailedAt > WT_RETRY_AFTER;
    let link = null;
    if (wtAllowed) {
      const url = pickWebTransportURL(urls);
      try {
        link = await WebTransportLink.open(url, hashes, device);
      } catch (error) {
        console.warn("WebTransport unavailable, using HTTP:", error);
        this.wtFailedAt = Date.now();
      }
    }
    if (!link) {
      await authorization(device); // fails early when the daemon's info is unusable
      link = new HTTPLink();
    }
    this.link = link;
    link.ended.then(() => {
      if (this.link === link) this.link = null;
    });
    return link;
  }

  /** A request over the current transport: {status, body}. */
  async request(method, path, body) {
    for (let attempt = 0; ; attempt++) {
      let link;
      try {
        link = await this.connect();
      } catch (error) {
        this.status("offline", { retryIn: null });
        throw Object.assign(error, { network: true });
      }
      try {
        return await link.request(method, path, body);
      } catch (error) {
        if (attempt > 0 || link.kind === "sse") {
          if (error instanceof TypeError || error.message === "disconnected") {
            this.status("offline", { retryIn: null }); // fetch failed: the link is gone
            error.network = true;
          }
          throw error;
        }
        link.close(); // a dead WebTransport link: retry once on a fresh one
      }
    }
  }

  /**
   * Follow `path` until `close()`. `handler(frame)` receives frames ({kind: "snapshot" |
   * "event" | "sessions" | "session", ...}); `position()` returns the id to resume from.
   */
  follow(path, handler, position = () => null) {
    const sub = { path, closed: false, controller: null, waker: null };
    this.subs.add(sub);
    this.runFollow(sub, handler, position);
    return {
      close: () => {
        sub.closed = true;
        this.subs.delete(sub);
        sub.controller?.abort();
        sub.waker?.();
      },
    };
  }

  async runFollow(sub, handler, position) {
    let failures = 0;
    while (!sub.closed) {
      sub.controller = new AbortController();
      let delivered = false;
      try {
        const link = await this.connect();
        if (sub.closed) break;
        const deliver = (message) => {
          if (!delivered) {
            delivered = true;
            failures = 0;
            this.status("live");
          }
          handler(message);
        };
        const streaming = link.stream(sub.path, position(), deliver, sub.controller.signal);
        await streaming;
        if (sub.closed) break;
      } catch (error) {
        if (sub.closed) break;
        if (error.status === 404 || error.status === 403) {
          handler({ kind: "gone", error });
          break;
        }
        console.warn("stream", sub.path, error);
      }
      const wait = BACKOFF[Math.min(failures, BACKOFF.length - 1)] * (0.75 + Math.random() / 2);
      failures += 1;
      this.status("offline", { retryIn: Math.round(wait / 1000) });
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, wait);
        sub.waker = () => { clearTimeout(timer); resolve(); };
      });
      sub.waker = null;
    }
  }

  wakeAll() {
    for (const sub of this.subs) sub.waker?.();
  }

  /** Break every stream and the transport, as a network failure would (for diagnosis and
   * the browser tests): each subscription reconnects and resumes from its position. */
  drop() {
    this.link?.close();
    for (const sub of this.subs) sub.controller?.abort();
  }
}

function pickWebTransportURL(urls) {
  // Prefer the address this page was loaded from (same network path), else the first.
  const host = typeof location !== "undefined" ? location.hostname : "";
  return urls.find((u) => new URL(u).hostname === host.replace(/^\[|\]$/g, "")) || urls[0];
}
