// What every dashboard page shares: calls to the JSON API with the token, the error banner, the
// login box, live updates (the event stream, or polling), and DOM building without innerHTML.
// The pages carry no data: everything shown comes from /v1 through api().

const ROOT = document.documentElement.dataset.root || "";
const TOKEN_KEY = "mnist-jobs-token";
// ?live=poll makes this tab poll instead of reading event streams (for a proxy that holds a stream
// back until it ends); ?live=events undoes it.
const LIVE_KEY = "mnist-jobs-live";
const LIVE_ASKED = new URLSearchParams(location.search).get("live");
if (LIVE_ASKED === "poll") sessionStorage.setItem(LIVE_KEY, "poll");
else if (LIVE_ASKED === "events") sessionStorage.removeItem(LIVE_KEY);
export const POLL_MS = 1000;
export const FINAL = new Set(["succeeded", "failed", "cancelled"]);

export class ApiError extends Error {
  constructor(message, { status = 0, problem = null, quiet = false } = {}) {
    super(message);
    this.status = status;
    this.problem = problem;
    this.quiet = quiet; // already shown another way (the login box)
  }
}

// ---- the token (sessionStorage: this tab only, gone when it closes) ----

const token = () => sessionStorage.getItem(TOKEN_KEY);

function askForToken(rejected) {
  const box = document.getElementById("login");
  if (!box.hidden) return;
  box.hidden = false;
  document.getElementById("main").hidden = true;
  if (rejected) {
    document.getElementById("login-reason").textContent = "The server did not accept that token; try another.";
  }
  document.getElementById("token").focus();
}

function setUpSession() {
  document.getElementById("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    location.reload(); // the page starts again, now with the token
  });
  const logout = document.getElementById("logout");
  logout.hidden = token() === null;
  logout.addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  document.getElementById("error-close").addEventListener("click", () => {
    document.getElementById("error").hidden = true;
  });
}

// ---- the error banner: a failed call is always shown, never swallowed ----

export function showError(error) {
  if (error instanceof ApiError && error.quiet) return;
  if (error && error.name === "AbortError") return;
  const message = error instanceof Error ? error.message : String(error);
  document.getElementById("error-text").textContent = `${new Date().toLocaleTimeString()}: ${message}`;
  document.getElementById("error").hidden = false;
}

// ---- calls to the API ----

// JSON.parse, keeping integers past 2^53 (seeds go up to 2^63 - 1) exact as BigInt.
export function parseJSON(text) {
  return JSON.parse(text, (key, value, context) =>
    typeof value === "number" && !Number.isSafeInteger(value) && context && /^-?\d+$/.test(context.source)
      ? BigInt(context.source)
      : value,
  );
}

async function problemOf(response) {
  try {
    const body = parseJSON(await response.text());
    return body && typeof body === "object" ? body : null;
  } catch {
    return null;
  }
}

// fetch() of ROOT + path with the token; any answer but 2xx/304 is an ApiError (401: the login box).
export async function api(path, { method = "GET", body, accept = "application/json", signal } = {}) {
  const headers = { Accept: accept };
  if (token() !== null) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(ROOT + path, { method, headers, body, signal, credentials: "same-origin" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(`${method} ${path}: the server cannot be reached (${error.message})`);
  }
  if (response.status === 401) {
    askForToken(token() !== null);
    throw new ApiError("a token is needed", { status: 401, quiet: true });
  }
  if (!response.ok) {
    const problem = await problemOf(response);
    const detail = problem && problem.detail ? `: ${problem.detail}` : "";
    const title = (problem && problem.title) || response.statusText;
    throw new ApiError(`${method} ${path}: ${response.status} ${title}${detail}`, {
      status: response.status,
      problem,
    });
  }
  return response;
}

export async function getJSON(path, options) {
  return parseJSON(await (await api(path, options)).text());
}

export async function sendJSON(method, path, bodyText) {
  return parseJSON(await (await api(path, { method, body: bodyText })).text());
}

// ---- pictures and downloads, fetched with the token (an <img src> or a link could not send it) ----

const shown = new WeakMap(); // img -> the ETag of what it shows

// A picture the server cannot draw just now (429: this token's new pictures a minute; 503: every
// render slot busy) keeps the one shown: the next refresh asks again.
export async function loadPicture(img, path) {
  let response;
  try {
    response = await api(path, { accept: "image/png" });
  } catch (error) {
    if (error instanceof ApiError && [429, 503].includes(error.status) && img.src) return;
    throw error;
  }
  const etag = response.headers.get("ETag");
  if (etag !== null && shown.get(img) === etag) return; // unchanged: no flicker, no new blob
  const url = URL.createObjectURL(await response.blob());
  const old = img.src;
  img.addEventListener("load", () => old.startsWith("blob:") && URL.revokeObjectURL(old), { once: true });
  img.src = url;
  img.hidden = false;
  shown.set(img, etag);
}

export async function download(path, filename) {
  const blob = await (await api(path, { accept: "application/octet-stream" })).blob();
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// ---- live updates: the event stream when the server has one, else polling every second ----

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function setLiveMode(mode) {
  document.documentElement.dataset.live = mode;
  document.getElementById("live-mode").textContent =
    mode === "events" ? "live: event stream" : `live: polling every ${POLL_MS / 1000} s`;
}

// Server-Sent Events read from a fetch() body (EventSource cannot send the Authorization header).
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let kind = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    // a chunk may end between the \r and \n of one line end: keep a trailing \r for the next one
    const hold = buffer.endsWith("\r") ? 1 : 0;
    const lines = buffer.slice(0, buffer.length - hold).replace(/\r\n?/g, "\n").split("\n");
    buffer = lines.pop() + (hold ? "\r" : "");
    for (const line of lines) {
      if (line === "") {
        if (data.length) onEvent(kind, parseJSON(data.join("\n")));
        kind = "message";
        data = [];
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") kind = text;
        else if (field === "data") data.push(text);
      }
    }
  }
}

