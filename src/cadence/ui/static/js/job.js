// Job page: status/ETA, live charts (metrics read incrementally by byte offset), artifacts, log tail.
import { api, el, fileUrl, fmtBytes, fmtDuration, mediaUrl, statusBadge } from "./common.js";
import { JobCharts } from "./charts.js";

const jobId = decodeURIComponent(window.location.pathname.split("/").pop());
const state = { job: null, metricsOffset: 0, logOffset: null, charts: null, lastArtifacts: "", rawLog: "" };

// Progress bars redraw with carriage returns: show only the latest state of each line.
const cleanLog = (raw) => raw.split("\n").map((line) => line.split("\r").filter((part) => part.trim()).pop() ?? "").join("\n");
const $ = (id) => document.getElementById(id);

function secPerIt(records) {
  // Prefer the trainer's own step_time_s; else the wall-clock gap between lines (timestamps are ISO or epoch).
  const recent = records.slice(-30);
  const direct = recent.map((r) => r.step_time_s).filter((v) => typeof v === "number");
  if (direct.length) return direct.reduce((a, b) => a + b, 0) / direct.length;
  const t = (r) => (typeof r.timestamp === "number" ? r.timestamp : Date.parse(r.timestamp) / 1000);
  const rs = recent.filter((r) => isFinite(t(r)));
  if (rs.length < 2) return null;
  const dt = t(rs[rs.length - 1]) - t(rs[0]), ds = rs[rs.length - 1].step - rs[0].step;
  return ds > 0 ? dt / ds : null;
}

function renderStatus() {
  const job = state.job, records = state.charts.records;
  const last = records[records.length - 1];
  const step = last ? last.step : (job.step ?? 0);
  $("job-name").textContent = job.name;
  $("job-status").replaceChildren(statusBadge(job.status));
  $("job-error").textContent = job.error || "";
  $("stat-step").textContent = `${step} / ${job.total_steps}`;
  const sit = secPerIt(records);
  $("stat-sit").textContent = sit ? sit.toFixed(2) : "—";
  const running = job.status === "running" || job.status === "stopping";
  $("stat-eta").textContent = running && sit ? fmtDuration(sit * (job.total_steps - step)) : "—";
  const end = job.finished_at || (running ? Date.now() / 1000 : null);
  $("stat-elapsed").textContent = job.started_at && end ? fmtDuration(end - job.started_at) : "—";
  $("stat-device").textContent = job.device === "cpu" ? "CPU" : `GPU ${job.device}`;
  $("stat-loss").textContent = last && typeof last.loss === "number" ? last.loss.toFixed(4) : "—";
  $("progress-bar").style.width = `${Math.min(100, (100 * step) / Math.max(1, job.total_steps))}%`;
  $("btn-start").disabled = !["created", "finished", "stopped", "failed"].includes(job.status);
  $("btn-stop").disabled = !["queued", "running"].includes(job.status);
  $("btn-delete").disabled = running;
  const warnings = records.slice(-50).flatMap((r) => r.health_warnings || []);
  $("warnings").textContent = [...new Set(warnings)].slice(-5).join("\n");
}

async function pollJob() {
  state.job = await api(`/api/jobs/${jobId}`);
  if (!$("config").textContent) $("config").textContent = state.job.config_yaml;
  renderStatus();
}

async function pollMetrics() {
  for (let i = 0; i < 20; i++) {  // follow `more` a few times so a long run loads quickly
    const chunk = await api(`/api/jobs/${jobId}/metrics?offset=${state.metricsOffset}`);
    if (chunk.reset) state.charts.reset();
    state.metricsOffset = chunk.offset;
    if (chunk.records.length) state.charts.append(chunk.records);
    if (!chunk.more) break;
  }
  document.body.dataset.metricsOffset = String(state.metricsOffset);
  if (state.job) renderStatus();
}

async function pollLog() {
  const q = state.logOffset === null ? "" : `?offset=${state.logOffset}`;
  const { text, offset } = await api(`/api/jobs/${jobId}/log${q}`);
  state.logOffset = offset;
  if (!text) return;
  const pre = $("log");
  const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
  state.rawLog = (state.rawLog + text).slice(-400000);
  pre.textContent = cleanLog(state.rawLog);
  if (stick) pre.scrollTop = pre.scrollHeight;
}

async function pollArtifacts() {
  const a = await api(`/api/jobs/${jobId}/artifacts`);
  const sig = JSON.stringify(a);
  if (sig === state.lastArtifacts) return;
  state.lastArtifacts = sig;
  $("checkpoints").querySelector("tbody").replaceChildren(...a.checkpoints.slice().reverse().map((c) => el("tr", { class: "checkpoint" },
    el("td", {}, c.name), el("td", {}, fmtBytes(c.size)), el("td", {}, new Date(c.mtime * 1000).toLocaleString()),
    el("td", {}, el("a", { class: "button", href: fileUrl(c.path, true), download: c.name }, "Download")))));
  $("no-checkpoints").classList.toggle("hidden", a.checkpoints.length > 0);
  $("samples").replaceChildren(...a.samples.slice().reverse().map((s) => el("figure", {},
    s.kind === "video" ? el("video", { src: mediaUrl(s.path), controls: true, loop: true, muted: true, preload: "metadata" })
      : el("img", { src: mediaUrl(s.path), alt: s.name, loading: "lazy" }),
    el("figcaption", {}, s.name))));
  $("no-samples").classList.toggle("hidden", a.samples.length > 0);
  if (a.analysis) {
    $("analysis").replaceChildren(el("p", {}, el("a", { href: fileUrl(a.analysis), target: "_blank", rel: "noopener" }, "Open the report in a new tab")),
      el("iframe", { class: "report", src: fileUrl(a.analysis), sandbox: "allow-scripts", title: "analysis report" }));
  }
}

async function action(name) {
  try {
    if (name === "delete") {
      if (!confirm("Delete this job? Its run folder stays on disk.")) return;
      await api(`/api/jobs/${jobId}`, { method: "DELETE" });
      window.location.href = "/"; return;
    }
    const res = await api(`/api/jobs/${jobId}/${name}`, { method: "POST" });
    if (name === "clone") { window.location.href = `/jobs/${res.id}`; return; }
  } catch (e) { alert(e.message); }
  await pollJob();
}

function every(ms, fn) {
  const run = async () => { try { await fn(); } catch (e) { console.warn(e); } setTimeout(run, ms); };
  run();
}

state.charts = new JobCharts($("charts"));
for (const name of ["start", "stop", "clone", "analyze", "delete"]) $(`btn-${name}`).addEventListener("click", () => action(name));
every(2000, pollJob);
every(2000, pollMetrics);
every(2000, pollLog);
every(4000, pollArtifacts);
