// The comparisons (/comparisons): a form that starts one (POST /v1/comparisons) and the list, newest
// first, refreshed by the event stream (or polled every second).
import { cell, el, getJSON, link, live, percent, pixels, progressBar, sendJSON, shortId, showError, start, throttle, when, statusBadge } from "./common.js";

const PAGE_SIZE = 20;
const INTEGER = /^\d+$/;

function cellsSummary(comparison) {
  return el(
    "div",
    { class: "labels" },
    comparison.cells.map((c) => el("span", { class: "label" }, `${c.architecture} ${pixels(c.permutation_seed)}: ${percent(c.mean, 1)}`)),
  );
}

function row(comparison) {
  const progress = comparison.progress;
  const ended = progress.succeeded + progress.failed + progress.cancelled;
  return el(
    "tr",
    {},
    cell(link(`/comparisons/${comparison.id}`, comparison.name || shortId(comparison.id))),
    cell(statusBadge(comparison.status)),
    cell(progressBar(progress.fraction, `${ended}/${progress.total} ended`), "progress-col"),
    cell(String(progress.total), "num"),
    cell(cellsSummary(comparison)),
    cell(when(comparison.created_at)),
  );
}

function render(page, query) {
  const rows = page.items.map(row);
  const empty = el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No comparisons yet: start one above."));
  document.getElementById("comparisons-body").replaceChildren(...(rows.length ? rows : [empty]));
  const older = document.getElementById("older");
  older.hidden = !page.next_cursor;
  if (page.next_cursor) older.search = `?cursor=${encodeURIComponent(page.next_cursor)}`;
  document.getElementById("newest").hidden = !query.get("cursor");
}

// The form as a ComparisonCreate body: only what differs from the server's defaults is sent.
function body(form) {
  const seeds = form.elements.namedItem("seeds").value.trim();
  if (!INTEGER.test(seeds)) throw new Error("seeds: a whole number of seeds, 1 or more");
  const members = [`"seeds":${seeds}`];
  const all = [...form.querySelectorAll('input[name="architectures"]')];
  const chosen = all.filter((box) => box.checked).map((box) => box.value);
  if (chosen.length !== all.length) members.push(`"architectures":${JSON.stringify(chosen)}`);
  const permutations = form.elements.namedItem("permutation_seeds");
  if (permutations.value.trim() !== permutations.dataset.default) {
    const list = permutations.value.split(",").map((s) => s.trim()).filter(Boolean);
    for (const s of list) if (s !== "none" && !INTEGER.test(s)) throw new Error(`permutation seeds: "${s}" is neither none nor a number`);
    members.push(`"permutation_seeds":[${list.map((s) => (s === "none" ? "null" : s)).join(",")}]`);
  }
  const epochs = form.elements.namedItem("epochs").value.trim();
  if (epochs) members.push(`"spec":{"epochs":${Number(epochs)}}`);
  const name = form.elements.namedItem("name").value.trim();
  if (name) members.push(`"name":${JSON.stringify(name)}`);
  members.push(`"reuse":${form.elements.namedItem("reuse").checked}`);
  return `{${members.join(",")}}`;
}

start(async () => {
  const form = document.getElementById("comparison-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = document.getElementById("start-comparison");
    button.disabled = true;
    try {
      const comparison = await sendJSON("POST", "/v1/comparisons", body(form));
      location.assign(`${document.documentElement.dataset.root || ""}/comparisons/${comparison.id}`);
    } catch (error) {
      button.disabled = false;
      showError(error);
    }
  });
  const query = new URLSearchParams(location.search);
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (query.get("cursor")) params.set("cursor", query.get("cursor"));
  const refresh = async () => render(await getJSON(`/v1/comparisons?${params}`), query);
  await refresh();
  const later = throttle(refresh);
  await live({ events: document.documentElement.dataset.eventsAll, poll: refresh, onEvent: later });
});
