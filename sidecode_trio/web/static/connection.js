// The connection to the daemon: WebTransport when it works (PROTOCOL.md §10, certificate pinned
// by hash), HTTP with event streams read through fetch() on the daemon's own origin (§6, §7),
// or the WebRTC DataChannel through the rendezvous broker (§13, rtc-link.js) when the daemon's
// addresses are out of reach. The framed protocol both links speak is framed.js. Subscriptions
// survive transport changes: each remembers the id of the last event it delivered and resumes
// from it, so a reconnect replays exactly what was missed (or the daemon sends a snapshot).

import { authorization, authorizedFetch, daemonInfo, hexBytes, loadDevice, pinnedHashes,
  rememberDaemon } from "./auth.js";
import { FramedLink, HANDSHAKE_TIMEOUT, join, withTimeout } from "./framed.js";

const enc = new TextEncoder();
const dec = new TextDecoder();
const BACKOFF = [500, 1000, 2000, 4000, 8000, 15000];
const WT_RETRY_AFTER = 60_000; // after WebTransport failed, use another path for this long
const INFO_TIMEOUT = 5000; // GET /v1/info from the daemon's address (unreachable: dropped SYNs)

// -- WebTransport ----------------------------------------------------------------------------

class WebTransportLink extends FramedLink {
  kind = "webtransport";
  path = "direct";

  constructor(wt, writer, reader) {
    super();
    this.wt = wt;
    this.writer = writer;
    this.reader = reader;
    this.large = new Map(); // ref -> payload or waiter
  }

  static async open(url, hashes, device) {
    const wt = new WebTransport(url, {
      serverCertificateHashes: hashes.map((h) => ({ algorithm: "sha-256", value: hexBytes(h) })),
    });
    wt.closed.catch(() => {}); // a failed connection rejects it; the caller sees ready fail
    try {
      await withTimeout(wt.ready, HANDSHAKE_TIMEOUT, "WebTransport");
      const control = await wt.createBidirectionalStream();
      const link = new WebTransportLink(wt, control.writable.getWriter(),
        control.readable.getReader());
      link.readLarge();
      const welcome = await link.handshake(device, (cert) => hashes.includes(cert),
        "WebTransport");
      link.heartbeat(welcome.heartbeat || 20);
      link.pump();
      wt.closed.then(() => link.shut(), () => link.shut());
      return link;
    } catch (error) {
      try { wt.close(); } catch { /* already closed */ }
      throw error;
    }
  }

  writeBytes(bytes) {
    return this.writer.write(bytes);
  }

  async readChunk() {
    const { value, done } = await this.reader.read();
    if (done) throw new Error("the control stream ended");
    return value;
  }

