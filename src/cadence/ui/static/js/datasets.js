// Datasets page: browse a root, view media, edit captions (atomic on the server), see each file's bucket.
import { api, el, mediaUrl } from "./common.js";

const $ = (id) => document.getElementById(id);

function card(item) {
  const text = el("textarea", { rows: 3, class: "caption" });
  text.value = item.caption ?? "";
  const status = el("span", { class: "muted" });
  const save = el("button", { onclick: async () => {
    try { await api("/api/datasets/caption", { method: "PUT", json: { path: item.path, text: text.value } }); status.textContent = "saved"; }
    catch (e) { status.textContent = e.message; }
  } }, "Save caption");
  const b = item.bucket;
  return el("figure", { "data-path": item.path },
    item.kind === "video" ? el("video", { src: mediaUrl(item.path), controls: true, muted: true, preload: "metadata" })
      : el("img", { src: mediaUrl(item.path), alt: item.name, loading: "lazy" }),
    el("figcaption", {}, item.name, " — ", b ? `bucket ${b.width}×${b.height}, ${b.frames} frame${b.frames === 1 ? "" : "s"}` : "no bucket"),
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

async function init() {
  const { roots } = await api("/api/datasets");
  $("no-roots").classList.toggle("hidden", roots.length > 0);
  $("root").replaceChildren(...roots.map((r) => el("option", { value: r }, r)));
  $("root").addEventListener("change", load);
  $("upload-button").addEventListener("click", upload);
  await load();
}

init();
