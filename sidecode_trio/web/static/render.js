// Turning transcript pieces into DOM: markdown (marked + DOMPurify), highlighted code
// (highlight.js) and diffs (diff2html). The libraries are vendored classic scripts that set
// window.marked, window.DOMPurify, window.hljs and window.Diff2Html.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

/** Markdown to sanitized HTML in `target`, with code blocks highlighted. */
export function renderMarkdown(target, text) {
  const html = window.marked.parse(text || "", { gfm: true, breaks: false, async: false });
  target.innerHTML = window.DOMPurify.sanitize(html, { USE_PROFILES: { html: true } });
  for (const link of target.querySelectorAll("a[href]")) {
    link.target = "_blank";
    link.rel = "noopener noreferrer";
  }
  for (const block of target.querySelectorAll("pre code")) {
    window.hljs.highlightElement(block);
  }
}

/** A unified diff as a line-by-line diff view. */
export function renderDiff(fileDiff, cwd) {
  const box = el("div", { class: "diff" });
  const inside = cwd && fileDiff.path.startsWith(cwd.replace(/\/?$/, "/"));
  const path = inside ? fileDiff.path.slice(cwd.replace(/\/?$/, "/").length) : fileDiff.path;
  const header = el("div", { class: "diff-head" },
    el("span", { class: "diff-path", title: fileDiff.path, text: path }),
    el("span", { class: "added", text: `+${fileDiff.added}` }),
    el("span", { class: "removed", text: `−${fileDiff.removed}` }),
    fileDiff.truncated ? el("span", { class: "muted", text: "(truncated)" }) : null);
  const body = el("div", { class: "diff-body" });
  body.innerHTML = window.DOMPurify.sanitize(window.Diff2Html.html(fileDiff.unified, {
    drawFileList: false, outputFormat: "line-by-line", matching: "lines",
    diffStyle: "word", renderNothingWhenEmpty: false, colorScheme: "auto",
  }));
  box.append(header, body);
  return box;
}

/** A block of code or output, highlighted when the language is known. */
export function codeBlock(text, language) {
  const code = el("code", { text: text || "" });
  if (language && window.hljs.getLanguage(language)) {
    code.className = `language-${language}`;
    window.hljs.highlightElement(code);
  }
  return el("pre", { class: "code" }, code);
}

export function formatCost(usd) {
  if (usd === null || usd === undefined) return "";
  return usd < 0.01 ? `$${usd.toFixed(4)}` : `$${usd.toFixed(2)}`;
}

export function ago(seconds) {
  if (!seconds) return "";
  const delta = Math.max(0, Date.now() / 1000 - seconds);
  if (delta < 45) return "just now";
  if (delta < 3600) return `${Math.round(delta / 60)} min ago`;
  if (delta < 86400) return `${Math.round(delta / 3600)} h ago`;
  return `${Math.round(delta / 86400)} d ago`;
}

export const basename = (path) => (path || "").replace(/\/+$/, "").split("/").pop() || path;

/** A session's title without the directives and markup of its first prompt ("[[slow:40]]",
 * "/model x", "<command-name>…"): what a person would call it; the folder when nothing is left. */
export function sessionTitle(info) {
  const raw = (info.title || "").replace(/\[\[[^\]]*\]\]/g, " ")
    .replace(/<[^>]+>/g, " ").replace(/^\s*\/\S+/, " ").replace(/[`*_#>]+/g, "")
    .replace(/\s+/g, " ").trim();
  return raw || basename(info.cwd) || "session";
}

/** A status shown by a symbol as well as its colour (and its words). */
export function statusIcon(status) {
  return { "needs-approval": "⚠ ", running: "● ", errored: "✕ ", idle: "" }[status] ?? "";
}

/** What the drawer calls a session's status. */
export function statusLabel(info) {
  if (info.status === "requires_action" || info.pending_permissions > 0) {
    return ["needs-approval", "needs approval"];
  }
  return { running: ["running", "running"], errored: ["errored", "errored"] }[info.status]
    || ["idle", "idle"];
}
