// The service worker: keeps the app shell so the app starts offline (and then shows that it is
// reconnecting). Shell files are fetched network-first, so a daemon upgrade reaches the app at
// the next start; the API (/v1/...) is never cached or intercepted.
import "./sw-push.js"; // notifications (Web Push, Allow/Deny from a notification)

const CACHE = "sidecode-shell-v2"; // a new name when SHELL changes: the old cache goes
const SHELL = [
  "./", "app.js", "auth.js", "connection.js", "framed.js", "modes.js", "render.js",
  "session-view.js", "state.js", "thumbs.js",
  // the WebRTC path: the app must dial the daemon when it opens away from it
  "rtc-link.js", "rtc-signal.js", "vendor/nacl-fast.min.js", "vendor/mqtt.esm.js",
  "pair-remote.js", // pairing from another origin (a pairing link opened offline, then online)
  "push.js", "style.css", "manifest.webmanifest", "icons/icon.svg", "icons/icon-192.png",
  "icons/icon-512.png", "vendor/marked.umd.js", "vendor/purify.min.js",
  "vendor/highlight.min.js", "vendor/highlight-github.min.css",
  "vendor/highlight-github-dark.min.css",
];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL))
    .then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  const scope = new URL(self.registration.scope);
  if (event.request.method !== "GET" || url.origin !== scope.origin
    || !url.pathname.startsWith(scope.pathname)) {
    return; // the API and anything else go straight to the network
  }
  event.respondWith(networkFirst(event.request));
});

async function networkFirst(request) {
  const cache = await caches.open(CACHE);
  // The pairing fragment never reaches here (fragments are not part of requests).
  const key = request.mode === "navigate" ? "./" : request;
  try {
    const response = await fetch(request);
    if (response.ok) await cache.put(key, response.clone());
    return response;
  } catch (error) {
    // offline: any build's copy of the file (a page asks for "app.js?v=<build>")
    const cached = await cache.match(key, { ignoreSearch: true });
    if (cached) return cached;
    throw error;
  }
}
