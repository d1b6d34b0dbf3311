// Turning transcript pieces into DOM: markdown (marked + DOMPurify), highlighted code
// (highlight.js) and diffs (our own phone-sized view, highlighted by file type). The libraries
// are vendored classic scripts that set window.marked, window.DOMPurify and window.hljs.

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

/** Say something to a screen reader once, through the page's alert region (index.html). */
export function announce(text) {
  const region = document.getElementById("announcer");
  if (!region) return;
  region.textContent = "";
  setTimeout(() => { region.textContent = text; }, 50);
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
  addCopyButtons(target);
}

/** Markdown that grows while it streams, rendered incrementally: blocks that are finished
 * (another block has started after them) are parsed, sanitized and highlighted once and never
 * touched again; only the block still being written is re-rendered, without highlighting. */
export class StreamingMarkdown {
  constructor(target) {
    this.done = el("div", { class: "md-done" });
    this.live = el("div", { class: "md-live" });
    target.replaceChildren(this.done, this.live);
    this.committed = ""; // the text the finished blocks were made of
    this.tail = null;
    this.stats = { commits: 0, tailRenders: 0 };
  }

  update(text, complete) {
    if (!text.startsWith(this.committed)) { // replaced, not extended: start again
      this.committed = "";
      this.seen = undefined;
      this.done.replaceChildren();
    }
    const rest = text.slice(this.committed.length);
    let finished = rest;
    // a block can only have finished if a line ended since the last look
    const grown = rest.slice(this.seen === undefined ? 0 : Math.max(0, this.seen - 1));
    this.seen = rest.length;
    if (!complete && !grown.includes("\n")) {
      finished = "";
    } else if (!complete) {
      const tokens = window.marked.lexer(rest, { gfm: true });
      let last = tokens.length - 1;
      while (last >= 0 && tokens[last].type === "space") last -= 1;
      finished = tokens.slice(0, Math.max(0, last)).map((t) => t.raw).join("");
      if (!rest.startsWith(finished)) finished = ""; // the lexer rewrote something: wait
    }
    if (finished) {
      this.done.append(markdownFragment(finished, true));
      this.committed += finished;
      this.seen = rest.length - finished.length;
      this.stats.commits += 1;
    }
    const tail = rest.slice(finished.length);
    if (tail !== this.tail) {
      this.live.replaceChildren(tail ? markdownFragment(tail, false) : "");
      this.tail = tail;
      this.stats.tailRenders += 1;
    }
  }
}

/** Sanitized DOM for `text`; `highlight`: colour its code blocks and give them Copy. */
export function markdownFragment(text, highlight) {
  const html = window.marked.parse(text, { gfm: true, breaks: false, async: false });
  const fragment = window.DOMPurify.sanitize(html, { USE_PROFILES: { html: true },
    RETURN_DOM_FRAGMENT: true });
  for (const link of fragment.querySelectorAll("a[href]")) {
    link.target = "_blank";
    link.rel = "noopener noreferrer";
  }
  if (highlight) {
    for (const block of fragment.querySelectorAll("pre code")) window.hljs.highlightElement(block);
    addCopyButtons(fragment);
  }
  return fragment;
}

/** Say something politely (after what is being read), through the page's status region. */
export function announcePolitely(text) {
  const region = document.getElementById("polite");
  if (region) region.textContent = text;
}

// -- diffs -----------------------------------------------------------------------------------

const FOLD_LINES = 80; // a diff longer than this shows its first hunk; the others fold
const HUNK_START = 30; // a single hunk longer than FOLD_LINES shows this many rows at first
const SPECIAL_FILES = { makefile: "makefile", dockerfile: "dockerfile", "cmakelists.txt": "cmake" };

/** The highlight.js language for a file, by name or extension; null when unknown. */
export function languageOf(path) {
  const name = basename(path || "").toLowerCase();
  if (SPECIAL_FILES[name]) return SPECIAL_FILES[name];
  const ext = name.includes(".") ? name.split(".").pop() : "";
  return ext && window.hljs?.getLanguage(ext) ? ext : null;
}

/** A unified diff's hunks: [{header, oldStart, newStart, lines: [{kind, no, code}]}], where kind
 * is "ins", "del" or "ctx" and `no` the line's number on its side (the new one for context). */
export function parseUnified(text) {
  const hunks = [];
  let hunk = null;
  let oldNo = 0;
  let newNo = 0;
  for (const line of (text || "").split("\n")) {
    const head = /^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@/.exec(line);
    if (head) {
      oldNo = Number(head[1]);
      newNo = Number(head[2]);
      hunk = { header: line, oldStart: oldNo, newStart: newNo, lines: [] };
      hunks.push(hunk);
    } else if (hunk && line.startsWith("+")) {
      hunk.lines.push({ kind: "ins", no: newNo++, code: line.slice(1) });
    } else if (hunk && line.startsWith("-")) {
      hunk.lines.push({ kind: "del", no: oldNo++, code: line.slice(1) });
    } else if (hunk && line.startsWith(" ")) {
      hunk.lines.push({ kind: "ctx", no: newNo++, code: line.slice(1) });
      oldNo++;
    } // "--- a", "+++ b" before the first hunk, "\ No newline at end of file": not lines
  }
  return hunks;
}

