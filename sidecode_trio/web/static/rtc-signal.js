// Sealed signaling for the WebRTC path, the browser's side of sidecode_trio/rtc/signaling.py
// (PROTOCOL.md "Rendezvous"): the same envelope, topics and DTLS fingerprint statements, byte for
// byte. A paired app can dial with what pairing stored (auth.js): deviceSignalingBox(device),
// deviceTopics(device), connectBroker(device.rendezvous.url), then dial({box, daemonKey, ...}).
//
// Envelope: {"v":1,"from":b64url(sender ed25519 pk),"box":b64url(nonce24 || box(sig64 || body))}
// body = {"to":b64url(recipient pk),"ts":seconds,"n":b64url(16 random bytes),"msg":{type,...}}
// The signature covers the exact body bytes; the box is NaCl crypto_box between the two parties'
// X25519 box keys.
//
// Keys. The app's device (deviceSignalingBox): signs envelopes and fingerprint statements with its
// non-extractable WebCrypto Ed25519 key, and boxes with the X25519 box key it registered at pairing
// (auth.js says why that secret may be extractable); the daemon's box key is derived from its
// Ed25519 key (crypto_sign_ed25519_pk_to_curve25519), as the daemon derives its own. The seed
// constructor (`new SignalingBox(seed, ...)`, tests, a device that derives its box key as the
// Python one does) signs with tweetnacl and derives its X25519 secret from the seed.

import "./vendor/nacl-fast.min.js"; // tweetnacl 1.0.3: sets self.nacl

const nacl = self.nacl;
const enc = new TextEncoder();
const dec = new TextDecoder();

export const ENVELOPE_VERSION = 1;
export const MAX_SKEW = 120; // seconds a message may be away from our clock
export const MAX_ENVELOPE = 64 * 1024;
export const REPLAY_PER_SENDER = 1000;
const TOPIC_CONTEXT = "sidecode-trio topic v1\n";
const FP_CONTEXT = "sidecode-dtls-fp/1";

export class SignalingRefused extends Error {
  constructor(code, message) {
    super(message);
    this.code = code; // malformed, not_paired, forged, wrong_recipient, stale, replayed, fingerprint
  }
}

// -- encoding ----------------------------------------------------------------------------------

