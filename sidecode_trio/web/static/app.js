// The web app: pairing, the session drawer, starting a session, and routing between views.
// Routes live in the fragment: #s=<session id>, #new; #pair=<payload> is a pairing link.

import { forgetDevice, loadDevice, pair, payloadFromFragment } from "./auth.js";
import { Client } from "./connection.js";
import { ago, announce, basename, el, formatCost, sessionTitle, statusIcon, statusLabel }
  from "./render.js";
import { MODE_LABELS, allowedModes } from "./modes.js";
import { SessionView } from "./session-view.js";

const $ = (id) => document.getElementById(id);
const views = ["pair-view", "unpaired-view", "new-view", "session-view", "home-view",
  "empty-view"];
const SESSIONS_KEY = "sidecode-sessions"; // the last known list, shown while offline
const OUTBOX_KEY = "sidecode-outbox"; // messages written offline, sent on reconnect
const app = { client: null, device: null, sessions: new Map(), view: null, listFeed: null,
  listed: false, stale: false, live: false, outbox: [], flushing: false };
window.sidecode = app; // for debugging from the console (and the browser tests)

function show(id) {
  for (const view of views) $(view).hidden = view !== id;
  document.body.dataset.view = id;
}

const wideScreen = matchMedia("(min-width: 900px)"); // there the drawer is a fixed column

/** Open or close the drawer. Closed (on a phone) it is inert: out of the accessibility tree
 * and the focus order; open, the page behind it is inert instead. */
function setDrawer(open) {
  const docked = wideScreen.matches;
  document.body.classList.toggle("drawer-open", open && !docked);
  $("menu").setAttribute("aria-expanded", String(open && !docked));
  $("drawer").inert = !open && !docked;
  $("main").inert = open && !docked;
  if (open && !docked) ($("drawer").querySelector("a.current, a, button") || $("drawer")).focus();
  else if (!docked && $("drawer").contains(document.activeElement)) $("menu").focus();
}
wideScreen.addEventListener("change", () => setDrawer(false));

// -- the connection indicator ----------------------------------------------------------------

// The path in use, in words (not only the dot's colour): "direct" (WebTransport or HTTP to the
// daemon's address), "peer-to-peer" (a DataChannel through the NATs), "relayed" (through TURN).
const TRANSPORT_NAMES = { webtransport: "WebTransport", sse: "HTTP", webrtc: "WebRTC" };

function onStatus({ state, transport, path, retryIn, problem }) {
  const conn = $("conn");
  const note = $("conn-problem");
  if (note.hidden !== !problem || note.textContent !== (problem || "")) {
    // what only pairing again mends gets the how-to; any other problem says what to do itself
    const again = /pair (it|this device) again/.test(problem || "");
    note.textContent = !problem ? "" : `Cannot connect: ${problem}.` + (again ? " Open a new "
      + "pairing link (sidecode-trio pair on the computer) in this browser." : "");
    note.hidden = !problem;
  }
  conn.dataset.state = state;
  conn.dataset.transport = transport || "";
  conn.dataset.path = path || "";
  const label = state === "live" ? `live · ${path || "direct"}`
    : state === "offline" ? (retryIn ? `offline · retry ${retryIn}s` : "offline")
      : state === "unpaired" ? "not paired" : "connecting…";
  const via = state === "live" && transport ? ` (${TRANSPORT_NAMES[transport] || transport})` : "";
  conn.title = label + via;
  conn.setAttribute("aria-label", `Connection: ${label}${via}`);
  $("conn-label").textContent = label;
  app.live = state === "live";
  if (app.live) flushOutbox();
  renderDrawer();
}

// -- the outbox: messages written while offline -------------------------------------------

function loadOutbox() {
  try {
    return JSON.parse(localStorage.getItem(OUTBOX_KEY) || "[]");
  } catch {
    return [];
  }
}

function saveOutbox() {
  // images stay in memory only (a few MB each); text survives a reload
  const durable = app.outbox.filter((entry) => !entry.body.images);
  localStorage.setItem(OUTBOX_KEY, JSON.stringify(durable));
  app.view?.renderOutbox(app.outbox.filter((entry) => entry.session === app.view.id));
}

/** Keep a message that could not be sent; it goes out, with the same client_id (so the
 * daemon queues it once however often it is tried), when the connection is back. */
function queueMessage(session, body) {
  app.outbox.push({ session, body, at: Date.now() });
  saveOutbox();
}

