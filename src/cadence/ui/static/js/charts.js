// Live per-expert charts with uPlot (vendored). Records are metrics JSONL lines, appended in step order.
const EXPERT_COLORS = { high_noise: "#ff8a4c", low_noise: "#4cc3ff", main: "#b58cff" };
const PALETTE = ["#ff8a4c", "#4cc3ff", "#b58cff", "#56d364", "#e3b341", "#ff7b72", "#79a6ff", "#d2a8ff"];
const MAX_POINTS = 6000;

const ofExpert = (expert, key) => (r) => (r.expert === expert || (expert === "main" && r.expert == null) ? r[key] : null);
const field = (key) => (r) => r[key];
const emaOf = (expert) => (r) => {
  if (expert !== "main" && r[`loss_ema_50_${expert}`] != null) return r[`loss_ema_50_${expert}`];
  return (r.expert === expert || (expert === "main" && r.expert == null)) ? r.loss_ema_50 : null;
};

// Sample motion comes on the first line after the samples (they are written after their step's line); it is
// drawn at the sampled step itself when that line is loaded, else at the line that carries it.
const motionAt = (records, key) => {
  const steps = new Set(records.map((r) => r.step)), at = new Map();
  for (const r of records) if (r.sample_motion_step != null) at.set(steps.has(r.sample_motion_step) ? r.sample_motion_step : r.step, r);
  return (r) => at.get(r.step)?.[key];
};

function expertsIn(records) {
  const s = new Set(records.map((r) => r.expert ?? "main"));
  return ["high_noise", "low_noise", "main"].filter((e) => s.has(e));
}

function keysMatching(records, re) {
  const s = new Set();
  for (const r of records) for (const k of Object.keys(r)) if (re.test(k) && typeof r[k] === "number") s.add(k);
  return [...s].sort();
}

// Each definition returns the series list [{label, get, color, points?, dash?, scale?}] for the current records.
const DEFS = [
  { id: "loss", title: "Loss per expert (points) with EMA-50 (lines)", series: (rs) => expertsIn(rs).flatMap((e) => [
      { label: `loss ${e}`, get: ofExpert(e, "loss"), color: EXPERT_COLORS[e], points: true },
      { label: `EMA ${e}`, get: emaOf(e), color: EXPERT_COLORS[e] }]) },
  { id: "eval", title: "Eval loss", series: (rs) => keysMatching(rs, /^eval_loss/).map((k, i) => (
      { label: k, get: field(k), color: PALETTE[i % PALETTE.length], points: true })) },
  { id: "stability", title: "Gradient stability (0.5 = random signs)", range: [0, 1], series: (rs) => [
      ...expertsIn(rs).map((e) => ({ label: `stability ${e}`, get: ofExpert(e, "gradient_stability"), color: EXPERT_COLORS[e], points: true })),
      ...expertsIn(rs).map((e) => ({ label: `avg ${e}`, get: e === "main" ? field("gradient_stability_avg") : field(`gradient_stability_avg_${e}`), color: EXPERT_COLORS[e] })),
      { label: "random baseline", get: () => 0.5, color: "#888", dash: [6, 5] }] },
  { id: "alpha", title: "Alpha and phase (dashed lines = transitions)", markers: true, series: (rs) => [
      { label: "linear_alpha", get: field("linear_alpha"), color: "#56d364" },
      { label: "conv_alpha", get: field("conv_alpha"), color: "#e3b341" },
      ...expertsIn(rs).map((e) => ({ label: `phase ${e}`, get: ofExpert(e, "phase_idx"), color: EXPERT_COLORS[e], scale: "phase", stepped: true }))] },
  { id: "lr", title: "Learning rate per expert", series: (rs) => keysMatching(rs, /^lr(_|$)/).map((k, i) => (
      { label: k, get: field(k), color: k.includes("high") ? EXPERT_COLORS.high_noise : k.includes("low") ? EXPERT_COLORS.low_noise : PALETTE[(i + 2) % PALETTE.length] })) },
  { id: "weights", title: "|ΔW| per expert and high/low ratio", series: () => [
      { label: "|ΔW| high_noise", get: field("weight_magnitude_high_noise"), color: EXPERT_COLORS.high_noise, sparse: true },
      { label: "|ΔW| low_noise", get: field("weight_magnitude_low_noise"), color: EXPERT_COLORS.low_noise, sparse: true },
      { label: "ratio high/low", get: field("weight_ratio"), color: "#b58cff", scale: "ratio", dash: [4, 3], sparse: true }] },
  { id: "motion", title: "Sample motion (diag/s); right axis: fraction of the data's and of the peak", series: (rs) => [
      { label: "coarse motion", get: motionAt(rs, "sample_motion_coarse"), color: "#ff7b72", sparse: true },
      { label: "fine motion", get: motionAt(rs, "sample_motion_fine"), color: "#79a6ff", sparse: true },
      { label: "training clips", get: motionAt(rs, "sample_motion_reference"), color: "#56d364", dash: [6, 5] },
      { label: "of data", get: motionAt(rs, "sample_motion_of_reference"), color: "#e3b341", scale: "fraction", dash: [4, 3], sparse: true },
      { label: "of peak", get: motionAt(rs, "sample_motion_of_peak"), color: "#d2a8ff", scale: "fraction", dash: [2, 3], sparse: true }] },
];

