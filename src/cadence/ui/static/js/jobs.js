// Jobs page: list with actions, and the create form (form fields or YAML; errors shown at the field).
import { api, el, statusBadge } from "./common.js";

let mode = "form";

async function act(id, action) {
  try {
    if (action === "delete") {
      if (!confirm("Delete this job? Its run folder (LoRAs, metrics) stays on disk.")) return;
      await api(`/api/jobs/${id}`, { method: "DELETE" });
    } else {
      await api(`/api/jobs/${id}/${action}`, { method: "POST" });
    }
  } catch (e) { alert(e.message); }
  refresh();
}

function row(job) {
  const active = job.status === "running" || job.status === "stopping";
  const startable = ["created", "finished", "stopped", "failed"].includes(job.status);
  return el("tr", { "data-job": job.id },
    el("td", {}, el("a", { href: `/jobs/${job.id}` }, job.name)),
    el("td", {}, statusBadge(job.status)),
    el("td", {}, job.device),
    el("td", {}, `${job.step ?? 0} / ${job.total_steps}`),
    el("td", {}, new Date(job.created_at * 1000).toLocaleString()),
    el("td", { class: "row" },
      el("button", { disabled: !startable, onclick: () => act(job.id, "start") }, "Start"),
      el("button", { disabled: !(active || job.status === "queued"), onclick: () => act(job.id, "stop") }, "Stop"),
      el("button", { onclick: () => act(job.id, "clone") }, "Clone"),
      el("button", { class: "danger", disabled: active, onclick: () => act(job.id, "delete") }, "Delete")));
}

async function refresh() {
  const { jobs } = await api("/api/jobs");
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren(...jobs.slice().reverse().map(row));
  document.getElementById("no-jobs").classList.toggle("hidden", jobs.length > 0);
}

function formValues() {
  const values = {};
  for (const input of document.querySelectorAll("#job-form [name]")) {
    if (input.type === "checkbox") { if (input.checked) values[input.name] = true; continue; }
    const v = input.value.trim();
    if (v === "") continue;
    values[input.name] = input.type === "number" ? Number(v) : v;
  }
  return values;
}

function showIssues(issues) {
  document.querySelectorAll(".err").forEach((e) => { e.textContent = ""; });
  const rest = [];
  for (const { path, message } of issues) {
    const slot = mode === "form" && document.querySelector(`.err[data-for="${CSS.escape(path)}"]`);
    if (slot) slot.textContent = message; else rest.push(path ? `${path}: ${message}` : message);
  }
  document.getElementById("issues").textContent = rest.join("\n");
}

async function create() {
  const body = { device: document.getElementById("device").value, queue: document.getElementById("queue-now").checked };
  const gpus = document.getElementById("gpus").value.replace(/\s+/g, "");
  if (gpus) body.device = gpus;  // several GPUs ("0,1"): the job runs through torchrun, one process per GPU
  if (mode === "form") body.form = formValues(); else body.yaml = document.getElementById("yaml-text").value;
  try {
    const job = await api("/api/jobs", { method: "POST", json: body });
    showIssues([]);
    window.location.href = `/jobs/${job.id}`;
  } catch (e) {
    if (e.data && e.data.issues) showIssues(e.data.issues);
    else showIssues([{ path: "", message: e.message }]);
  }
}

function setMode(m) {
  mode = m;
  document.getElementById("job-form").classList.toggle("hidden", m !== "form");
  document.getElementById("yaml-pane").classList.toggle("hidden", m !== "yaml");
  document.getElementById("tab-form").classList.toggle("active", m === "form");
  document.getElementById("tab-yaml").classList.toggle("active", m === "yaml");
  showIssues([]);
}

async function init() {
  document.getElementById("tab-form").addEventListener("click", () => setMode("form"));
  document.getElementById("tab-yaml").addEventListener("click", () => setMode("yaml"));
  document.getElementById("create-button").addEventListener("click", create);
  const { devices } = await api("/api/devices");
  document.getElementById("device").replaceChildren(...devices.map((d) => el("option", { value: d }, d === "cpu" ? "CPU" : `GPU ${d}`)));
  await refresh();
  setInterval(refresh, 3000);
}

init();