async function flushOutbox() {
  if (app.flushing || !app.outbox.length) return;
  app.flushing = true;
  try {
    for (const entry of [...app.outbox]) {
      const path = `/v1/sessions/${encodeURIComponent(entry.session)}/messages`;
      let reply;
      try {
        reply = await app.client.request("POST", path, entry.body);
      } catch {
        break; // still offline: keep them all, in order
      }
      app.outbox = app.outbox.filter((e) => e !== entry);
      if (reply.status !== 202 && app.view?.id === entry.session) {
        app.view.showError(`not sent: ${reply.body?.error?.message || reply.status}`);
        app.view.restoreDraft(entry.body.text);
      }
      saveOutbox();
    }
  } finally {
    app.flushing = false;
  }
}

// -- pairing ---------------------------------------------------------------------------------

function defaultDeviceName() {
  const ua = navigator.userAgent;
  const os = /Android/.test(ua) ? "Android" : /iPhone|iPad/.test(ua) ? "iOS"
    : /Mac OS/.test(ua) ? "macOS" : /Windows/.test(ua) ? "Windows" : /Linux/.test(ua) ? "Linux" : "";
  return `Web app${os ? " on " + os : ""}`;
}

async function showPairing(payload) {
  show("pair-view");
  $("pair-fingerprint").textContent = payload.fp;
  $("pair-scope").textContent = payload.scope;
  $("pair-name").value = defaultDeviceName();
  $("pair-error").textContent = "";
  $("pair-form").onsubmit = async (event) => {
    event.preventDefault();
    $("pair-button").disabled = true;
    try {
      await pair(payload, $("pair-name").value.trim() || defaultDeviceName());
      history.replaceState(null, "", location.pathname); // the secret leaves the address bar
      if (app.client) location.reload(); // paired again from a running app: start afresh
      else await start();
    } catch (error) {
      $("pair-error").textContent = String(error.message || error);
      $("pair-button").disabled = false;
    }
  };
}

// -- the drawer ------------------------------------------------------------------------------

function onListFrame(frame) {
  if (frame.kind === "sessions") {
    app.sessions = new Map(frame.sessions.map((s) => [s.id, s]));
    app.listed = true;
    app.stale = false;
  } else if (frame.kind === "session") {
    if (frame.session.deleted || frame.session.archived) app.sessions.delete(frame.session.id);
    else app.sessions.set(frame.session.id, frame.session);
  }
  try {
    localStorage.setItem(SESSIONS_KEY, JSON.stringify([...app.sessions.values()]));
  } catch { /* storage full or off: the list is only a convenience offline */ }
  renderDrawer();
}

/** One session as a row (the drawer and the home list share it). */
function sessionRow(s, current, onclick) {
  const [status, label] = statusLabel(s);
  return el("li", { class: status === "needs-approval" ? "waiting" : "" },
    el("a", { href: `#s=${encodeURIComponent(s.id)}`, class: s.id === current ? "current" : "",
      "data-session": s.id, "aria-current": s.id === current ? "page" : null, onclick },
    el("div", { class: "row" },
      el("span", { class: "title" }, sessionTitle(s)),
      el("span", { class: `pill ${status}`, "data-status": status }, statusIcon(status), label)),
    el("div", { class: "row muted" },
      el("span", { class: "where" }, basename(s.cwd)),
      el("span", {}, [formatCost(s.cost_usd), ago(s.last_activity)].filter(Boolean)
        .join(" · ")))));
}

function renderDrawer() {
  const current = currentSession();
  const sorted = [...app.sessions.values()].sort((a, b) => b.last_activity - a.last_activity);
  $("sessions").replaceChildren(...sorted.map((s) => sessionRow(s, current,
    () => setDrawer(false))));
  $("sessions-empty").hidden = sorted.length > 0;
  $("home-sessions").replaceChildren(...sorted.map((s) => sessionRow(s, null)));
  $("home-empty").hidden = sorted.length > 0 || !app.listed;
  $("home-loading").hidden = app.listed || sorted.length > 0; // not "no sessions": not known yet
  // shown from the last visit until the daemon sends the list: marked as such while offline
  const stale = app.stale && !app.live;
  $("home-stale").hidden = !stale;
  $("drawer-stale").hidden = !stale;
  $("home-sessions").classList.toggle("stale", stale);
  $("sessions-empty").hidden = sorted.length > 0 || !app.listed;
  // while any session waits for an answer: a badge on ☰ and the count in the page's title
  const waiting = sorted.filter((s) => statusLabel(s)[0] === "needs-approval").length;
  $("menu-badge").hidden = !waiting;
  $("menu-badge").dataset.count = waiting ? String(waiting) : ""; // drawn by CSS: not in the name
  if (waiting > (app.waiting || 0) && !app.view) {
    announce(`${waiting} session${waiting > 1 ? "s" : ""} waiting for approval`);
  }
  app.waiting = waiting;
  $("menu").setAttribute("aria-label", waiting
    ? `Sessions (${waiting} waiting for approval)` : "Sessions");
  document.title = waiting ? `(${waiting}) needs approval · sidecode` : "sidecode";
}

