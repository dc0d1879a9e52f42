// Datasets page: browse a root, view media, edit captions (atomic on the server), see each file's bucket,
// and caption the root with a vision-language model as a queued job (progress, Stop, captions reloaded at the end).
import { api, el, mediaUrl, statusBadge } from "./common.js";

const $ = (id) => document.getElementById(id);
const ACTIVE = ["queued", "running", "stopping"];
const state = { lastJob: null };

function card(item) {
  const text = el("textarea", { rows: 3, class: "caption" });
  text.value = item.caption ?? "";
  text.addEventListener("input", () => { text.dataset.dirty = "1"; });
  const status = el("span", { class: "muted" });
  const save = el("button", { onclick: async () => {
    try {
      await api("/api/datasets/caption", { method: "PUT", json: { path: item.path, text: text.value } });
      status.textContent = "saved"; delete text.dataset.dirty;
    } catch (e) { status.textContent = e.message; }
  } }, "Save caption");
  const b = item.bucket;
  const source = item.caption_source === "jsonl" ? el("span", { class: "muted" }, " (from captions.jsonl; saving writes a same-stem file)") : null;
  return el("figure", { "data-path": item.path },
    item.kind === "video" ? el("video", { src: mediaUrl(item.path), controls: true, muted: true, preload: "metadata" })
      : el("img", { src: mediaUrl(item.path), alt: item.name, loading: "lazy" }),
    el("figcaption", {}, item.name, " — ", b ? `bucket ${b.width}×${b.height}, ${b.frames} frame${b.frames === 1 ? "" : "s"}` : "no bucket", source),
    text, el("div", { class: "row" }, save, status));
}

async function load() {
  const root = $("root").value;
  if (!root) return;
  const data = await api(`/api/datasets/files?root=${encodeURIComponent(root)}`);
  $("bucket-note").textContent = data.bucket_note || "";
  $("items").replaceChildren(...data.items.map(card));
}

async function upload() {
  const file = $("upload").files[0];
  if (!file) return;
  const q = `root=${encodeURIComponent($("root").value)}&filename=${encodeURIComponent(file.name)}`;
  try { await api(`/api/datasets/upload?${q}`, { method: "POST", body: file }); await load(); }
  catch (e) { alert(e.message); }
}

function jobLine(job) {
  const c = job.caption;
  const counts = c ? `${c.done} / ${c.total} files: ${c.written} written, ${c.kept} kept, ${c.failed} skipped` : `${job.total_steps} files`;
  const stop = el("button", { id: "cap-stop", disabled: !ACTIVE.slice(0, 2).includes(job.status), onclick: async () => {
    try { await api(`/api/jobs/${job.id}/stop`, { method: "POST" }); } catch (e) { $("cap-error").textContent = e.message; }
    pollJobs();
  } }, "Stop");
  return [el("span", { id: "cap-status" }, statusBadge(job.status)), el("span", { id: "cap-progress" }, counts),
    stop, el("a", { href: `/jobs/${job.id}` }, "log"), el("span", { class: "muted" }, job.error || "")];
}

async function pollJobs() {
  const root = $("root").value;
  if (!root) return;
  const { jobs } = await api(`/api/datasets/caption-jobs?root=${encodeURIComponent(root)}`);
  const job = jobs[0] || null;
  $("cap-job").replaceChildren(...(job ? jobLine(job) : []));
  const was = state.lastJob;
  state.lastJob = job;
  if (was && job && was.id === job.id && ACTIVE.includes(was.status) && !ACTIVE.includes(job.status)) {
    const editing = [...document.querySelectorAll("textarea.caption")].some((t) => t.dataset.dirty);
    if (editing) $("cap-job").append(el("button", { onclick: load }, "Reload captions"));
    else await load();  // the new captions appear in the editors
  }
}

async function startCaptioning() {
  $("cap-error").textContent = "";
  const body = {
    root: $("root").value, model: $("cap-model").value.trim(), style: $("cap-style").value,
    trigger_word: $("cap-trigger").value.trim() || null, frames: Number($("cap-frames").value || 8),
    max_new_tokens: Number($("cap-tokens").value || 256), overwrite: $("cap-overwrite").checked,
    device: $("cap-device").value, prompt: $("cap-prompt").value.trim() || null,
  };
  try { state.lastJob = await api("/api/datasets/caption-jobs", { method: "POST", json: body }); }
  catch (e) {
    const detail = e.data && Array.isArray(e.data.detail) ? e.data.detail.map((d) => `${d.loc.slice(-1)[0]}: ${d.msg}`).join("\n") : e.message;
    $("cap-error").textContent = detail;
  }
  await pollJobs();
}

function every(ms, fn) {
  const run = async () => { try { await fn(); } catch (e) { console.warn(e); } setTimeout(run, ms); };
  run();
}

async function init() {
  const { roots } = await api("/api/datasets");
  $("no-roots").classList.toggle("hidden", roots.length > 0);
  $("caption-panel").classList.toggle("hidden", roots.length === 0);
  $("root").replaceChildren(...roots.map((r) => el("option", { value: r }, r)));
  $("root").addEventListener("change", () => { state.lastJob = null; load(); pollJobs(); });
  $("upload-button").addEventListener("click", upload);
  $("cap-start").addEventListener("click", startCaptioning);
  const { devices } = await api("/api/devices");
  $("cap-device").replaceChildren(...devices.map((d) => el("option", { value: d }, d === "cpu" ? "CPU" : `GPU ${d}`)));
  if (devices.length > 1) $("cap-device").value = devices[1];  // a GPU when there is one
  await load();
  every(2000, pollJobs);
}

init();
