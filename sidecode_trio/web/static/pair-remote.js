// Pairing from a page that is not on the daemon's own origin (the exported app on a static host):
// the POST /v1/pair body goes where a browser can send it without the daemon's HTTPS, which it
// would refuse (self-signed certificate, no CORS):
//
// 1. over WebTransport, pinned by the payload's certificate hash (serverCertificateHashes), as an
//    open request before authentication on the control stream (PROTOCOL.md §10);
// 2. else through the payload's broker ("rv"), sealed to the daemon's key from a box key of ours,
//    the reply sealed back to that key and signed by the daemon (PROTOCOL.md §13, "Pairing over
//    the rendezvous"; the Python side is sidecode_trio/rtc/pairing.py).
//
// Both return {status, body, via}, exactly what POST /v1/pair would have answered.

// redactUrl only (the broker client is loaded when dialled); tweetnacl is loaded by then (auth.js)
import { redactUrl } from "./rtc-signal.js";

const enc = new TextEncoder();
const dec = new TextDecoder();
const WT_TIMEOUT = 8_000; // ms per WebTransport address
const RV_TIMEOUT = 20_000; // ms for the daemon's sealed reply
const MAX_SKEW = 120; // seconds
const PAIR_TOPIC_CONTEXT = "sidecode-trio pair topic v1\n";