// -- starting a session ----------------------------------------------------------------------

const newSession = { path: null, clientId: null };

async function showNewSession() {
  show("new-view");
  closeSessionView();
  $("new-error").textContent = "";
  // only the modes this device may start a session in (its scope and the daemon's remote_modes)
  const modes = allowedModes(app.device.scope, app.client.info?.remote_modes, "default");
  const chosen = $("new-mode").value || "default";
  $("new-mode").replaceChildren(...modes.map((m) => el("option",
    { value: m, selected: m === chosen }, MODE_LABELS[m] || m)));
  const recent = await app.client.request("GET", "/v1/folders/recent");
  const folders = recent.status === 200 ? recent.body.folders : [];
  $("recent").replaceChildren(...folders.map((f) => el("li", {},
    el("button", { type: "button", class: "link", "data-path": f.path,
      onclick: () => browse(f.path) }, f.path))));
  $("recent-box").hidden = !folders.length;
  await browse(newSession.path);
}

async function browse(path) {
  const query = path ? `?path=${encodeURIComponent(path)}` : "";
  const { status, body } = await app.client.request("GET", `/v1/folders${query}`);
  if (status !== 200) {
    $("new-error").textContent = body?.error?.message || `cannot list folders (${status})`;
    return;
  }
  newSession.path = body.path ?? null;
  newSession.clientId = null; // another folder is another session
  $("folder-path").textContent = body.path || "allowed folders";
  $("folder-up").disabled = !body.parent;
  $("folder-up").onclick = () => browse(body.parent);
  $("start").disabled = !body.path;
  $("folders").replaceChildren(...body.entries.filter((e) => e.kind === "dir" || !e.kind)
    .map((entry) => el("li", {}, el("button", { type: "button", class: "link folder",
      "data-path": entry.path, onclick: () => browse(entry.path) },
    `${entry.git ? "⎇ " : "📁 "}${entry.name}`))));
}

async function startSession(event) {
  event.preventDefault();
  if (!newSession.path) return;
  // one id per session being started: a retry after an error (a 503 whose work still ran, a
  // lost reply) gets the same session back instead of a second one
  newSession.clientId ??= crypto.randomUUID();
  const body = { cwd: newSession.path, client_id: newSession.clientId };
  const prompt = $("new-prompt").value.trim();
  if (prompt) body.prompt = prompt;
  const mode = $("new-mode").value;
  if (mode && mode !== "default") body.permission_mode = mode;
  if ($("new-model").value) body.model = $("new-model").value;
  $("start").disabled = true;
  try {
    const { status, body: reply } = await app.client.request("POST", "/v1/sessions", body);
    if (status !== 201 && status !== 200) {
      throw new Error(reply?.error?.message || `status ${status}`);
    }
    newSession.clientId = null;
    $("new-prompt").value = "";
    location.hash = `s=${encodeURIComponent(reply.session.id)}`;
  } catch (error) {
    $("new-error").textContent = String(error.message || error);
  } finally {
    $("start").disabled = false;
  }
}

// -- routing ---------------------------------------------------------------------------------

