// The job list (/): GET /v1/jobs with the page's filters, newest first, a page at a time; running
// jobs' progress bars follow the event stream (or the list is polled every second).
import {
  cell,
  dash,
  el,
  FINAL,
  getJSON,
  link,
  live,
  percent,
  pixels,
  progressBar,
  progressText,
  shortId,
  start,
  statusBadge,
  throttle,
  when,
} from "./common.js";

const PAGE_SIZE = 25;
const FILTERS = ["status", "architecture", "name", "comparison"];

// The page's own query (?status=&label=a:b, c:d&cursor=) as the API's (?status=&label=a:b&label=c:d&limit=).
function apiQuery(query) {
  const params = new URLSearchParams();
  for (const name of FILTERS) if (query.get(name)) params.set(name, query.get(name));
  for (const text of query.getAll("label")) {
    for (const label of text.split(",")) if (label.trim()) params.append("label", label.trim());
  }
  if (query.get("cursor")) params.set("cursor", query.get("cursor"));
  params.set("limit", String(PAGE_SIZE));
  return params;
}

function jobName(job) {
  const labels = Object.entries(job.labels || {}).map(([key, value]) => el("span", { class: "label" }, `${key}: ${value}`));
  return [link(`/jobs/${job.id}`, job.name || shortId(job.id)), labels.length ? el("div", { class: "labels" }, labels) : null];
}

function progressCell(job) {
  if (job.status === "running" && job.progress) return progressBar(job.progress.fraction, percent(job.progress.fraction, 0));
  if (job.status === "running") return progressBar(0, "starting");
  if (job.status === "queued") return el("span", { class: "muted" }, "waiting");
  return dash;
}

function row(job) {
  const accuracy = job.result ? percent(job.result.test_accuracy) : dash;
  return el(
    "tr",
    { "data-job-id": job.id },
    cell(jobName(job)),
    cell(statusBadge(job.status)),
    cell(job.architecture),
    cell(pixels(job.spec.permutation_seed)),
    cell(String(job.spec.seed), "num"),
    cell(String(job.spec.epochs), "num"),
    cell(accuracy, "num"),
    cell(progressCell(job), "progress-col"),
    cell(when(job.created_at)),
  );
}

function render(page, query) {
  const body = document.getElementById("jobs-body");
  const filtered = [...apiQuery(query).keys()].some((name) => name !== "limit" && name !== "cursor");
  const empty = filtered ? "No job matches these filters." : "No jobs yet: submit one.";
  body.replaceChildren(...(page.items.length ? page.items.map(row) : [el("tr", {}, el("td", { colspan: 9, class: "muted" }, empty))]));
  const older = document.getElementById("older");
  older.hidden = !page.next_cursor;
  if (page.next_cursor) {
    const next = new URLSearchParams(query);
    next.set("cursor", page.next_cursor);
    older.search = `?${next}`;
  }
  const newest = document.getElementById("newest");
  newest.hidden = !query.get("cursor");
  const first = new URLSearchParams(query);
  first.delete("cursor");
  newest.search = first.toString() ? `?${first}` : "";
}

// A progress event moves one row's bar at once, without a call.
function moveBar(data) {
  const row = document.querySelector(`tr[data-job-id="${CSS.escape(String(data.job_id))}"]`);
  const bar = row && row.querySelector("progress");
  if (!bar) return;
  bar.value = data.fraction;
  bar.nextElementSibling.textContent = percent(data.fraction, 0);
  bar.title = progressText(data);
}

start(async () => {
  const query = new URLSearchParams(location.search);
  const refresh = async () => render(await getJSON(`/v1/jobs?${apiQuery(query)}`), query);
  await refresh();
  const later = throttle(refresh);
  await live({
    events: document.documentElement.dataset.eventsAll,
    poll: refresh,
    onEvent: (kind, data) => {
      if (kind === "progress") moveBar(data);
      else if (kind === "status" || (kind === "job" && !FINAL.has(data.status))) later();
    },
  });
});
