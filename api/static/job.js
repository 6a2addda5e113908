// A job's page (/jobs/{id}): GET /v1/jobs/{id}, kept current by the job's event stream (or polled
// every second) until it ends; its curves are redrawn while it runs.
import {
  bytes,
  cell,
  dash,
  download,
  el,
  FINAL,
  getJSON,
  link,
  live,
  loadPicture,
  number,
  percent,
  pixels,
  progressText,
  sendJSON,
  setStatus,
  shortId,
  showError,
  start,
  throttle,
  when,
} from "./common.js";

const CURVES_MS = 2000; // the curves picture changes with each recorded step; redrawing costs the server a render
let job = null;

const byId = (id) => document.getElementById(id);
const text = (value) => (value === null || value === undefined ? "null" : String(value));
const pair = (name, value) => el("div", {}, el("dt", {}, name), el("dd", {}, value));

function renderHead() {
  byId("job-title").textContent = job.name ? `${job.name}` : `Job ${shortId(job.id)}`;
  document.title = `${byId("job-title").textContent} · mnist-jobs`;
  setStatus(byId("job-status"), job.status);
  const cancel = byId("cancel");
  cancel.hidden = FINAL.has(job.status);
  cancel.disabled = job.cancel_requested;
  cancel.textContent = job.cancel_requested ? "Cancelling…" : "Cancel job";
  const links = [el("code", {}, job.id)];
  if (job.comparison_id) links.push(" · one seed of ", link(`/comparisons/${job.comparison_id}`, "a comparison"));
  if (job.reused_from) links.push(" · result reused from ", link(`/jobs/${job.reused_from}`, shortId(job.reused_from)));
  byId("job-links").replaceChildren(...links);
  const failure = byId("job-failure");
  failure.hidden = !job.error;
  failure.textContent = job.error || "";
}

function renderProgress() {
  const bar = byId("job-progress");
  const progress = job.progress;
  if (job.status === "succeeded") bar.value = 1;
  else if (progress) bar.value = progress.fraction;
  const words = {
    queued: job.attempts ? `queued again (attempt ${job.attempts + 1} of ${job.max_attempts})` : "queued",
    running: progress ? progressText(progress) : "starting",
    succeeded: job.result ? `done: ${percent(job.result.test_accuracy)} correct` : "done",
    failed: "failed",
    cancelled: "cancelled",
  };
  byId("progress-text").textContent = words[job.status] || job.status;
}

function renderSpec() {
  const { architecture, ...rest } = job.spec;
  const spec = [pair("architecture", `${architecture}, ${job.param_count.toLocaleString()} parameters`)];
  for (const [name, value] of Object.entries(rest)) {
    spec.push(pair(name, name === "permutation_seed" ? `${text(value)} (${pixels(value)} pixels)` : text(value)));
  }
  const labels = Object.entries(job.labels).map(([key, value]) => `${key}: ${value}`);
  spec.push(pair("max_attempts", text(job.max_attempts)), pair("name", job.name || dash), pair("labels", labels.join(", ") || dash));
  if (job.cost) {
    const cost = job.cost;
    spec.push(pair("estimated cost", `${cost.steps.toLocaleString()} steps, ${cost.flops.toExponential(1)} FLOPs, ${bytes(cost.peak_memory_bytes)}`));
  }
  spec.push(pair("created", when(job.created_at)), pair("started", when(job.started_at)), pair("finished", when(job.finished_at)));
  byId("spec").replaceChildren(...spec);
}

function renderResult() {
  const result = job.result;
  byId("no-result").hidden = Boolean(result);
  if (!result) return byId("result").replaceChildren();
  byId("result").replaceChildren(
    pair("test accuracy", `${percent(result.test_accuracy)} (${result.correct} of ${result.total})`),
    pair("test loss", number(result.test_loss)),
    pair("time", `${result.train_seconds.toFixed(1)} s training, ${result.test_seconds.toFixed(1)} s testing`),
    pair("device", `${result.device}, torch ${result.torch_version}`),
  );
}

function renderMetrics() {
  const rows = job.metrics.map((epoch) =>
    el(
      "tr",
      {},
      cell(String(epoch.epoch), "num"),
      cell(number(epoch.train_loss), "num"),
      cell(number(epoch.test_loss), "num"),
      cell(percent(epoch.test_accuracy), "num"),
    ),
  );
  const tbody = byId("metrics").tBodies[0];
  tbody.replaceChildren(...(rows.length ? rows.reverse() : [el("tr", {}, el("td", { colspan: 4, class: "muted" }, "No epoch has ended yet."))]));
}