function currentSession() {
  const match = /^#s=(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

function closeSessionView() {
  app.view?.close();
  app.view = null;
}

function route() {
  const id = currentSession();
  const payload = location.hash.startsWith("#pair=") ? payloadFromFragment(location.hash) : null;
  if (payload) {
    closeSessionView();
    showPairing(payload); // a pairing link opened in the running app: pair again
  } else if (location.hash === "#new") {
    showNewSession();
  } else if (id) {
    if (!app.view || app.view.id !== id) {
      closeSessionView();
      app.view = new SessionView($("session-view"), app.client, id, {
        scope: app.device.scope,
        queueMessage: (body) => queueMessage(id, body),
        outbox: () => app.outbox.filter((entry) => entry.session === id),
        onGone: () => {
          closeSessionView();
          history.replaceState(null, "", location.pathname);
          showHome("That session is gone.");
        },
      });
    }
    show("session-view");
  } else {
    closeSessionView();
    showHome();
  }
  renderDrawer();
}

function showHome(note = "") {
  show("home-view");
  $("home-note").textContent = note;
  $("home-note").hidden = !note;
}

// -- start -----------------------------------------------------------------------------------

function onPairingLink() {
  try {
    const payload = payloadFromFragment(location.hash);
    if (payload) {
      window.removeEventListener("hashchange", onPairingLink);
      showPairing(payload);
    }
  } catch (error) {
    $("empty-text").textContent = `This pairing link is damaged: ${error.message}`;
    show("empty-view");
  }
}

async function start() {
  app.device = await loadDevice();
  if (!app.device) {
    show("unpaired-view");
    onStatus({ state: "unpaired" });
    document.body.dataset.paired = "false";
    window.addEventListener("hashchange", onPairingLink); // a pairing link opened here
    return;
  }
  document.body.dataset.paired = "true";
  $("device-line").textContent = `${app.device.name} · ${app.device.scope}`;
  const mayChat = app.device.scope === "chat" || app.device.scope === "admin";
  document.body.dataset.scope = app.device.scope;
  for (const id of ["new-session", "home-new", "home-empty-new"]) {
    $(id).hidden = !mayChat; // an approve-only device answers, it does not start
  }
  // localStorage "sidecode-transport" = "sse" turns WebTransport off (troubleshooting, tests).
  const preferWebTransport = localStorage.getItem("sidecode-transport") !== "sse";
  try {
    const known = JSON.parse(localStorage.getItem(SESSIONS_KEY) || "[]");
    app.sessions = new Map(known.map((s) => [s.id, s]));
    app.stale = known.length > 0;
  } catch { /* nothing known */ }
  app.outbox = loadOutbox();
  app.client = new Client({ onStatus, preferWebTransport });
  app.listFeed = app.client.follow("/v1/events", onListFrame);
  window.addEventListener("hashchange", route);
  route();
  setInterval(renderDrawer, 30_000); // "n min ago" moves on
  setupNotifications();
}

function wire() {
  $("menu").onclick = () => setDrawer(!document.body.classList.contains("drawer-open"));
  $("scrim").onclick = () => setDrawer(false);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") setDrawer(false); });
  $("new-session").onclick = () => { setDrawer(false); location.hash = "new"; };
  $("home-new").onclick = () => { location.hash = "new"; };
  $("home-empty-new").onclick = () => { location.hash = "new"; };
  $("home-link").onclick = () => setDrawer(false);
  $("new-form").onsubmit = startSession;
  $("forget").onclick = async () => {
    if (!confirm("Forget this device's key? You will need to pair again.")) return;
    await forgetDevice();
    location.reload();
  };
  $("conn").onclick = () => app.client?.wakeAll();
}

// -- notifications (push.js belongs to the notifications feature) ----------------------------

async function setupNotifications() {
  let push;
  try {
    push = await import("./push.js");
  } catch {
    return; // a daemon without notifications
  }
  const button = $("notify-toggle");
  const refresh = async () => {
    const state = await push.pushState().catch(() => "unsupported");
    button.hidden = state === "unsupported";
    button.dataset.state = state;
    button.disabled = state === "denied";
    button.textContent = {
      enabled: "Notifications: on (turn off)",
      disabled: "Notifications: off (turn on)",
      denied: "Notifications: blocked in the browser",
    }[state] || "";
  };
  button.onclick = async () => {
    $("notify-error").textContent = "";
    try {
      if (button.dataset.state === "enabled") await push.disablePush();
      else await push.enablePush();
    } catch (error) {
      $("notify-error").textContent = String(error.message || error);
    }
    await refresh();
  };
  await refresh();
}

async function registerServiceWorker() {
  if (!("serviceWorker" in navigator)) return;
  try {
    await navigator.serviceWorker.register("sw.js", { type: "module", scope: "./" });
  } catch (error) {
    // A self-signed certificate the user clicked through is not enough for a service worker;
    // the app still works online.
    console.warn("no service worker (offline start and notifications disabled):", error);
  }
}

wire();
setDrawer(false);
registerServiceWorker();
let payload = null;
try {
  payload = payloadFromFragment(location.hash);
} catch (error) {
  $("empty-text").textContent = `This pairing link is damaged: ${error.message}`;
}
if (payload) showPairing(payload);
else start();