function transitions(records) {
  const last = {}, out = [];
  for (const r of records) {
    if (r.phase_idx == null) continue;
    const e = r.expert ?? "main";
    if (e in last && last[e] !== r.phase_idx) out.push(r.step);
    last[e] = r.phase_idx;
  }
  return out;
}

function markerPlugin(getSteps) {
  return { hooks: { draw: (u) => {
    const ctx = u.ctx, { top, height } = u.bbox;
    ctx.save(); ctx.strokeStyle = "#e3b341"; ctx.setLineDash([5, 4]); ctx.lineWidth = 1.5;
    for (const s of getSteps()) {
      const x = Math.round(u.valToPos(s, "x", true));
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
    }
    ctx.restore();
  } } };
}

export class JobCharts {
  constructor(container) {
    this.container = container;
    this.records = [];
    this.charts = {};
    this.markers = [];
    for (const def of DEFS) {
      const box = document.createElement("div");
      box.className = "chart"; box.id = `chart-${def.id}`;
      const h = document.createElement("h3"); h.textContent = def.title;
      const body = document.createElement("div");
      const empty = document.createElement("div"); empty.className = "empty"; empty.textContent = "no data yet";
      box.append(h, empty, body);
      container.append(box);
      this.charts[def.id] = { def, box, body, empty, plot: null, signature: "" };
    }
    window.addEventListener("resize", () => this.resize());
  }

  reset() { this.records = []; this.render(); }

  append(records) {
    this.records.push(...records);
    if (this.records.length > MAX_POINTS) {  // thin the older half, keep recent points dense
      const half = Math.floor(this.records.length / 2);
      this.records = this.records.slice(0, half).filter((r, i) => i % 2 === 0 || r.eval_loss != null || r.sample_motion_step != null).concat(this.records.slice(half));
    }
    this.render();
  }

  render() {
    this.markers = transitions(this.records);
    const xs = this.records.map((r) => r.step);
    for (const c of Object.values(this.charts)) {
      const series = c.def.series(this.records);
      const data = [xs, ...series.map((s) => this.records.map((r) => { const v = s.get(r); return typeof v === "number" && isFinite(v) ? v : null; }))];
      const hasData = data.slice(1).some((col, i) => !series[i].label.includes("baseline") && col.some((v) => v !== null));
      c.empty.classList.toggle("hidden", hasData);
      c.box.dataset.points = hasData ? String(xs.length) : "0";
      c.box.dataset.values = String(data.length > 1 ? data[1].filter((v) => v !== null).length : 0);  // first series
      if (!hasData) { if (c.plot) { c.plot.destroy(); c.plot = null; c.signature = ""; } continue; }
      const signature = series.map((s) => s.label).join("|");
      if (!c.plot || c.signature !== signature) {
        if (c.plot) c.plot.destroy();
        c.plot = new uPlot(this.options(c.def, series), data, c.body);
        c.signature = signature;
      } else {
        c.plot.setData(data);
      }
    }
  }

  options(def, series) {
    const width = Math.max(300, this.container.clientWidth > 1100 ? (this.container.clientWidth - 14) / 2 - 22 : this.container.clientWidth - 22);
    const fmt = (v) => (v === null ? "" : v !== 0 && Math.abs(v) < 0.01 ? v.toExponential(1) : String(+v.toPrecision(4)));
    const base = { stroke: "#9aa0a6", grid: { stroke: "#2c3038" }, ticks: { stroke: "#2c3038" } };
    const axis = { ...base, values: (u, vals) => vals.map(fmt), size: 60 };
    const scales = { x: { time: false } };
    if (def.range) scales.y = { range: def.range };
    const axes = [{ ...base, label: "step" }, { ...axis }];
    const extra = [...new Set(series.map((s) => s.scale).filter(Boolean))];
    for (const sc of extra) axes.push({ ...axis, scale: sc, side: 1, grid: { show: false } });
    return {
      width, height: 230, scales, axes,
      cursor: { drag: { x: true, y: false } },
      plugins: def.markers ? [markerPlugin(() => this.markers)] : [],
      series: [{ label: "step" }, ...series.map((s) => ({
        label: s.label, stroke: s.color, width: s.points ? 0 : 1.6, dash: s.dash, scale: s.scale || "y",
        spanGaps: true,
        paths: s.points ? () => null : s.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined,
        points: s.points || s.sparse ? { show: true, size: 5, fill: s.color, stroke: s.color } : { show: false },
      }))],
    };
  }

  resize() {
    for (const c of Object.values(this.charts)) {
      if (c.plot) { c.plot.destroy(); c.plot = null; c.signature = ""; }
    }
    this.render();
  }
}
