// A comparison's page (/comparisons/{id}): GET /v1/comparisons/{id}, refreshed while any of its jobs
// changes (the event stream, or polling every second) until it ends: cells, effects, the summary.
import {
  cell,
  dash,
  el,
  getJSON,
  link,
  live,
  loadPicture,
  number,
  percent,
  pixels,
  points,
  sendJSON,
  setStatus,
  shortId,
  showError,
  start,
  throttle,
} from "./common.js";

const SUMMARY_MS = 2000; // the summary picture changes as seeds end; each redraw is a render on the server
let comparison = null;

const byId = (id) => document.getElementById(id);
const interval = (ci, format) => (ci ? `${format(ci[0])} … ${format(ci[1])}` : dash);

function renderHead() {
  byId("comparison-title").textContent = comparison.name || `Comparison ${shortId(comparison.id)}`;
  document.title = `${byId("comparison-title").textContent} · mnist-jobs`;
  setStatus(byId("comparison-status"), comparison.status);
  byId("cancel").hidden = !ongoing();
  const p = comparison.progress;
  byId("comparison-progress").value = p.fraction;
  byId("progress-text").textContent =
    `${percent(p.fraction, 0)} · ${p.succeeded} succeeded, ${p.running} running, ${p.queued} queued` +
    (p.failed ? `, ${p.failed} failed` : "") +
    (p.cancelled ? `, ${p.cancelled} cancelled` : "") +
    ` of ${p.total} jobs`;
  const failure = byId("comparison-failure");
  failure.hidden = !comparison.error;
  failure.textContent = comparison.error || "";
  const spec = Object.entries(comparison.spec).filter(([, value]) => value !== null);
  byId("comparison-grid").textContent =
    `seeds ${comparison.seeds.join(", ")}` +
    (spec.length ? ` · ${spec.map(([key, value]) => `${key} ${value}`).join(", ")}` : "") +
    ` · results ${comparison.reuse ? "reused where they exist" : "trained anew"}`;
}

// Every seed of the comparison: its accuracy in this cell once that job succeeded, linked to the job.
function seedValues(c) {
  return el(
    "div",
    { class: "labels" },
    comparison.seeds.map((seed, i) => {
      const at = c.seeds.indexOf(seed);
      const value = at < 0 ? dash : percent(c.values[at], 1);
      const text = `seed ${seed}: ${value}`;
      return c.job_ids[i] ? el("span", { class: "label" }, link(`/jobs/${c.job_ids[i]}`, text)) : el("span", { class: "label" }, text);
    }),
  );
}

function renderCells() {
  const rows = comparison.cells.map((c) =>
    el(
      "tr",
      {},
      cell(c.architecture),
      cell(pixels(c.permutation_seed)),
      cell(c.param_count.toLocaleString(), "num"),
      cell(String(c.n), "num"),
      cell(el("strong", {}, percent(c.mean)), "num"),
      cell(interval(c.ci95, (x) => percent(x)), "num"),
      cell(c.std === null ? dash : `${(100 * c.std).toFixed(2)} pp`, "num"),
      cell([seedValues(c), ...c.failed.map((reason) => el("div", { class: "failure" }, reason))]),
    ),
  );
  byId("cells").tBodies[0].replaceChildren(...rows);
}

function renderEffects() {
  const rows = comparison.effects.map((e) =>
    el(
      "tr",
      {},
      cell([el("code", {}, e.name), el("div", { class: "muted" }, e.description)]),
      cell(el("strong", {}, points(e.estimate)), "num"),
      cell(interval(e.ci95, points), "num"),
      cell(e.p_value === null ? dash : e.p_value < 1e-4 ? e.p_value.toExponential(1) : number(e.p_value), "num"),
      cell(e.excludes_zero === null ? dash : e.excludes_zero ? "yes" : "no"),
      cell(e.test),
      cell(String(e.n), "num"),
    ),
  );
  const empty = el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No effect for this grid."));
  byId("effects").tBodies[0].replaceChildren(...(rows.length ? rows : [empty]));
}

function render(next) {
  comparison = next;
  renderHead();
  renderCells();
  renderEffects();
}

// A failed comparison goes on with its other cells: it is watched until no job is left to end.
const ongoing = () => comparison.progress.queued + comparison.progress.running > 0;

async function redrawWhileRunning(id) {
  while (ongoing()) {
    await loadPicture(byId("summary"), `/v1/comparisons/${id}/summary.png`).catch(showError);
    await new Promise((resolve) => setTimeout(resolve, SUMMARY_MS));
  }
}

start(async ({ comparisonId }) => {
  const refresh = async () => render(await getJSON(`/v1/comparisons/${comparisonId}`));
  await refresh();
  byId("cancel").addEventListener("click", async () => {
    try {
      render(await sendJSON("POST", `/v1/comparisons/${comparisonId}/cancel`));
    } catch (error) {
      showError(error);
    }
  });
  const drawing = redrawWhileRunning(comparisonId);
  const later = throttle(refresh);
  await live({
    events: document.documentElement.dataset.eventsAll,
    poll: refresh,
    done: () => !ongoing(),
    onEvent: (kind, data) => {
      if (comparison.job_ids.includes(String(data.job_id || (data.id ?? "")))) later();
    },
  });
  await refresh();
  await drawing;
  await loadPicture(byId("summary"), `/v1/comparisons/${comparisonId}/summary.png`);
});