const b64url = (bytes) => {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
};
const unb64url = (text) => {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  return Uint8Array.from(atob(b64 + "==".slice(0, (4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
};
const hexBytes = (hex) => new Uint8Array(hex.match(/../g).map((b) => parseInt(b, 16)));
const hex = (bytes) => [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");

function deadline(ms, what) {
  let timer;
  const promise = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out`)), ms);
  });
  return { promise, clear: () => clearTimeout(timer) };
}

/** Send the pair request `request` for `payload`: WebTransport first, then the broker.
 * `boxKeys` ({publicKey, secretKey}, tweetnacl) receive the broker's sealed reply; a fresh pair
 * is made when none is given. */
export async function sendPair(payload, request, boxKeys = null) {
  const hasWebTransport = typeof WebTransport !== "undefined"; // Safari has none
  // Without WebRTC either (WebKit built without it, e.g. Debian's WebKitGTK), the broker could
  // carry the pairing but the app could never connect afterwards: pair nothing, say why.
  if (!hasWebTransport && typeof RTCPeerConnection === "undefined") {
    throw new Error("this browser has neither WebTransport nor WebRTC, which the app needs from "
      + "this address: open the pairing link on the daemon's own address (…/app/) instead");
  }
  const errors = [];
  if (!hasWebTransport && (payload.quic || []).length) {
    errors.push("this browser has no WebTransport");
  }
  if (hasWebTransport && payload.cert && (payload.quic || []).length) {
    for (const url of payload.quic) {
      try {
        return { ...(await overWebTransport(url, payload.cert, request)), via: "webtransport" };
      } catch (error) {
        errors.push(`${url}: ${error.message || error}`);
      }
    }
  }
  if (payload.rv) {
    try {
      return { ...(await overRendezvous(payload, request, boxKeys)), via: "rendezvous" };
    } catch (error) {
      errors.push(`${redactUrl(payload.rv)}: ${error.message || error}`);
    }
  }
  if (!payload.rv && !hasWebTransport) {
    errors.push("the daemon names no broker (serve --rendezvous)");
  }
  throw new Error("could not reach the daemon to pair: " + (errors.join("; ") || "no address"));
}

// -- WebTransport (§10): hello, welcome, then the open request --------------------------------

const frame = (message) => {
  const body = enc.encode(JSON.stringify(message));
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length);
  out.set(body, 4);
  return out;
};

function frameReader(reader) {
  let buffer = new Uint8Array(0);
  return async function next() {
    for (;;) {
      if (buffer.length >= 4) {
        const size = new DataView(buffer.buffer, buffer.byteOffset).getUint32(0);
        if (buffer.length >= 4 + size) {
          const message = JSON.parse(dec.decode(buffer.subarray(4, 4 + size)));
          buffer = buffer.slice(4 + size);
          return message;
        }
      }
      const { value, done } = await reader.read();
      if (done) throw new Error("the daemon closed the stream");
      const joined = new Uint8Array(buffer.length + value.length);
      joined.set(buffer);
      joined.set(value, buffer.length);
      buffer = joined;
    }
  };
}

export async function overWebTransport(url, cert, request, timeout = WT_TIMEOUT) {
  const transport = new WebTransport(url, {
    serverCertificateHashes: [{ algorithm: "sha-256", value: hexBytes(cert) }],
  });
  const limit = deadline(timeout, "WebTransport");
  const run = async () => {
    await transport.ready;
    const stream = await transport.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    const next = frameReader(stream.readable.getReader());
    await writer.write(frame({ type: "hello", versions: [1], client: "web app (pairing)" }));
    const welcome = await next();
    if (welcome.type !== "welcome") throw new Error(welcome.message || "no welcome");
    if (welcome.cert !== cert) throw new Error("the daemon presented another certificate");
    await writer.write(frame({ type: "request", id: 1, method: "POST", path: "/v1/pair", body: request }));
    for (;;) {
      const message = await next();
      if (message.type === "reply" && message.id === 1) return { status: message.status, body: message.body };
      if (message.type === "close" || (message.type === "error" && message.id === 1)) {
        throw new Error(message.message || message.code);
      }
    }
  };
  try {
    return await Promise.race([run(), limit.promise]);
  } finally {
    limit.clear();
    try {
      transport.close();
    } catch {
      // already closed
    }
  }
}

// -- the rendezvous (§13, "Pairing over the rendezvous") --------------------------------------

/** An offer's two broker topics from its one-time secret (bytes), as rtc/pairing.pairing_topics. */
export async function pairingTopics(secret, prefix = "sidecode") {
  const key = await crypto.subtle.importKey("raw", secret, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const label = async (direction) =>
    hex(new Uint8Array(await crypto.subtle.sign("HMAC", key, enc.encode(PAIR_TOPIC_CONTEXT + direction)))).slice(0, 32);
  return { toDaemon: `${prefix}/${await label("to-daemon")}`, toDevice: `${prefix}/${await label("to-device")}` };
}

export async function overRendezvous(payload, request, boxKeys = null, timeout = RV_TIMEOUT) {
  if (!/^wss?:\/\//.test(payload.rv)) {
    throw new Error(`a browser cannot reach the broker ${redactUrl(payload.rv)}: it needs a wss:// URL`);
  }
  const signal = await import("./rtc-signal.js"); // tweetnacl, the broker client
  const nacl = self.nacl;
  const keys = boxKeys || nacl.box.keyPair();
  const daemonKey = unb64url(payload.pk);
  const daemonX = signal.x25519Public(daemonKey);
  const topics = await pairingTopics(unb64url(payload.secret));
  const limit = deadline(timeout, "pairing through the rendezvous");
  const broker = await signal.connectBroker(payload.rv);
  try {
    await broker.subscribe(topics.toDevice);
    const n = b64url(nacl.randomBytes(16));
    const body = { to: b64url(daemonKey), ts: Date.now() / 1000, n, msg: { type: "pair", request } };
    const nonce = nacl.randomBytes(24);
    const cipher = nacl.box(enc.encode(JSON.stringify(body)), nonce, daemonX, keys.secretKey);
    const box = new Uint8Array(24 + cipher.length);
    box.set(nonce);
    box.set(cipher, 24);
    await broker.publish(topics.toDaemon, JSON.stringify({ v: 1, from: b64url(keys.publicKey), box: b64url(box) }));
    for (;;) {
      const [, text] = await Promise.race([broker.next(), limit.promise]);
      const reply = openReply(nacl, text, daemonKey, daemonX, keys, n);
      if (reply) return reply;
    }
  } finally {
    limit.clear();
    await broker.close();
  }
}

/** {status, body} if `text` is the daemon's reply to request `n`, sealed to `keys`; else null. */
function openReply(nacl, text, daemonKey, daemonX, keys, n) {
  try {
    const envelope = JSON.parse(text);
    if (envelope.v !== 1 || envelope.from !== b64url(daemonKey)) return null;
    const sealed = unb64url(envelope.box);
    const signed = nacl.box.open(sealed.subarray(24), sealed.subarray(0, 24), daemonX, keys.secretKey);
    if (!signed || !nacl.sign.detached.verify(signed.subarray(64), signed.subarray(0, 64), daemonKey)) return null;
    const body = JSON.parse(dec.decode(signed.subarray(64)));
    if (body.to !== b64url(keys.publicKey) || body.re !== n) return null;
    if (Math.abs(Date.now() / 1000 - body.ts) > MAX_SKEW) return null;
    if (!body.msg || body.msg.type !== "pair_reply" || typeof body.msg.status !== "number") return null;
    return { status: body.msg.status, body: body.msg.body };
  } catch {
    return null; // another device's reply, or junk: not ours
  }
}
