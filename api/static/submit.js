// The submit form (/submit), built by the server from the job spec's JSON schema: the chosen
// architecture's fields are enabled, the others disabled (left out of the body and of the browser's
// checks). The body is written as JSON text here so that integers past 2^53 (seeds) stay exact.
import { ApiError, el, sendJSON, showError, start } from "./common.js";

const INTEGER = /^-?\d+$/;

class FieldError extends Error {
  constructor(field, message) {
    super(`${field}: ${message}`);
    this.field = field;
  }
}

function chooseArchitecture(form, architecture) {
  for (const fieldset of form.querySelectorAll("fieldset.variant")) {
    const chosen = fieldset.dataset.architecture === architecture;
    fieldset.disabled = !chosen;
    fieldset.hidden = !chosen;
  }
}

// "key: value" lines (or key=value) as an object; empty text is null (the field is left out).
function labelMap(name, text) {
  const map = {};
  for (const line of text.split(/\n|,/)) {
    if (!line.trim()) continue;
    const match = /^\s*([^:=]+?)\s*[:=]\s*(.+?)\s*$/.exec(line);
    if (!match) throw new FieldError(name, `"${line.trim()}" is not key: value`);
    map[match[1]] = match[2];
  }
  return Object.keys(map).length ? map : null;
}

// One "name": value of the body as JSON text, or null to leave the field out.
function member(input) {
  const raw = input.type === "checkbox" ? input.checked : input.value.trim();
  let json;
  switch (input.dataset.kind) {
    case "boolean":
      json = JSON.stringify(raw);
      break;
    case "integer":
      if (raw === "") return null;
      if (!INTEGER.test(raw)) throw new FieldError(input.name, "must be a whole number");
      json = raw; // as typed: exact at any size
      break;
    case "number":
      if (raw === "") return null;
      json = JSON.stringify(Number(raw));
      break;
    case "map": {
      const map = labelMap(input.name, raw);
      if (map === null) return null;
      json = JSON.stringify(map);
      break;
    }
    default:
      if (raw === "") return null;
      json = JSON.stringify(raw);
  }
  return `${JSON.stringify(input.name)}:${json}`;
}

function body(form) {
  const members = [...form.elements]
    .filter((input) => input.name && input.dataset.kind && !input.matches(":disabled"))
    .map(member)
    .filter((text) => text !== null);
  return `{${members.join(",")}}`;
}

function markFields(form, fields) {
  for (const node of form.querySelectorAll(".field-error")) node.remove();
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  for (const { field, message } of fields) {
    const name = String(field).split(".")[0];
    const input = [...form.elements].find((node) => node.name === name && !node.matches(":disabled"));
    if (!input) continue;
    input.setAttribute("aria-invalid", "true");
    input.closest(".field").append(el("span", { class: "field-error" }, message));
  }
}

start(async () => {
  const form = document.getElementById("submit-form");
  const architecture = form.elements.namedItem("architecture");
  chooseArchitecture(form, architecture.value);
  architecture.addEventListener("change", () => chooseArchitecture(form, architecture.value));
  const state = document.getElementById("submit-state");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = document.getElementById("submit");
    button.disabled = true;
    state.textContent = "submitting…";
    try {
      markFields(form, []);
      const job = await sendJSON("POST", "/v1/jobs", body(form));
      state.textContent = "submitted";
      location.assign(`${document.documentElement.dataset.root || ""}/jobs/${job.id}`);
    } catch (error) {
      state.textContent = "";
      button.disabled = false;
      if (error instanceof FieldError) markFields(form, [{ field: error.field, message: error.message }]);
      if (error instanceof ApiError && error.problem) {
        markFields(form, error.problem.errors || (error.problem.field ? [{ field: error.problem.field, message: error.problem.detail }] : []));
      }
      showError(error);
    }
  });
});
