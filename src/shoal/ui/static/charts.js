/* Shoal charts: small time-series line charts on <canvas>, one line per device.
 *
 * Markup: a container [data-charts][data-telemetry-url] holding [data-chart]
 * elements (data-path, data-unit, data-digits) each with a <canvas>, a legend
 * list [data-chart-legend], a readout [data-chart-readout] and an empty note
 * [data-chart-empty]. History comes from the telemetry URL (?window=1h|6h|24h|7d);
 * live points arrive through ShoalCharts.onValue(item) from the event stream.
 */
(() => {
  "use strict";

  // Okabe–Ito: tells lines apart for most kinds of colour blindness.
  const PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#E69F00", "#7A5195", "#3D7A3D"];
  const WINDOWS = { "1h": 3600e3, "6h": 6 * 3600e3, "24h": 86400e3, "7d": 7 * 86400e3 };
  const HEIGHT = 170;
  const colorOf = new Map();

  function seriesColor(key) {
    if (!colorOf.has(key)) colorOf.set(key, PALETTE[colorOf.size % PALETTE.length]);
    return colorOf.get(key);
  }

  function niceStep(span, target) {
    const raw = span / Math.max(1, target);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / mag;
    const nice = norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10;
    return nice * mag;
  }

  const TIME_STEPS = [60e3, 300e3, 600e3, 900e3, 1800e3, 3600e3, 3 * 3600e3, 6 * 3600e3, 12 * 3600e3, 86400e3];

  function timeStep(span, target) {
    for (const s of TIME_STEPS) if (span / s <= target) return s;
    return TIME_STEPS[TIME_STEPS.length - 1];
  }

  function fmtNumber(v, digits) {
    if (v == null || !isFinite(v)) return "—";
    return digits != null ? v.toFixed(digits) : String(+v.toPrecision(6));
  }

  function fmtTime(t, span) {
    const d = new Date(t);
    if (span > 2 * 86400e3) {
      return d.toLocaleDateString(undefined, { weekday: "short", day: "numeric" });
    }
    return d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  }

  class LineChart {
    constructor(el) {
      this.el = el;
      this.canvas = el.querySelector("canvas");
      this.legend = el.querySelector("[data-chart-legend]");
      this.readout = el.querySelector("[data-chart-readout]");
      this.empty = el.querySelector("[data-chart-empty]");
      this.path = el.dataset.path;
      this.unit = el.dataset.unit || "";
      this.digits = el.dataset.digits === "" ? null : Number(el.dataset.digits);
      this.span = WINDOWS["1h"];
      this.gap = 90e3; // a longer pause than this breaks the line
      this.series = new Map(); // endpoint -> [[t, v], ...] sorted by t
      this.hoverX = null;
      this.pending = false;
      this.canvas.addEventListener("pointermove", (e) => {
        const r = this.canvas.getBoundingClientRect();
        this.hoverX = e.clientX - r.left;
        this.draw();
      });
      this.canvas.addEventListener("pointerleave", () => {
        this.hoverX = null;
        this.draw();
      });
      if (window.ResizeObserver) {
        this.resize = new ResizeObserver(() => this.schedule());
        this.resize.observe(el);
      }
    }

    setData(metric, span, step) {
      this.span = span;
      this.gap = Math.max(3 * step * 1000, 90e3);
      if (metric && metric.unit) this.unit = metric.unit;
      this.series = new Map();
      for (const s of (metric && metric.series) || []) {
        this.series.set(s.endpoint, s.points.slice());
      }
      this.renderLegend();
      this.schedule();
    }

    add(endpoint, t, v) {
      if (typeof v !== "number" || !isFinite(v)) return;
      let pts = this.series.get(endpoint);
      if (!pts) {
        pts = [];
        this.series.set(endpoint, pts);
      }
      if (pts.length && pts[pts.length - 1][0] > t) {
        pts.push([t, v]);
        pts.sort((a, b) => a[0] - b[0]);
      } else {
        pts.push([t, v]);
      }
      const cutoff = Date.now() - this.span - 60e3;
      while (pts.length && pts[0][0] < cutoff) pts.shift();
      this.renderLegend();
      this.schedule();
    }

    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => {
        this.pending = false;
        this.draw();
      });
    }

    renderLegend() {
      if (!this.legend) return;
      const keys = Array.from(this.series.keys()).sort();
      const items = [];
      for (const key of keys) {
        const pts = this.series.get(key);
        if (!pts.length) continue;
        const li = document.createElement("li");
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = seriesColor(key);
        const name = document.createElement("span");
        name.className = "legend-name";
        name.textContent = key;
        const val = document.createElement("strong");
        val.textContent = `${fmtNumber(pts[pts.length - 1][1], this.digits)}${this.unit ? " " + this.unit : ""}`;
        li.append(sw, name, val);
        items.push(li);
      }
      this.legend.replaceChildren(...items);
    }

    draw() {
      const canvas = this.canvas;
      if (!canvas.isConnected) return;
      const width = Math.max(200, Math.floor(this.el.clientWidth));
      const dpr = window.devicePixelRatio || 1;
      if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(HEIGHT * dpr)) {
        canvas.width = Math.round(width * dpr);
        canvas.height = Math.round(HEIGHT * dpr);
        canvas.style.width = width + "px";
        canvas.style.height = HEIGHT + "px";
      }
      const ctx = canvas.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, width, HEIGHT);

      const end = Date.now();
      const start = end - this.span;
      let lo = Infinity;
      let hi = -Infinity;
      let visible = 0;
      for (const pts of this.series.values()) {
        for (const [t, v] of pts) {
          if (t < start) continue;
          visible++;
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
      }
      if (this.empty) this.empty.hidden = visible > 0;
      if (!visible) {
        lo = 0;
        hi = 1;
      }
      if (hi - lo < 1e-9) {
        const pad = Math.abs(hi) * 0.05 || 0.5;
        lo -= pad;
        hi += pad;
      }
      const yStep = niceStep(hi - lo, 4);
      const yMin = Math.floor(lo / yStep) * yStep;
      const yMax = Math.ceil(hi / yStep) * yStep;
      const decimals = Math.max(0, -Math.floor(Math.log10(yStep) + 1e-9));

      const styles = getComputedStyle(this.el);
      const ink = styles.getPropertyValue("--chart-ink").trim() || "#5b6b73";
      const grid = styles.getPropertyValue("--chart-grid").trim() || "#e3e8eb";
      ctx.font = "12px system-ui, -apple-system, 'Segoe UI', sans-serif";
      const labels = [];
      for (let y = yMin; y <= yMax + yStep / 2; y += yStep) labels.push(y);
      const labelW = Math.max(...labels.map((y) => ctx.measureText(y.toFixed(decimals)).width));
      const left = Math.ceil(labelW) + 10;
      const right = 8;
      const top = 8;
      const bottom = 22;
      const plotW = width - left - right;
      const plotH = HEIGHT - top - bottom;
      const x = (t) => left + ((t - start) / (end - start)) * plotW;
      const yOf = (v) => top + (1 - (v - yMin) / (yMax - yMin)) * plotH;

      // grid and axes labels
      ctx.strokeStyle = grid;
      ctx.lineWidth = 1;
      ctx.fillStyle = ink;
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      for (const v of labels) {
        const yy = Math.round(yOf(v)) + 0.5;
        ctx.beginPath();
        ctx.moveTo(left, yy);
        ctx.lineTo(width - right, yy);
        ctx.stroke();
        ctx.fillText(v.toFixed(decimals), left - 6, yy);
      }
      const tStep = timeStep(this.span, Math.max(2, Math.floor(plotW / 90)));
      const offset = new Date().getTimezoneOffset() * 60e3;
      ctx.textAlign = "center";
      ctx.textBaseline = "top";
      for (let t = Math.ceil((start - offset) / tStep) * tStep + offset; t <= end; t += tStep) {
        const xx = Math.round(x(t)) + 0.5;
        ctx.beginPath();
        ctx.moveTo(xx, top);
        ctx.lineTo(xx, top + plotH);
        ctx.stroke();
        const label = fmtTime(t, this.span);
        const half = ctx.measureText(label).width / 2;
        ctx.fillText(label, Math.min(Math.max(xx, half + 2), width - half - 2), top + plotH + 6);
      }

      // lines
      ctx.save();
      ctx.beginPath();
      ctx.rect(left, top - 2, plotW + 2, plotH + 4);
      ctx.clip();
      ctx.lineJoin = "round";
      ctx.lineCap = "round";
      for (const [key, pts] of this.series) {
        const color = seriesColor(key);
        ctx.strokeStyle = color;
        ctx.fillStyle = color;
        ctx.lineWidth = 2;
        ctx.beginPath();
        let prev = null;
        let lone = [];
        for (let i = 0; i < pts.length; i++) {
          const [t, v] = pts[i];
          if (t < start - this.gap) continue;
          const px = x(t);
          const py = yOf(v);
          if (prev === null || t - prev > this.gap) {
            ctx.moveTo(px, py);
            const next = pts[i + 1];
            if (!next || next[0] - t > this.gap) lone.push([px, py]);
          } else {
            ctx.lineTo(px, py);
          }
          prev = t;
        }
        ctx.stroke();
        const last = pts[pts.length - 1];
        if (last && last[0] >= start) lone.push([x(last[0]), yOf(last[1])]);
        for (const [px, py] of lone) {
          ctx.beginPath();
          ctx.arc(px, py, 2.5, 0, Math.PI * 2);
          ctx.fill();
        }
      }
      ctx.restore();

      // hover readout
      if (this.readout) {
        if (this.hoverX === null || !visible) {
          this.readout.textContent = "";
        } else {
          const t = start + ((this.hoverX - left) / plotW) * (end - start);
          const parts = [];
          for (const key of Array.from(this.series.keys()).sort()) {
            const pts = this.series.get(key);
            let best = null;
            for (const p of pts) if (best === null || Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p;
            if (best && Math.abs(best[0] - t) <= this.gap) parts.push(`${key} ${fmtNumber(best[1], this.digits)}`);
          }
          const when = new Date(t).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
          this.readout.textContent = parts.length ? `${when} · ${parts.join(" · ")}` : "";
          const xx = Math.round(this.hoverX) + 0.5;
          if (xx >= left && xx <= left + plotW) {
            ctx.strokeStyle = ink;
            ctx.setLineDash([3, 3]);
            ctx.beginPath();
            ctx.moveTo(xx, top);
            ctx.lineTo(xx, top + plotH);
            ctx.stroke();
            ctx.setLineDash([]);
          }
        }
      }
    }
  }

  const groups = []; // {root, url, charts: LineChart[], window}

  async function load(group) {
    const sep = group.url.includes("?") ? "&" : "?";
    let data;
    try {
      const res = await fetch(`${group.url}${sep}window=${encodeURIComponent(group.window)}`, {
        headers: { Accept: "application/json" },
      });
      if (!res.ok) throw new Error(res.statusText);
      data = await res.json();
    } catch (err) {
      for (const c of group.charts) {
        if (c.empty) {
          c.empty.hidden = false;
          c.empty.textContent = "Could not load the history; live values still show.";
        }
      }
      return;
    }
    for (const c of group.charts) {
      c.setData(data.metrics[c.el.dataset.metricKey], WINDOWS[group.window] || WINDOWS["1h"], data.step);
    }
  }

  function mountAll(root) {
    for (const el of (root || document).querySelectorAll("[data-charts]")) {
      if (el._shoalCharts) continue;
      const group = {
        root: el,
        url: el.dataset.telemetryUrl,
        window: "1h",
        charts: Array.from(el.querySelectorAll("[data-chart]"), (c) => new LineChart(c)),
      };
      const picked = document.querySelector("[data-window-picker] input:checked");
      if (picked) group.window = picked.value;
      el._shoalCharts = group;
      groups.push(group);
      load(group);
    }
    prune();
  }

  function prune() {
    for (let i = groups.length - 1; i >= 0; i--) {
      if (!groups[i].root.isConnected) groups.splice(i, 1);
    }
  }

  function onValue(item) {
    const t = Date.parse(item.time) || Date.now();
    for (const g of groups) {
      for (const c of g.charts) if (c.path === item.path) c.add(item.endpoint, t, item.value);
    }
  }

  function setWindow(key) {
    prune();
    for (const g of groups) {
      g.window = key;
      load(g);
    }
  }

  // slide the window along even when nothing arrives
  setInterval(() => {
    prune();
    for (const g of groups) for (const c of g.charts) c.schedule();
  }, 20000);

  window.ShoalCharts = { mountAll, onValue, setWindow };
})();
