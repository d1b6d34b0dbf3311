// Thumbnails of the images this browser sent. The daemon keeps only each image's type, size and
// SHA-256 (its bytes go to the CLI), so the picture is remembered here, small, by that hash.

import { el } from "./render.js";

const KEY = "sidecode-thumbs";
const MAX = 60; // the newest thumbnails kept (each a few KB)
const SIDE = 160; // px, the longer side of a stored thumbnail

function load() {
  try {
    return JSON.parse(localStorage.getItem(KEY) || "{}");
  } catch {
    return {};
  }
}

const thumbs = load();
const waiting = new Map(); // sha256 -> [img] shown before the thumbnail was ready

async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Keep a small copy of `file` (shown at `url` meanwhile) under its SHA-256. */
export async function rememberThumb(file, url) {
  const sha = await sha256Hex(await file.arrayBuffer());
  thumbs[sha] = { url, at: Date.now() }; // this page can use the full picture at once
  const picture = new Image();
  picture.src = url;
  try {
    await picture.decode();
    const scale = Math.min(1, SIDE / Math.max(picture.width, picture.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(picture.width * scale));
    canvas.height = Math.max(1, Math.round(picture.height * scale));
    canvas.getContext("2d").drawImage(picture, 0, 0, canvas.width, canvas.height);
    const data = canvas.toDataURL("image/webp", 0.8);
    const stored = load();
    stored[sha] = { data, at: Date.now() };
    const newest = Object.entries(stored).sort((a, b) => b[1].at - a[1].at).slice(0, MAX);
    localStorage.setItem(KEY, JSON.stringify(Object.fromEntries(newest)));
    thumbs[sha] = { ...thumbs[sha], data };
  } catch { /* not decodable here or storage full: the placeholder stays */ }
  for (const img of waiting.get(sha) || []) img.src = thumbs[sha].data || url;
  waiting.delete(sha);
}

/** An image of a sent message: its thumbnail when this browser has one, else a labelled tile. */
export function imageThumb(ref) {
  const known = thumbs[ref.sha256];
  const kind = (ref.media_type || "image").replace("image/", "").toUpperCase();
  const size = ref.bytes ? ` · ${Math.max(1, Math.round(ref.bytes / 1024))} KB` : "";
  const img = el("img", { class: "sent-thumb", alt: `${kind} image${size}`,
    src: known ? known.data || known.url : null, "data-sha": ref.sha256 });
  if (!known) {
    waiting.set(ref.sha256, [...(waiting.get(ref.sha256) || []), img]);
    return el("span", { class: "sent-image placeholder", title: `${kind}${size}` },
      img, el("span", { class: "sent-image-label" }, `🖼 ${kind}${size}`));
  }
  return el("span", { class: "sent-image" }, img);
}
