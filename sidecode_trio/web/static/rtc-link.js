// The WebRTC path (PROTOCOL.md §13): the framed protocol of framed.js over a DataChannel that
// rtc-signal.js dials through the rendezvous broker. What differs from WebTransport:
//
// * frames travel in binary messages of at most 16 KiB (a frame may span messages, a message may
//   hold several): the channel is an ordered byte stream; nothing is ever "large";
// * auth signs the daemon's DTLS certificate hash, which the daemon signed in its answer
//   (`welcome.cert` must be that fingerprint);
// * the keep-alive is text: the daemon pings ({"type":"ping","n"}) every few seconds and we
//   answer with a pong. We also watch the pings: a link that has heard nothing for three ping
//   intervals is dead (a phone that left Wi-Fi; aiortc has no ICE restart), and so is one whose
//   ICE state stays "disconnected" for DISCONNECTED_GRACE or goes "failed". The link then ends and
//   the client dials anew, resuming every subscription from its last event id.
//
// `path` is "peer-to-peer" or "relayed": whether the selected ICE candidate pair has a relay
// (TURN) candidate on either side, from pc.getStats().

import { FramedLink, withTimeout } from "./framed.js";
import { connectBroker, dial } from "./rtc-signal.js";

const CHUNK = 16 * 1024; // bytes per DataChannel message (what every browser takes)
const DISCONNECTED_GRACE = 5000; // ms in ICE "disconnected" before the link counts as dead
const SILENCE_FIRST = 15_000; // ms of silence that kill a link before two pings set the pace
const SILENCE_MIN = 3000;
const SILENCE_MAX = 20_000;
const WATCH_EVERY = 500; // ms
const DIAL_TIMEOUT = 30_000; // ms for a whole dial (ICE through a NAT it cannot cross: ~30 s)

const hexOfFingerprint = (fp) => fp.split(" ")[1].replace(/:/g, "").toLowerCase();

/** The candidate types of the pair ICE selected: {local, remote} ("host", "srflx", "prflx",
 * "relay"), or null before one is selected. */
export async function selectedPair(pc) {
  const stats = [...(await pc.getStats()).values()];
  const byId = new Map(stats.map((s) => [s.id, s]));
  const transport = stats.find((s) => s.type === "transport" && s.selectedCandidatePairId);
  const pair = transport ? byId.get(transport.selectedCandidatePairId)
    : stats.find((s) => s.type === "candidate-pair" && s.nominated && s.state === "succeeded");
  if (!pair) return null;
  return {
    local: byId.get(pair.localCandidateId)?.candidateType,
    remote: byId.get(pair.remoteCandidateId)?.candidateType,
  };
}

export const pathOf = (pair) =>
  pair && (pair.local === "relay" || pair.remote === "relay") ? "relayed" : "peer-to-peer";

export class RtcLink extends FramedLink {
  kind = "webrtc";
  path = "peer-to-peer";

  constructor(pc, channel) {
    super();
    this.pc = pc;
    this.channel = channel;
    this.inbox = []; // binary messages not read yet
    this.wake = null;
    this.heard = Date.now();
    this.lastPing = 0;
    this.silence = SILENCE_FIRST;
    this.onPath = () => {};
    this.why = null; // why the link ended (for the console and the tests)
    channel.onmessage = (event) => this.received(event.data);
    channel.onclose = () => this.end("the DataChannel closed");
    pc.addEventListener("connectionstatechange", () => this.iceState());
    this.watch = setInterval(() => {
      if (Date.now() - this.heard > this.silence) this.end("the daemon's pings stopped");
    }, WATCH_EVERY);
  }

  /** Dial the daemon through the broker at `brokerUrl` and authenticate: an open link.
   * `box`, `topics`: the device's signaling box and topics; `daemonKey`: the daemon's Ed25519
   * public key (bytes); `policy`: "all" or "relay" (RTCIceTransportPolicy). */
  static async open({ device, box, topics, brokerUrl, daemonKey, policy = "all" }) {
    const broker = await connectBroker(brokerUrl);
    let pc = null;
    let link = null;
    try {
      await broker.subscribe(topics.toDevice);
      const dialing = dial({ box, daemonKey, topics, broker, policy });
      let dialed;
      try {
        dialed = await withTimeout(dialing, DIAL_TIMEOUT, "dialling the daemon");
      } catch (error) {
        dialing.then((late) => late.pc.close(), () => {}); // a late success is not used
        throw error;
      }
      pc = dialed.pc;
      link = new RtcLink(pc, dialed.channel); // before any await: the first ping is near
      const signed = dialed.fps.filter((fp) => fp.startsWith("sha-256 ")).map(hexOfFingerprint);
      await link.handshake(device, (cert) => signed.includes(cert), "WebRTC");
      link.pump();
      await link.refreshPath();
      const ice = pc.sctp?.transport?.iceTransport;
      ice?.addEventListener("selectedcandidatepairchange", () => link.refreshPath());
      return link;
    } catch (error) {
      if (link) link.end(`the handshake failed: ${error.message || error}`);
      else pc?.close();
      throw error;
    } finally {
      broker.close().catch(() => {});
    }
  }

  async refreshPath() {
    try {
      this.pair = await selectedPair(this.pc);
    } catch {
      return; // closed meanwhile
    }
    const path = pathOf(this.pair);
    if (path !== this.path) {
      this.path = path;
      this.onPath(path);
    }
  }

  received(data) {
    const now = Date.now();
    this.heard = now;
    if (typeof data !== "string") {
      this.inbox.push(new Uint8Array(data));
      this.wake?.();
      return;
    }
    let message = null;
    try {
      message = JSON.parse(data);
    } catch { /* ignored, like any unknown text */ }
    if (message?.type === "ping") {
      if (this.lastPing) {
        const interval = now - this.lastPing;
        this.silence = Math.min(SILENCE_MAX, Math.max(SILENCE_MIN, 3 * interval + 500));
      }
      this.lastPing = now;
      try {
        this.channel.send(JSON.stringify({ type: "pong", n: message.n }));
      } catch { /* closing */ }
    } else if (message?.type === "close") {
      this.end(`the daemon closed the link: ${message.code} ${message.message || ""}`);
    }
  }

  iceState() {
    const state = this.pc.connectionState;
    clearTimeout(this.grace);
    if (state === "failed" || state === "closed") this.end(`the peer connection ${state}`);
    else if (state === "disconnected") {
      this.grace = setTimeout(() => this.end("the peer connection stayed disconnected"),
        DISCONNECTED_GRACE);
    }
  }

  end(why) {
    if (this.closed) return;
    this.why = why;
    console.warn("WebRTC link:", why);
    this.shut();
  }

  writeBytes(bytes) {
    if (this.closed || this.channel.readyState !== "open") {
      return Promise.reject(new Error("disconnected"));
    }
    for (let at = 0; at < bytes.length; at += CHUNK) this.channel.send(bytes.subarray(at, at + CHUNK));
    return Promise.resolve();
  }

  async readChunk() {
    while (!this.inbox.length) {
      if (this.closed) throw new Error("the link ended");
      await new Promise((resolve) => { this.wake = resolve; });
      this.wake = null;
    }
    return this.inbox.shift();
  }

  teardown() {
    clearInterval(this.watch);
    clearTimeout(this.grace);
    this.wake?.();
    this.channel.onclose = null;
    try { this.channel.close(); } catch { /* closed */ }
    this.pc.close();
  }
}
