// The status page: polls /api/status and redraws. No libraries, no build step.
"use strict";

const POLL_MS = 2000;
const COLORS = ["#0969da", "#1f883d", "#bf8700", "#8250df", "#cf222e", "#1b7c83", "#953800", "#6e7781"];

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 90) return seconds.toFixed(0) + " s ago";
  if (seconds < 5400) return (seconds / 60).toFixed(0) + " min ago";
  return (seconds / 3600).toFixed(1) + " h ago";
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function renderSources(status) {
  const rows = status.sources.map((s) => {
    const tr = el("tr");
    tr.dataset.source = s.name;
    tr.append(
      el("td", s.name), el("td", s.kind), el("td", s.state, "state-" + s.state),
      el("td", age(s.last_received_age_seconds)),
      el("td", s.rate_per_second.toFixed(1), "num"),
      el("td", s.dead_letters_per_second.toFixed(2), "num"),
      el("td", s.written, "num"), el("td", s.reconnects, "num"),
      el("td", (100 * s.buffer_fill).toFixed(0) + " %", "num"),
      el("td", s.reason, "reason"));
    return tr;
  });
  fill(document.querySelector("#sources tbody"), rows);
}

// A small line plot: one series per source, y from 0 to the largest value.
function plot(canvas, legend, times, seriesByName, key) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const left = 48, right = 8, top = 8, bottom = 22;
  const names = Object.keys(seriesByName);
  let max = 0;
  for (const name of names) for (const v of seriesByName[name][key]) max = Math.max(max, v);
  max = max > 0 ? max * 1.1 : 1;
  const t0 = times.length ? times[0] : 0;
  const t1 = times.length ? times[times.length - 1] : 1;
  const x = (t) => left + (t1 > t0 ? (t - t0) / (t1 - t0) : 1) * (width - left - right);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  ctx.strokeStyle = "#dde1e6";
  ctx.fillStyle = "#59636e";
  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    ctx.beginPath();
    ctx.moveTo(left, y(v));
    ctx.lineTo(width - right, y(v));
    ctx.stroke();
    ctx.fillText(v >= 100 ? v.toFixed(0) : v.toFixed(1), 4, y(v) + 4);
  }
  if (times.length) {
    const span = t1 - t0;
    ctx.fillText(span < 120 ? "-" + Math.round(span) + " s" : "-" + Math.round(span / 60) + " min", left, height - 6);
    ctx.fillText("now", width - right - 22, height - 6);
  }
  legend.replaceChildren();
  names.forEach((name, index) => {
    const color = COLORS[index % COLORS.length];
    const values = seriesByName[name][key];
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.6;
    ctx.beginPath();
    values.forEach((v, i) => (i ? ctx.lineTo(x(times[i]), y(v)) : ctx.moveTo(x(times[i]), y(v))));
    ctx.stroke();
    const item = el("span", name);
    const swatch = el("i");
    swatch.style.background = color;
    item.prepend(swatch);
    legend.append(item);
  });
}

function renderTags(status) {
  const rows = status.tags.map((t) => {
    const tr = el("tr");
    tr.dataset.tag = t.tag;
    const value = t.value === null ? "—" : Number(t.value).toPrecision(6) + " " + t.unit;
    tr.append(el("td", t.tag), el("td", value, "num"), el("td", age(t.age_seconds)), el("td", t.source));
    return tr;
  });
  if (!rows.length) {
    const tr = el("tr");
    tr.append(el("td", "none configured (monitoring.status_tags)", "muted"));
    rows.push(tr);
  }
  fill(document.querySelector("#tags tbody"), rows);
}

function renderAlerts(status) {
  const rows = status.alerts.map((a) => {
    const tr = el("tr");
    tr.dataset.alert = a.id;
    tr.append(el("td", age(a.age_seconds)), el("td", a.rule + " (" + a.severity + ")"),
      el("td", a.tag ? a.device + "/" + a.tag : a.device), el("td", a.detail, "detail"),
      el("td", a.acknowledged_by ? "by " + a.acknowledged_by : "no", a.acknowledged_by ? "acked" : "muted"),
      el("td", a.id, "muted"));
    return tr;
  });
  if (!rows.length) {
    const tr = el("tr");
    tr.append(el("td", "none", "muted"));
    rows.push(tr);
  }
  fill(document.querySelector("#alerts tbody"), rows);
}

function renderReasons(status) {
  const rows = Object.entries(status.dead_letter_reasons).map(([reason, count]) => {
    const tr = el("tr");
    tr.append(el("td", reason), el("td", count, "num"));
    return tr;
  });
  if (!rows.length) {
    const tr = el("tr");
    tr.append(el("td", "none", "muted"));
    rows.push(tr);
  }
  fill(document.querySelector("#reasons-table tbody"), rows);
}

function render(status) {
  document.getElementById("pipeline").textContent = status.pipeline + " on " + status.runner;
  const ready = document.getElementById("ready");
  ready.textContent = status.ready ? "ready" : "not ready";
  ready.className = "badge " + (status.ready ? "ok" : "bad");
  document.getElementById("job-state").textContent = status.job_state;
  document.getElementById("kafka-state").textContent = status.kafka.healthy ? "accepting" : "failing";
  document.getElementById("updated").textContent = new Date(status.generated_at * 1000).toLocaleTimeString();
  document.getElementById("reasons").textContent = status.reasons.join(" · ");
  renderSources(status);
  const h = status.history;
  plot(document.getElementById("plot-received"), document.getElementById("legend-received"), h.t, h.sources, "received");
  plot(document.getElementById("plot-dead"), document.getElementById("legend-dead"), h.t, h.sources, "dead_letters");
  renderTags(status);
  renderAlerts(status);
  renderReasons(status);
  document.body.dataset.polls = String(Number(document.body.dataset.polls) + 1);
  document.body.dataset.generatedAt = String(status.generated_at);
}

async function poll() {
  try {
    const answer = await fetch("api/status", { cache: "no-store" });
    render(await answer.json());
  } catch (err) {
    document.getElementById("ready").textContent = "unreachable";
    document.getElementById("ready").className = "badge bad";
  }
  setTimeout(poll, POLL_MS);
}

poll();