  expandLarge(message) {
    const have = this.large.get(message.ref);
    if (have && have.payload !== undefined) {
      this.large.delete(message.ref);
      return Promise.resolve(have.payload);
    }
    return new Promise((resolve) => this.large.set(message.ref, { resolve }));
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

  teardown() {
    clearInterval(this.beat);
    this.wt.close({ closeCode: 0, reason: "done" });
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
  path = "direct";
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
 * One logical connection. `onStatus({state, transport, path, retryIn, problem})` reports what the
 * indicator shows: state is "connecting", "live" or "offline"; path is "direct",
 * "peer-to-peer" or "relayed"; problem, when set, why no path will work until this browser is
 * paired again (an old device record: shown to the person, not only in the console).
 *
 * The path to the daemon, tried in this order at each (re)connection:
 * 1. WebTransport pinned by `serverCertificateHashes`, when the browser has WebTransport: on the
 *    daemon's own origin when its /v1/info answers (it carries the signed certificate hashes);
 *    from any other origin with the addresses and hashes the device record keeps (pairing
 *    stored them; every link refreshes them, refreshDaemon), never asking the daemon's HTTPS;
 * 2. HTTP with streamed SSE, only on the daemon's own origin (it served this page);
 * 3. the WebRTC DataChannel (rtc-link.js), when the device record names a rendezvous broker
 *    a browser can reach (`rendezvous.url`, the pairing payload's `rv`: ws:// or wss://): from any other origin, from Safari, or when
 *    the daemon's addresses are unreachable; it signs with the device key and boxes with the
 *    box key that pairing stored (rtc-signal.js deviceSignalingBox).
 */
export class Client {
  constructor({ onStatus = () => {}, preferWebTransport = true } = {}) {
    this.onStatus = onStatus;
    this.preferWT = preferWebTransport && typeof WebTransport !== "undefined";
    this.link = null;
    this.linking = null;
    this.wtFailedAt = 0;
    this.infoFailedAt = 0;
    this.linked = false; // a link was made: later ones ask /v1/info afresh
    this.subs = new Set();
    this.wakers = new Set();
    this.lastStatus = null;
    this.problem = null; // why no path can work (until this browser pairs again), or null
    this.info = null;
    this.firstFrameAt = null; // performance.now() when the first frame arrived (measured)
    if (typeof window !== "undefined") {
      // A network change: a WebRTC link's ICE path may be gone with the old address, and
      // aiortc cannot restart ICE, so dial anew (the subscriptions resume exactly).
      window.addEventListener("online", () => {
        this.wtFailedAt = this.infoFailedAt = 0; // another network: the daemon may be near
        if (this.link?.kind === "webrtc") this.link.end("the browser came back online");
        this.wakeAll();
      });
      // The network is gone: say so now (a stream can hang for a long time before it fails)
      // and break the streams, which retry with backoff and resume when it is back.
      window.addEventListener("offline", () => {
        this.status("offline", { retryIn: null });
        this.drop();
      });
      document.addEventListener("visibilitychange", () => {
        if (document.visibilityState === "visible") this.wakeAll();
      });
    }
  }

  status(state, extra = {}) {
    const live = this.link && !this.link.closed ? this.link : null;
    this.lastStatus = { state, transport: live?.kind ?? null, path: live?.path ?? null,
      problem: this.problem, ...extra };
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
    const missing = missingTransports(device);
    if (missing) { // for the person to read, as what only pairing again mends (below)
      this.problem = missing;
      throw new Error(missing);
    }
    if (dialable(device)) this.loadRtc(); // now, while whoever served this page answers
    let info = null;
    let hashes = [];
    let failure = null;
    // An address that did not answer is not asked again for a while when the WebRTC path is
    // there: a re-dial after a network change must not wait for INFO_TIMEOUT each time.
    const skipInfo = (dialable(device) && Date.now() - this.infoFailedAt < WT_RETRY_AFTER)
      || !ownOrigin(device); // /v1/info would go to the host of this page, not the daemon
    if (!skipInfo) {
      try {
        // fresh after the first link: a cached answer says nothing about reachability now
        const asked = daemonInfo(device, { refresh: this.linked });
        ({ info, hashes } = await withTimeout(asked, INFO_TIMEOUT, "GET /v1/info"));
        this.info = info; // remote_modes: what a paired device may choose (modes.js)
        this.infoFailedAt = 0;
      } catch (error) {
        if (/identity changed/.test(error.message)) { // never talk to another key
          this.problem = error.message;
          throw error;
        }
        failure = error; // unreachable from here: the WebRTC path may still reach it
        this.infoFailedAt = Date.now();
      }
    }
    let link = null;
    const urls = info?.quic?.length ? info.quic : device.daemon.quic || [];
    // From another origin there is no /v1/info to ask: pin what the device record keeps (from
    // pairing, refreshed over every link since: rememberDaemon). On the daemon's own origin an
    // address that did not answer /v1/info is not dialled either.
    const direct = !ownOrigin(device);
    if (direct) hashes = pinnedHashes(device);
    if ((info || direct) && this.preferWT && urls.length && hashes.length
      && Date.now() - this.wtFailedAt > WT_RETRY_AFTER) {
      try {
        link = await WebTransportLink.open(pickWebTransportURL(urls), hashes, device);
      } catch (error) {
        console.warn("WebTransport unavailable:", error);
        this.wtFailedAt = Date.now();
        failure = error;
      }
    }
    if (!link && info && ownOrigin(device)) {
      await authorization(device); // fails early when the daemon's info is unusable
      link = new HTTPLink();
    }
    if (!link && dialable(device)) {
      try {
        link = await this.openRtc(device);
      } catch (error) {
        console.warn("the WebRTC path failed:", error);
        failure = error;
      }
    }
    if (!link) {
      // What only pairing again can mend (an old device record, another daemon key) is for the
      // person to read: status() carries it as `problem` until a link opens.
      if (failure && /pair (it|this device) again/.test(failure.message)) {
        this.problem = failure.message;
      }
      throw failure || new Error("no path to the daemon");
    }
    if (link.kind !== "sse") await this.refreshDaemon(link, device);
    this.problem = null;
    this.link = link;
    this.linked = true;
    link.ended.then(() => {
      if (this.link === link) this.link = null;
    });
    return link;
  }

  /** The WebRTC path's modules, fetched once: the app must be able to switch to it after
   * the host that served it (the daemon itself, on its own origin) went out of reach. */
  loadRtc() {
    this.rtcModules ??= Promise.all([import("./rtc-link.js"), import("./rtc-signal.js"),
      import("./vendor/mqtt.esm.js")]); // what rtc-signal.js imports when it meets a broker
    this.rtcModules.catch(() => { this.rtcModules = null; }); // offline: the next try fetches
    return this.rtcModules;
  }

  async openRtc(device) {
    const [{ RtcLink }, signal] = await this.loadRtc();
    const box = await signal.deviceSignalingBox(device); // "pair it again" for an old record
    const link = await RtcLink.open({ device, box, topics: await signal.deviceTopics(device),
      brokerUrl: device.rendezvous.url, daemonKey: box.daemonKey });
    link.onPath = () => {
      if (this.link === link && this.lastStatus?.state === "live") this.status("live");
    };
    return link;
  }

  /** /v1/info over a new WebTransport or WebRTC link (the daemon's HTTPS may be out of reach,
   * and from another origin it is never asked): what a paired device may choose (modes.js),
   * and the daemon's current addresses and certificates, kept in the device record for the next
   * direct dial (auth.js rememberDaemon). */
  async refreshDaemon(link, device) {
    let reply;
    try {
      reply = await link.request("GET", "/v1/info");
    } catch (error) {
      link.close();
      throw error;
    }
    if (reply.status !== 200) return;
    this.info = reply.body;
    try {
      await rememberDaemon(device, reply.body);
    } catch (error) {
      console.warn("could not keep the daemon's certificates:", error); // the link still works
    }
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
            if (link.kind === "sse" && error instanceof TypeError) link.close(); // choose again
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
      let link = null;
      try {
        link = await this.connect();
        if (sub.closed) break;
        const deliver = (message) => {
          this.firstFrameAt ??= performance.now();
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
        // fetch() failed: the daemon's address no longer answers. Choose the path again (a
        // WebRTC link may reach it); an HTTP link never ends by itself.
        if (link?.kind === "sse" && error instanceof TypeError) link.close();
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

/** Whether the WebRTC path can be tried: the device's broker is one a browser can reach (MQTT
 * over WebSocket; not mqtt:// nor an ntfy rendezvous, which this app does not speak), and this
 * browser has RTCPeerConnection (a WebKit built without WebRTC, as Debian's WebKitGTK, has
 * none; Safari has it). */
const dialable = (device) => typeof RTCPeerConnection !== "undefined"
  && /^wss?:\/\//.test(device.rendezvous?.url || "");

/** Why no path can ever work here, or null: away from the daemon's own origin only WebTransport
 * and WebRTC reach it, and some browsers have neither. */
function missingTransports(device) {
  if (ownOrigin(device) || typeof WebTransport !== "undefined"
    || typeof RTCPeerConnection !== "undefined") return null;
  return "this browser has neither WebTransport nor WebRTC, which the app needs from this "
    + "address: open it from the computer's own address instead";
}

const sameOrigin = (url, origin) => {
  try {
    return new URL(url, origin).origin === origin;
  } catch {
    return false;
  }
};

/** Whether this page comes from the daemon that `device` is paired with: where its requests
 * (`device.base`, or this origin) reach the daemon and HTTP may carry them. Another host (the
 * exported app on a static origin) must never get a device's signed requests. */
function ownOrigin(device) {
  const here = location.origin;
  if (device.base) return sameOrigin(device.base, here);
  const addresses = device.daemon?.http || [];
  return !addresses.length || addresses.some((url) => sameOrigin(url, here)); // none: legacy
}

function pickWebTransportURL(urls) {
  // Prefer the address this page was loaded from (same network path), else the first.
  const host = typeof location !== "undefined" ? location.hostname : "";
  return urls.find((u) => new URL(u).hostname === host.replace(/^\[|\]$/g, "")) || urls[0];
}