export const b64url = (bytes) => {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
};
export const unb64url = (text) => {
  if (typeof text !== "string" || !/^[A-Za-z0-9_-]*$/.test(text)) throw new Error("not base64url");
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  return Uint8Array.from(atob(b64 + "==".slice(0, (4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
};
const hex = (bytes) => [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");

/** JSON with sorted keys and no spaces: Python's json.dumps(sort_keys=True, separators=(",",":"))
 * for ASCII data (all a statement holds). */
export function canon(value) {
  if (Array.isArray(value)) return "[" + value.map(canon).join(",") + "]";
  if (value && typeof value === "object") {
    return "{" + Object.keys(value).sort().map((k) => JSON.stringify(k) + ":" + canon(value[k])).join(",") + "}";
  }
  return JSON.stringify(value);
}

// -- Ed25519 -> X25519 (what ed2curve does; checked against PyNaCl in tests/test_rtc_browser.py) --

const P = 2n ** 255n - 19n;
const mod = (a) => ((a % P) + P) % P;
function pow(base, exp) {
  let result = 1n;
  base = mod(base);
  while (exp > 0n) {
    if (exp & 1n) result = mod(result * base);
    base = mod(base * base);
    exp >>= 1n;
  }
  return result;
}

/** The X25519 public key of an Ed25519 public key: u = (1 + y) / (1 - y) mod p. */
export function x25519Public(edPublic) {
  if (edPublic.length !== 32) throw new SignalingRefused("malformed", "a key is 32 bytes");
  let y = 0n;
  for (let i = 31; i >= 0; i--) y = (y << 8n) | BigInt(i === 31 ? edPublic[i] & 0x7f : edPublic[i]);
  if (y >= P || y === 1n) throw new SignalingRefused("malformed", "not an Ed25519 public key");
  let u = mod((1n + y) * pow(1n - y, P - 2n));
  const out = new Uint8Array(32);
  for (let i = 0; i < 32; i++, u >>= 8n) out[i] = Number(u & 0xffn);
  return out;
}

/** The X25519 secret key of an Ed25519 seed: SHA-512 of the seed, first half, clamped. */
export function x25519Secret(seed) {
  const h = nacl.hash(seed).slice(0, 32);
  h[0] &= 248;
  h[31] &= 127;
  h[31] |= 64;
  return h;
}

// -- sealing and opening -----------------------------------------------------------------------

/** The keys of a seed: tweetnacl signs with it and the box key is derived from it. */
function seedKeys(seed) {
  const keys = nacl.sign.keyPair.fromSeed(seed);
  return {
    publicKey: keys.publicKey,
    sign: async (bytes) => nacl.sign.detached(bytes, keys.secretKey),
    boxSecret: x25519Secret(seed),
  };
}

/** One party's end of the sealed channel (the device's, in the app). `seed`: its Ed25519 seed
 * (or null with `keys`); `isPaired(pkBytes)`: may this sender talk to us (a device: only its
 * daemon's key). `keys` = {publicKey: Ed25519 pk bytes, sign: async (bytes) => 64-byte
 * signature, boxSecret: X25519 secret bytes} replaces the seed's (deviceSignalingBox). Peers'
 * box keys are derived from their Ed25519 keys (the daemon's always is). */
export class SignalingBox {
  constructor(seed, isPaired, maxSkew = MAX_SKEW, keys = seedKeys(seed)) {
    if (!(keys.boxSecret instanceof Uint8Array) || keys.boxSecret.length !== 32) {
      throw new Error("a box secret is 32 bytes");
    }
    this.publicKey = keys.publicKey;
    this.sign = keys.sign;
    this.boxSecret = keys.boxSecret;
    this.isPaired = isPaired;
    this.maxSkew = maxSkew;
    this.seen = new Map(); // sender b64 -> Map(nonce -> forget after)
    this.peerBoxKeys = new Map(); // peer pk b64 -> its derived X25519 key
  }

  /** A peer's X25519 box key, derived from its Ed25519 public key (bytes). */
  peerBoxKey(peer) {
    const id = b64url(peer);
    let key = this.peerBoxKeys.get(id);
    if (!key) {
      key = x25519Public(peer);
      if (this.peerBoxKeys.size > 100) this.peerBoxKeys.clear();
      this.peerBoxKeys.set(id, key);
    }
    return key;
  }

  /** The envelope (a string) carrying `message` ({type, ...}) to `recipient` (pk bytes). Async:
   * the app's device key signs through WebCrypto. */
  async seal(recipient, message, now = Date.now() / 1000) {
    const body = enc.encode(JSON.stringify({
      to: b64url(recipient), ts: now, n: b64url(nacl.randomBytes(16)), msg: message,
    }));
    const signature = await this.sign(body);
    const signed = new Uint8Array(64 + body.length);
    signed.set(signature);
    signed.set(body, 64);
    const nonce = nacl.randomBytes(24);
    const cipher = nacl.box(signed, nonce, this.peerBoxKey(recipient), this.boxSecret);
    const box = new Uint8Array(24 + cipher.length);
    box.set(nonce);
    box.set(cipher, 24);
    return JSON.stringify({ v: ENVELOPE_VERSION, from: b64url(this.publicKey), box: b64url(box) });
  }

  /** {sender, message, ts} from an envelope (string or bytes), or SignalingRefused saying why. */
  open(data, now = Date.now() / 1000) {
    const text = typeof data === "string" ? data : dec.decode(data);
    if (text.length > MAX_ENVELOPE) throw new SignalingRefused("malformed", "the envelope is too large");
    let sender, sealed;
    try {
      const envelope = JSON.parse(text);
      if (!envelope || envelope.v !== ENVELOPE_VERSION) throw new Error("version");
      sender = unb64url(envelope.from);
      sealed = unb64url(envelope.box);
    } catch {
      throw new SignalingRefused("malformed", "not a signaling envelope");
    }
    if (sender.length !== 32 || sealed.length < 24 + 16 + 64) {
      throw new SignalingRefused("malformed", "bad key or box length");
    }
    if (!this.isPaired(sender)) throw new SignalingRefused("not_paired", "the sender is not a paired key");
    let signed = null;
    try {
      signed = nacl.box.open(sealed.subarray(24), sealed.subarray(0, 24), this.peerBoxKey(sender), this.boxSecret);
    } catch {
      signed = null;
    }
    if (!signed || !nacl.sign.detached.verify(signed.subarray(64), signed.subarray(0, 64), sender)) {
      throw new SignalingRefused("forged", "the envelope does not open or its signature is wrong");
    }
    let body;
    try {
      body = JSON.parse(dec.decode(signed.subarray(64)));
    } catch {
      throw new SignalingRefused("malformed", "the body is not JSON");
    }
    if (!body || typeof body.to !== "string" || typeof body.n !== "string" ||
        typeof body.ts !== "number" || !body.msg || typeof body.msg !== "object" ||
        Array.isArray(body.msg) || typeof body.msg.type !== "string") {
      throw new SignalingRefused("malformed", "the body lacks to, ts, n or msg");
    }
    if (body.to !== b64url(this.publicKey)) {
      throw new SignalingRefused("wrong_recipient", "the message was meant for another key");
    }
    if (Math.abs(now - body.ts) > this.maxSkew) {
      throw new SignalingRefused("stale", `the message is ${Math.round(now - body.ts)}s away from our clock`);
    }
    this.remember(b64url(sender), body.n, body.ts, now);
    return { sender, message: body.msg, ts: body.ts };
  }

  remember(sender, nonce, ts, now) {
    let seen = this.seen.get(sender);
    if (!seen) this.seen.set(sender, (seen = new Map()));
    for (const [n, until] of seen) if (until < now) seen.delete(n);
    if (seen.has(nonce)) throw new SignalingRefused("replayed", "this message was already received");
    if (seen.size >= REPLAY_PER_SENDER) {
      throw new SignalingRefused("replay_window_full", "too many messages from this sender; slow down");
    }
    seen.set(nonce, Math.max(ts, now) + this.maxSkew);
  }
}

// -- the app's paired device (auth.js) ----------------------------------------------------------

/** The SignalingBox of the app's paired `device` (auth.js loadDevice()): it signs with the
 * device's non-extractable WebCrypto Ed25519 key, boxes with the box key registered at pairing,
 * and hears only from the paired daemon. `box.daemonKey` is that daemon's key (bytes), for
 * dial({box, daemonKey: box.daemonKey, ...}). */
export async function deviceSignalingBox(device) {
  if (!device || !device.privateKey || !device.daemon || !device.daemon.pk) {
    throw new Error("this browser is not paired with a daemon");
  }
  if (!device.box || !device.box.secretKey) {
    throw new Error("this browser was paired before it could use the peer-to-peer path: pair it again");
  }
  const boxSecret = unb64url(device.box.secretKey);
  if (boxSecret.length !== 32 || b64url(nacl.box.keyPair.fromSecretKey(boxSecret).publicKey) !== device.box.publicKey) {
    throw new Error("this browser's stored box key is damaged: pair it again");
  }
  const key = device.privateKey;
  const daemonPk = device.daemon.pk;
  const box = new SignalingBox(null, (pk) => b64url(pk) === daemonPk, MAX_SKEW, {
    publicKey: unb64url(device.publicKey),
    sign: async (bytes) => new Uint8Array(await crypto.subtle.sign("Ed25519", key, bytes)),
    boxSecret,
  });
  box.daemonKey = unb64url(daemonPk);
  return box;
}

/** The paired `device`'s broker topics ({toDaemon, toDevice}), from the rendezvous secret both
 * sides computed at pairing; the broker is `device.rendezvous.url` (null: the daemon named none). */
export async function deviceTopics(device) {
  if (!device || !device.rendezvous || !device.rendezvous.secret) {
    throw new Error("this browser was paired without a rendezvous secret: pair it again");
  }
  return topics(unb64url(device.rendezvous.secret));
}

/** A connection attempt's id: 128 random bits, hex. */
export const newCid = () => hex(nacl.randomBytes(16));

// -- topics ------------------------------------------------------------------------------------

/** The device's two broker topics from its rendezvous secret (bytes), as rtc/signaling.topics. */
export async function topics(secret, prefix = "sidecode") {
  const key = await crypto.subtle.importKey("raw", secret, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const label = async (direction) =>
    hex(new Uint8Array(await crypto.subtle.sign("HMAC", key, enc.encode(TOPIC_CONTEXT + direction)))).slice(0, 32);
  return { toDaemon: `${prefix}/${await label("to-daemon")}`, toDevice: `${prefix}/${await label("to-device")}` };
}

// -- DTLS fingerprint statements (pinning) -----------------------------------------------------

const FP_LINE = /^a=fingerprint:(\S+) ([0-9A-Fa-f:]+)\s*$/gm;

/** The set of a=fingerprint values in `sdp`, normalised ("sha-256 AB:CD:..."), sorted. */
export function sdpFingerprints(sdp) {
  const found = new Set([...sdp.matchAll(FP_LINE)].map((m) => `${m[1].toLowerCase()} ${m[2].toUpperCase()}`));
  return [...found].sort();
}

async function sha256hex(text) {
  return hex(new Uint8Array(await crypto.subtle.digest("SHA-256", enc.encode(text))));
}

/** What a fingerprint signature covers (the daemon's also binds the exact offer it answered). */
export async function fingerprintStatement(role, cid, fps, offerSdp = null) {
  const statement = { ctx: FP_CONTEXT, role, cid, fps };
  if (offerSdp !== null) statement.offer = await sha256hex(offerSdp);
  return enc.encode(canon(statement));
}

/** Our SDP's fingerprints and our signature over their statement: {fps, fp_sig}. */
export async function signFingerprints(box, role, cid, sdp, offerSdp = null) {
  const fps = sdpFingerprints(sdp);
  if (!fps.length) throw new Error("the SDP has no a=fingerprint line");
  const statement = await fingerprintStatement(role, cid, fps, offerSdp);
  return { fps, fp_sig: b64url(await box.sign(statement)) };
}

/** Refuse ("fingerprint") unless `publicKey` signed exactly the fingerprints of `sdp`. Call it
 * before setRemoteDescription. */
export async function checkFingerprints(publicKey, role, cid, sdp, fps, fpSig, offerSdp = null) {
  if (!Array.isArray(fps) || !fps.length || canon(sdpFingerprints(sdp)) !== canon(fps)) {
    throw new SignalingRefused("fingerprint", "the SDP's DTLS fingerprints differ from the signed ones");
  }
  let ok = false;
  try {
    const statement = await fingerprintStatement(role, cid, fps, offerSdp);
    ok = nacl.sign.detached.verify(statement, unb64url(fpSig), publicKey);
  } catch {
    ok = false;
  }
  if (!ok) throw new SignalingRefused("fingerprint", `the ${role}'s DTLS fingerprint signature is wrong`);
}

// -- the broker ----------------------------------------------------------------------------------

/** `url` as it may be shown: the credentials a rendezvous URL may hold (`user:password@`, the
 * pairing payload's "rv") as `***` (rtc/auth.py redact). */
export const redactUrl = (url) => String(url).replace(/^([A-Za-z][-+.A-Za-z0-9]*:\/\/).*@/, "$1***@");

/** `url` without its user information, and the credentials that were there ({username,
 * password}, or null): rtc/auth.py split_url. */
export function splitBrokerUrl(url) {
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`not a broker URL: ${redactUrl(url)}`);
  }
  if (!parsed.username && !parsed.password) return { url, credentials: null };
  const credentials = {
    username: decodeURIComponent(parsed.username), password: decodeURIComponent(parsed.password),
  };
  parsed.username = parsed.password = "";
  return { url: parsed.href, credentials };
}

/** A broker connection (MQTT over WebSocket: ws:// on loopback, wss:// elsewhere), loaded only
 * when used: {subscribe(topic), publish(topic, text), messages: async iterator of [topic, text],
 * close()}. Credentials in `url` go in CONNECT as the daemon sends them (a bare token: the
 * password, with an empty user name; MQTT.js's own URL parsing would make ":token" the user). */
export async function connectBroker(url, { timeout = 10_000 } = {}) {
  const { default: mqtt } = await import("./vendor/mqtt.esm.js");
  const { url: bare, credentials } = splitBrokerUrl(url);
  const client = mqtt.connect(bare, {
    ...(credentials || {}),
    protocolVersion: 4, reconnectPeriod: 0, connectTimeout: timeout, clean: true,
    clientId: "sc-" + newCid().slice(0, 16),
    // keepalive on setInterval: the default ("auto") starts a blob: worker for its timers,
    // which the app's policy (worker-src 'self') refuses, with a violation each time
    timerVariant: "native",
  });
  await new Promise((resolve, reject) => {
    client.once("connect", resolve);
    client.once("error", reject);
    client.once("close", () => reject(new Error(`cannot reach the rendezvous ${redactUrl(url)}`)));
  }).catch((error) => {
    client.end(true);
    throw error;
  });
  const queue = [];
  let wake = null;
  client.on("message", (topic, payload) => {
    queue.push([topic, dec.decode(payload)]);
    if (wake) wake();
  });
  return {
    subscribe: (topic) => client.subscribeAsync(topic, { qos: 1 }),
    publish: (topic, text) => client.publishAsync(topic, text, { qos: 1 }),
    async next() {
      while (!queue.length) await new Promise((resolve) => (wake = resolve));
      return queue.shift();
    },
    close: () => client.endAsync(),
  };
}

// -- dialling the daemon -------------------------------------------------------------------------

const GATHER_DEADLINE = 2000; // ms: non-trickle gathering, bounded (UDP blocked: ~40 s otherwise)
const RELAY_GRACE = 250; // ms after the first relay candidate
const REPLY_TIMEOUT = 15_000; // ms for each of the daemon's replies

async function nextFor(broker, box, cid, deadline) {
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error("the daemon did not answer through the rendezvous");
    const [, text] = await Promise.race([
      broker.next(), new Promise((resolve) => setTimeout(() => resolve([null, null]), left)),
    ]);
    if (text === null) continue;
    try {
      const { message } = box.open(text);
      if (message.cid === cid) return message;
    } catch {
      // not for us, or not authentic: ignored, as the daemon ignores ours
    }
  }
}

function gathered(pc) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") resolve();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
    pc.addEventListener("icecandidate", (e) => e.candidate?.type === "relay" && setTimeout(resolve, RELAY_GRACE));
    setTimeout(resolve, GATHER_DEADLINE);
  });
}