function highlightLine(code, language) {
  const node = el("code", { class: "dc" });
  if (language && code) {
    node.innerHTML = window.hljs.highlight(code, { language, ignoreIllegals: true }).value;
  } else {
    node.textContent = code;
  }
  return node;
}

function hunkRows(hunk, language) {
  const sign = { ins: "+", del: "−", ctx: " " };
  return hunk.lines.map((line) => el("div", { class: `dl ${line.kind}` },
    el("span", { class: "ln", "aria-hidden": "true" }, String(line.no)),
    el("span", { class: "sg" }, sign[line.kind]),
    highlightLine(line.code, language)));
}

/** A unified diff for a phone: one narrow gutter (the line's own number), wrapped lines (a
 * toggle scrolls them instead), syntax highlighting by file type, and a long diff folded by
 * hunk (a folded hunk is highlighted when it is opened). `showPath` names the file in the
 * head; a card or tool row that already says which file leaves it out. */
export function renderDiff(fileDiff, cwd, { showPath = true } = {}) {
  const root = cwd ? cwd.replace(/\/?$/, "/") : null;
  const path = root && fileDiff.path.startsWith(root) ? fileDiff.path.slice(root.length)
    : fileDiff.path;
  const language = languageOf(fileDiff.path);
  const box = el("div", { class: "diff wrap", "data-language": language || "" });
  const toggle = el("button", { type: "button", class: "diff-wrap", "aria-pressed": "true",
    title: "Wrap long lines", onclick: () => {
      const wrapped = box.classList.toggle("wrap");
      toggle.setAttribute("aria-pressed", String(wrapped));
    } }, "⤶ wrap");
  box.append(el("div", { class: "diff-head" },
    showPath ? el("span", { class: "diff-path", title: fileDiff.path, text: path })
      : el("span", { class: "diff-path" }),
    el("span", { class: "added", "aria-label": `${fileDiff.added} added` }, `+${fileDiff.added}`),
    el("span", { class: "removed", "aria-label": `${fileDiff.removed} removed` },
      `−${fileDiff.removed}`),
    fileDiff.truncated ? el("span", { class: "muted", text: "(truncated)" }) : null,
    toggle));
  const hunks = parseUnified(fileDiff.unified);
  const total = hunks.reduce((n, h) => n + h.lines.length, 0);
  const body = el("div", { class: "diff-body" });
  hunks.forEach((hunk, i) => {
    const label = `lines ${hunk.newStart}–${hunk.newStart + Math.max(0, hunk.lines.filter(
      (l) => l.kind !== "del").length - 1)} · ${hunk.lines.length} rows`;
    if (total > FOLD_LINES && i > 0) {
      const rows = el("div", { class: "hunk-rows" });
      const fold = el("details", { class: "hunk folded" },
        el("summary", {}, `▸ ${label}`), rows);
      fold.addEventListener("toggle", () => {
        if (fold.open && !rows.childElementCount) rows.append(...hunkRows(hunk, language));
      });
      body.append(fold);
    } else if (hunk.lines.length > FOLD_LINES) { // one long hunk: its start, then the rest
      const shown = { ...hunk, lines: hunk.lines.slice(0, HUNK_START) };
      const more = el("button", { type: "button", class: "hunk-more", onclick: () => {
        more.replaceWith(...hunkRows({ ...hunk, lines: hunk.lines.slice(HUNK_START) },
          language));
      } }, `▾ ${hunk.lines.length - HUNK_START} more rows`);
      body.append(el("div", { class: "hunk" },
        el("div", { class: "hunk-head" }, label), ...hunkRows(shown, language), more));
    } else {
      body.append(el("div", { class: "hunk" },
        el("div", { class: "hunk-head" }, label), ...hunkRows(hunk, language)));
    }
  });
  box.append(body);
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

/** A cost as people write it: "$0.42", "<$0.01" for a few tenths of a cent, nothing at 0. */
export function formatCost(usd) {
  if (usd === null || usd === undefined || !(usd > 0)) return "";
  return usd < 0.01 ? "<$0.01" : `$${usd.toFixed(2)}`;
}

/** A "Copy" button on each code block (touch has no easy select-all inside a scroller). */
export function addCopyButtons(target) {
  for (const pre of target.querySelectorAll("pre")) {
    if (pre.querySelector(":scope > .copy")) continue;
    const button = el("button", { type: "button", class: "copy", "aria-label": "Copy code",
      onclick: async () => {
        const code = pre.querySelector("code") || pre;
        try {
          await navigator.clipboard.writeText(code.innerText);
          button.textContent = "Copied";
        } catch {
          button.textContent = "Copy failed";
        }
        setTimeout(() => { button.textContent = "Copy"; }, 1500);
      } }, "Copy");
    pre.classList.add("has-copy");
    pre.append(button);
  }
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