// Keeps a page current until done(): with `events` (a stream URL, "" when the server has none) each
// event goes to onEvent(kind, data); without, poll() runs every second. After a dropped stream it
// polls once (to catch up) and connects again; a stream that is not there (404) means polling.
export function live({ events, onEvent, poll, done = () => false }) {
  const controller = new AbortController();
  const guarded = async () => {
    try {
      await poll();
    } catch (error) {
      showError(error);
    }
  };
  async function polling() {
    setLiveMode("polling");
    while (!done()) {
      await sleep(POLL_MS);
      if (!document.hidden) await guarded();
    }
  }
  async function streaming() {
    setLiveMode("events");
    // done() may turn true on a refresh between events: close the stream then, not at the next event
    const watcher = setInterval(() => done() && controller.abort(), POLL_MS);
    try {
      await follow();
    } finally {
      clearInterval(watcher);
    }
  }
  async function follow() {
    while (!done()) {
      try {
        const response = await api(events, { accept: "text/event-stream", signal: controller.signal });
        await readEvents(response.body, (kind, data) => {
          try {
            onEvent(kind, data);
          } catch (error) {
            showError(error);
          }
          if (done()) controller.abort();
        });
      } catch (error) {
        if (error.name === "AbortError") return;
        if (error instanceof ApiError && error.status === 404) return polling();
        showError(error);
        if (error instanceof ApiError && error.quiet) return;
      }
      if (done()) return;
      await sleep(POLL_MS);
      await guarded();
    }
  }
  return events && sessionStorage.getItem(LIVE_KEY) !== "poll" ? streaming() : polling();
}

// At most one call of fn per `ms`, the last request always honoured.
export function throttle(fn, ms = POLL_MS) {
  let last = 0;
  let timer = null;
  return () => {
    if (timer !== null) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(async () => {
      timer = null;
      last = Date.now();
      try {
        await fn();
      } catch (error) {
        showError(error);
      }
    }, wait);
  };
}

// ---- the DOM, built from text (never innerHTML with data) ----

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "hidden") node.hidden = true;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.flat().filter((child) => child !== null && child !== undefined).map(asNode));
  return node;
}

const asNode = (child) => (child instanceof Node ? child : document.createTextNode(String(child)));

export const link = (path, text) => el("a", { href: ROOT + path }, text);
export const cell = (content, className) => el("td", { class: className }, content);
export const dash = "—";

export function statusBadge(status) {
  return el("span", { class: `status status-${status}` }, status);
}

export function setStatus(node, status) {
  node.textContent = status;
  node.className = `status status-${status}`;
}

export function progressBar(fraction, label) {
  return el(
    "span",
    { class: "progress-line" },
    el("progress", { max: 1, value: fraction }),
    el("span", { class: "muted" }, label),
  );
}

export const percent = (fraction, digits = 2) =>
  fraction === null || fraction === undefined ? dash : `${(100 * fraction).toFixed(digits)} %`;
export const points = (difference) =>
  difference === null || difference === undefined ? dash : `${(100 * difference).toFixed(2)} pp`;
export const number = (value, digits = 4) =>
  value === null || value === undefined ? dash : Number(value).toFixed(digits);
export const pixels = (permutationSeed) =>
  permutationSeed === null || permutationSeed === undefined ? "natural" : `permuted (${permutationSeed})`;
export const shortId = (id) => id.slice(0, 8);

// A time as YYYY-MM-DD HH:MM:SS in the browser's time zone (the ISO 8601 UTC value as its title).
export function when(iso) {
  if (!iso) return dash;
  const d = new Date(iso);
  const two = (n) => String(n).padStart(2, "0");
  const local = `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  return el("time", { datetime: iso, title: iso }, local);
}

export function bytes(count) {
  if (count < 1024) return `${count} B`;
  if (count < 1024 * 1024) return `${(count / 1024).toFixed(1)} KiB`;
  return `${(count / 1024 / 1024).toFixed(1)} MiB`;
}

export function progressText(progress) {
  if (!progress) return "";
  const loss = progress.loss === null || progress.loss === undefined ? "" : `, loss ${number(progress.loss)}`;
  return `${percent(progress.fraction, 0)} · epoch ${progress.epoch}, step ${progress.step}/${progress.steps}${loss}`;
}

// Runs a page's start function once the DOM is there, with every failure on the banner.
export function start(main) {
  setUpSession();
  main(document.getElementById("main").dataset).catch(showError);
}