/** One attempt to reach the daemon (PROTOCOL.md §13): hello → ice, offer → answer, both
 * fingerprint statements checked before the answer is applied. `broker` is subscribed to
 * `topics.toDevice`. Resolves {pc, channel, cid, fps} once the DataChannel is open (`fps`: the
 * daemon's signed fingerprints; Chromium keeps only one of them in pc.remoteDescription). */
export async function dial({ box, daemonKey, topics: t, broker, policy = "all" }) {
  const cid = newCid();
  await broker.publish(t.toDaemon, await box.seal(daemonKey, { type: "hello", cid }));
  const ice = await nextFor(broker, box, cid, Date.now() + REPLY_TIMEOUT);
  if (ice.type !== "ice") throw new Error(`the daemon answered hello with ${ice.type}`);
  const iceServers = ice.servers.map((s) => ({
    urls: s.urls, ...(s.username ? { username: s.username, credential: s.credential } : {}),
  }));
  const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: policy });
  try {
    const channel = pc.createDataChannel("sidecode", { ordered: true });
    channel.binaryType = "arraybuffer";
    const opened = new Promise((resolve, reject) => {
      channel.onopen = resolve;
      pc.onconnectionstatechange = () =>
        pc.connectionState === "failed" && reject(new Error("the peer connection failed"));
    });
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const sdp = pc.localDescription.sdp;
    const { fps, fp_sig } = await signFingerprints(box, "device", cid, sdp);
    await broker.publish(t.toDaemon, await box.seal(daemonKey, { type: "offer", cid, sdp, fps, fp_sig }));
    const answer = await nextFor(broker, box, cid, Date.now() + REPLY_TIMEOUT);
    if (answer.type === "refused") throw new SignalingRefused(answer.code, `the daemon refused: ${answer.message}`);
    if (answer.type !== "answer") throw new Error(`the daemon answered the offer with ${answer.type}`);
    await checkFingerprints(daemonKey, "daemon", cid, answer.sdp, answer.fps, answer.fp_sig, sdp);
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    await opened;
    return { pc, channel, cid, fps: answer.fps };
  } catch (error) {
    pc.close();
    throw error;
  }
}