function checkpointLink(checkpoint) {
  const filename = `${job.id}-epoch${String(checkpoint.epoch).padStart(3, "0")}.pt`;
  const path = `/v1/jobs/${job.id}/checkpoint?epoch=${checkpoint.epoch}`;
  // fetched with the token, then saved from a blob: a plain link could not send the token
  const onclick = (event) => {
    event.preventDefault();
    download(path, filename).catch(showError);
  };
  return el("a", { href: path, class: "download", download: filename, title: filename, onclick }, "download .pt");
}

function renderCheckpoints() {
  const list = job.result ? job.result.checkpoints : [];
  const rows = list.map((checkpoint) =>
    el(
      "tr",
      {},
      cell(String(checkpoint.epoch), "num"),
      cell(bytes(checkpoint.size_bytes), "num"),
      cell(el("code", { title: checkpoint.sha256 }, `${checkpoint.sha256.slice(0, 16)}…`)),
      cell(checkpointLink(checkpoint)),
    ),
  );
  const empty = el("tr", {}, el("td", { colspan: 4, class: "muted" }, "None yet: listed once the job succeeded."));
  byId("checkpoints").tBodies[0].replaceChildren(...(rows.length ? rows.reverse() : [empty]));
}

function renderHistory() {
  const rows = job.history.map((attempt) => {
    const resumed =
      attempt.resumed_from_epoch === null || attempt.resumed_from_epoch === undefined
        ? dash
        : `epoch ${attempt.resumed_from_epoch}${attempt.resumed_from_step ? `, step ${attempt.resumed_from_step}` : ""}`;
    return el(
      "tr",
      {},
      cell(String(attempt.attempt), "num"),
      cell(el("code", {}, shortId(attempt.worker_id))),
      cell(when(attempt.started_at)),
      cell(resumed),
      cell(attempt.ended || "running"),
    );
  });
  const empty = el("tr", {}, el("td", { colspan: 5, class: "muted" }, "Not started yet."));
  byId("history").tBodies[0].replaceChildren(...(rows.length ? rows : [empty]));
}

function render(next) {
  job = next;
  renderHead();
  renderProgress();
  renderSpec();
  renderResult();
  renderMetrics();
  renderCheckpoints();
  renderHistory();
}

async function pictures() {
  if (job.started_at) {
    byId("no-curves").hidden = true;
    await loadPicture(byId("curves"), `/v1/jobs/${job.id}/curves.png`);
  }
  if (job.status === "succeeded") {
    byId("no-confusion").hidden = true;
    await loadPicture(byId("confusion"), `/v1/jobs/${job.id}/confusion.png`);
  } else if (FINAL.has(job.status)) {
    byId("no-confusion").textContent = `None: the job ${job.status}.`;
  }
}

async function redrawWhileRunning() {
  while (!FINAL.has(job.status)) {
    await pictures().catch(showError);
    await new Promise((resolve) => setTimeout(resolve, CURVES_MS));
  }
}

start(async ({ jobId }) => {
  const refresh = async () => render(await getJSON(`/v1/jobs/${jobId}`));
  await refresh();
  byId("cancel").addEventListener("click", async () => {
    byId("cancel").disabled = true;
    try {
      render(await sendJSON("POST", `/v1/jobs/${jobId}/cancel`));
    } catch (error) {
      showError(error);
      byId("cancel").disabled = false;
    }
  });
  const later = throttle(refresh);
  const stream = document.documentElement.dataset.eventsJob;
  const drawing = redrawWhileRunning();
  await live({
    events: stream ? stream.replace("{id}", encodeURIComponent(jobId)) : "",
    poll: refresh,
    done: () => FINAL.has(job.status),
    onEvent: (kind, data) => {
      if (kind === "job") render(data);
      else if (kind === "progress" && !FINAL.has(job.status)) {
        job.status = "running"; // a progress event can come before the status event that says so
        job.progress = data;
        renderHead();
        renderProgress();
      } else if (kind === "status" && FINAL.has(data.status)) {
        job.status = data.status; // done: the stream closes, and the refresh below reads the result
      } else if (kind === "status" || kind === "epoch") later();
    },
  });
  await refresh(); // the ended job's result, checkpoints and last epochs
  await drawing;
  await pictures();
});
