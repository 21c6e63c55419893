/* KaPoW console: plain JavaScript, no build step, no network but this writer. Charts are drawn on <canvas>. */
"use strict";

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const STATS_EVERY_MS = 1000;
  const LISTS_EVERY_MS = 5000;
  const PAGE = 50;

  const COLORS = {
    landed: "#16a34a", duplicate: "#0ea5e9", filtered: "#94a3b8", user_error: "#f59e0b", system_error: "#dc2626",
    error_pct: "#dc2626", p50: "#2563eb", p99: "#7c3aed", lag: "#0f766e",
  };
  const LABELS = {
    landed: "landed", duplicate: "duplicate", filtered: "filtered", user_error: "user errors",
    system_error: "system errors", error_pct: "error %", p50: "p50", p99: "p99", lag: "lag",
  };

  // ------------------------------------------------------------------ API
  let token = sessionStorage.getItem("kapow-token") || "";
  let askingToken = null;

  function askToken() {
    if (!askingToken) {
      askingToken = new Promise((resolve) => {
        const modal = $("#token");
        modal.hidden = false;
        $("#token-input").focus();
        $("#token-form").onsubmit = (ev) => {
          ev.preventDefault();
          token = $("#token-input").value.trim();
          sessionStorage.setItem("kapow-token", token);
          modal.hidden = true;
          askingToken = null;
          resolve();
        };
      });
    }
    return askingToken;
  }

  async function api(path, options) {
    for (let attempt = 0; attempt < 3; attempt++) {
      const opts = Object.assign({ headers: {} }, options || {});
      opts.headers = Object.assign({ Accept: "application/json" }, opts.headers);
      if (token) opts.headers.Authorization = "Bearer " + token;
      const res = await fetch(path, opts);
      if (res.status === 401) {
        await askToken();
        continue;
      }
      let body = null;
      try { body = await res.json(); } catch (e) { body = null; }
      if (!res.ok) {
        const err = new Error((body && body.error) || res.status + " " + res.statusText);
        err.status = res.status;
        throw err;
      }
      return body;
    }
    throw new Error("unauthorized");
  }

  // ------------------------------------------------------------------ formatting
  const nf = new Intl.NumberFormat("en-US");
  function fmtNum(v) { return v == null ? "–" : nf.format(Math.round(v)); }
  function fmtRate(v) {
    if (v == null) return "–";
    if (v >= 1000) return nf.format(Math.round(v));
    if (v >= 10) return v.toFixed(0);
    return v.toFixed(1);
  }
  function fmtSeconds(s) {
    if (s == null) return { v: "–", u: "ms" };
    if (s < 1) return { v: (s * 1000).toFixed(s < 0.01 ? 1 : 0), u: "ms" };
    return { v: s.toFixed(2), u: "s" };
  }
  function fmtDuration(s) {
    if (s < 60) return Math.round(s) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }
  function ago(ms) {
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 60) return Math.round(s) + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  function clock(ms) {
    const d = new Date(ms);
    return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of [].concat(children || [])) {
      if (c != null) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  function where(d) {
    if (!d) return "–";
    return (d.vanity || "-") + "/" + (d.database || "-") + "/" + (d.schema || "-") + "." + (d.table || "-");
  }
  function prettyJson(text) {
    if (text == null) return "(null)";
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch (e) { return text; }
  }
  function toast(text, bad) {
    const t = el("div", { class: "toast" + (bad ? " bad" : ""), text });
    $("#toasts").append(t);
    setTimeout(() => t.remove(), 4500);
  }

  // ------------------------------------------------------------------ charts (canvas)
  function niceMax(v) {  // the top of a 4-step axis whose steps are 1, 2, 2.5 or 5 times a power of ten
    if (!(v > 0)) return 1;
    const raw = v / 4;
    const exp = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * exp >= raw) return 4 * m * exp;
    return 40 * exp;
  }
  function tickLabel(s) { return s === 0 ? "now" : s % 60 === 0 ? "-" + s / 60 + " min" : "-" + s + " s"; }

  class Chart {
    constructor(canvas, keys, opts) {
      this.canvas = canvas;
      this.keys = keys;
      this.opts = opts || {};
      this.data = null;
      this.hover = null;
      this.version = 0;
      canvas.addEventListener("mousemove", (ev) => { this.hover = ev.offsetX; this.draw(); });
      canvas.addEventListener("mouseleave", () => { this.hover = null; this.draw(); });
    }
    set(t, series) {
      this.data = { t, series };
      this.version += 1;
      const last = {};
      for (const k of this.keys) {
        const s = series[k] || [];
        last[k] = s.length ? s[s.length - 1] : null;
      }
      this.canvas.dataset.points = String(t.length);
      this.canvas.dataset.last = JSON.stringify(last);
      this.canvas.dataset.version = String(this.version);
      this.draw();
      this.legend(last);
    }
    legend(last) {
      const box = document.getElementById(this.opts.legend);
      if (!box) return;
      box.replaceChildren(...this.keys.map((k) => el("span", { class: "key" }, [
        el("span", { class: "swatch", style: "background:" + COLORS[k] }),
        LABELS[k] + " ",
        el("b", { text: this.opts.format(last[k]) }),
      ])));
    }
    draw() {
      const c = this.canvas;
      const dpr = window.devicePixelRatio || 1;
      const w = c.clientWidth, h = c.clientHeight;
      if (!w || !h) return;
      if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
        c.width = Math.round(w * dpr);
        c.height = Math.round(h * dpr);
      }
      const g = c.getContext("2d");
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, w, h);
      const pad = { l: 48, r: 10, t: 8, b: 22 };
      const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
      const d = this.data;
      const now = Date.now();
      // the time axis spans the history there is: at least a minute, at most five
      const end = d && d.t.length ? Math.max(d.t[d.t.length - 1], now - 2000) : now;
      const have = d && d.t.length ? (end - d.t[0]) / 1000 : 0;
      const spanS = Math.min(300, Math.max(60, have));
      const span = spanS * 1000;
      const step = spanS <= 60 ? 10 : spanS <= 180 ? 30 : 60;
      const t0 = end - span;
      const x = (t) => pad.l + ((t - t0) / span) * pw;
      let max = this.opts.minMax || 0;
      if (d) for (const k of this.keys) for (const v of d.series[k] || []) if (v != null && v > max) max = v;
      max = niceMax(max);
      const y = (v) => pad.t + ph - (v / max) * ph;

      // grid and axes
      g.font = "11px system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif";
      g.fillStyle = "#94a3b8";
      g.strokeStyle = "#eef2f7";
      g.lineWidth = 1;
      g.textAlign = "right";
      g.textBaseline = "middle";
      for (let i = 0; i <= 4; i++) {
        const v = (max * i) / 4;
        const yy = Math.round(y(v)) + 0.5;
        g.beginPath(); g.moveTo(pad.l, yy); g.lineTo(pad.l + pw, yy); g.stroke();
        g.fillText(this.opts.axis(v), pad.l - 6, yy);
      }
      g.textAlign = "center";
      g.textBaseline = "top";
      for (let back = 0; back <= spanS + 0.001; back += step) {
        if (spanS - back < step / 3 && back > 0) continue;  // too close to the left edge for a label
        const xx = x(end - back * 1000);
        g.fillText(tickLabel(back), Math.max(pad.l + 14, Math.min(xx, pad.l + pw - 12)), pad.t + ph + 6);
      }
      if (!d || !d.t.length) {
        g.textBaseline = "middle";
        g.fillText("waiting for data…", pad.l + pw / 2, pad.t + ph / 2);
        return;
      }
      // series
      g.save();
      g.beginPath(); g.rect(pad.l, pad.t - 2, pw, ph + 4); g.clip();
      for (const k of this.keys) {
        const s = d.series[k] || [];
        const color = COLORS[k];
        if (this.opts.fill) {
          g.beginPath();
          let started = false, lastX = 0;
          for (let i = 0; i < s.length; i++) {
            if (s[i] == null) continue;
            const xx = x(d.t[i]);
            if (!started) { g.moveTo(xx, y(0)); started = true; }
            g.lineTo(xx, y(s[i]));
            lastX = xx;
          }
          if (started) {
            g.lineTo(lastX, y(0));
            g.closePath();
            g.fillStyle = color + "22";
            g.fill();
          }
        }
        g.beginPath();
        let pen = false;
        for (let i = 0; i < s.length; i++) {
          if (s[i] == null) { pen = false; continue; }
          const xx = x(d.t[i]), yy = y(s[i]);
          if (pen) g.lineTo(xx, yy); else { g.moveTo(xx, yy); pen = true; }
        }
        g.strokeStyle = color;
        g.lineWidth = 2;
        g.lineJoin = "round";
        g.stroke();
      }
      g.restore();
      // hover: nearest point, a guide line and the values
      if (this.hover != null && this.hover >= pad.l) {
        let best = -1, bestDx = Infinity;
        for (let i = 0; i < d.t.length; i++) {
          const dx = Math.abs(x(d.t[i]) - this.hover);
          if (dx < bestDx) { bestDx = dx; best = i; }
        }
        if (best >= 0 && bestDx < 20) {
          const xx = Math.round(x(d.t[best])) + 0.5;
          g.strokeStyle = "#cbd5e1";
          g.beginPath(); g.moveTo(xx, pad.t); g.lineTo(xx, pad.t + ph); g.stroke();
          const lines = [new Date(d.t[best]).toISOString().slice(11, 19) + " UTC"].concat(
            this.keys.map((k) => LABELS[k] + ": " + this.opts.format((d.series[k] || [])[best])));
          const bw = 8 + Math.max(...lines.map((l) => g.measureText(l).width)) + 8;
          const bh = 8 + lines.length * 15;
          const bx = xx + bw + 12 > pad.l + pw ? xx - bw - 8 : xx + 8;
          g.fillStyle = "rgba(15,23,42,.88)";
          g.fillRect(bx, pad.t + 4, bw, bh);
          g.fillStyle = "#fff";
          g.textAlign = "left";
          g.textBaseline = "top";
          lines.forEach((l, i) => g.fillText(l, bx + 8, pad.t + 8 + i * 15));
        }
      }
    }
  }

  const msAxis = (v) => (v >= 1 ? v.toFixed(v >= 10 ? 0 : 1) + " s" : Math.round(v * 1000) + " ms");
  const msFormat = (v) => { const f = fmtSeconds(v); return f.v + " " + f.u; };
  const charts = {
    rate: new Chart($("#chart-rate"), ["landed", "filtered", "duplicate", "user_error", "system_error"],
      { legend: "legend-rate", axis: (v) => fmtRate(v), format: (v) => (v == null ? "–" : fmtRate(v) + "/s"), minMax: 1 }),
    errors: new Chart($("#chart-errors"), ["error_pct"],
      { legend: "legend-errors", axis: (v) => (v < 10 ? v.toFixed(1) : v.toFixed(0)) + "%", fill: true, minMax: 1,
        format: (v) => (v == null ? "–" : v.toFixed(2) + "%") }),
    latency: new Chart($("#chart-latency"), ["p50", "p99"],
      { legend: "legend-latency", axis: msAxis, format: msFormat, minMax: 0.01 }),
    lag: new Chart($("#chart-lag"), ["lag"],
      { legend: "legend-lag", axis: (v) => fmtRate(v), fill: true, minMax: 10, format: (v) => fmtNum(v) }),
  };
  window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.draw()));

  // ------------------------------------------------------------------ overview
  let lastStats = null;
  let statsFailures = 0;

  async function refreshStats() {
    try {
      const s = await api("/api/stats");
      statsFailures = 0;
      lastStats = s;
      renderStats(s);
    } catch (e) {
      statsFailures += 1;
      if (statsFailures >= 2) {
        const pill = $("#ready-pill");
        pill.dataset.state = "down";
        $("#ready-text").textContent = "writer unreachable";
      }
    }
  }

  function renderStats(s) {
    const pill = $("#ready-pill");
    pill.dataset.state = s.ready ? "ready" : "waiting";
    $("#ready-text").textContent = s.ready ? "Ready · " + s.partitions + " partition" + (s.partitions === 1 ? "" : "s")
      : "Waiting for partitions";
    $("#group-meta").textContent = "group " + s.group + " · up " + fmtDuration(s.uptime_s);

    const cur = s.current, rates = cur.packets_per_s;
    $("#kpi-landed-rate").textContent = fmtRate(rates.landed);
    $("#kpi-landed-total").textContent = fmtNum(s.totals.landed) + " landed since start";
    $("#kpi-error-pct").textContent = cur.error_pct == null ? "0.0" : cur.error_pct.toFixed(cur.error_pct < 10 ? 1 : 0);
    $("#kpi-error-split").textContent = fmtRate(rates.user_error) + "/s user · " + fmtRate(rates.system_error) + "/s system";
    $("#kpi-errors").classList.toggle("alert", (cur.error_pct || 0) >= 5);
    const p99 = fmtSeconds(cur.latency_p99_s), p50 = fmtSeconds(cur.latency_p50_s);
    $("#kpi-p99").textContent = p99.v;
    $("#kpi-p99-unit").textContent = p99.u;
    $("#kpi-p50").textContent = "p50 " + p50.v + " " + p50.u;
    $("#kpi-lag-value").textContent = fmtNum(cur.lag);
    $("#kpi-inflight").textContent = fmtNum(cur.in_flight) + " batch" + (cur.in_flight === 1 ? "" : "es") + " in flight";

    const ser = s.series;
    charts.rate.set(ser.t, ser);
    charts.errors.set(ser.t, ser);
    charts.latency.set(ser.t, ser);
    charts.lag.set(ser.t, ser);

    const body = $("#destinations tbody");
    body.replaceChildren(...s.destinations.map((d) => el("tr", {}, [
      el("td", { text: d.vanity }),
      el("td", { class: "mono", text: d.database }),
      el("td", { class: "mono", text: d.host + ":" + d.port }),
      el("td", {}, el("span", { class: "state " + d.circuit, text: d.circuit.replace("_", "-") })),
      el("td", {}, [el("span", { class: "bar" }, el("i", { style: "width:" + Math.min(100, (100 * d.pool_in_use) / d.max_connections) + "%" })),
        d.pool_in_use + " / " + d.max_connections]),
    ])));
    const t = s.totals;
    $("#totals-line").textContent = "Since start: " + fmtNum(t.received) + " records received · " + fmtNum(t.filtered) +
      " filtered · " + fmtNum(t.landed) + " landed · " + fmtNum(t.duplicate) + " duplicates (no-ops) · " +
      fmtNum(t.user_error) + " user errors · " + fmtNum(t.system_error) + " system errors (parked)";
    $("#dlq-topic").textContent = "records parked on " + s.topics.system_errors + "; reschedule republishes to the source topic";
    $("#ue-topic").textContent = "from " + s.topics.user_errors;
    $("#kpi-dlq-topic").textContent = "on " + s.topics.system_errors;
  }

  function setParked(n) {
    $("#kpi-dlq-value").textContent = fmtNum(n);
    $("#kpi-dlq").classList.toggle("alert", n > 0);
    const badge = $("#dlq-badge");
    badge.hidden = !(n > 0);
    badge.textContent = n > 999 ? "999+" : String(n);
  }

  async function refreshRecent() {
    try {
      const r = await api("/api/dlq?limit=6");
      setParked(r.parked);
      const body = $("#recent-dlq tbody");
      body.replaceChildren(...r.records.map((rec) => el("tr", { "data-id": rec.id }, [
        el("td", { class: "when", title: clock(rec.failed_at_ms), text: ago(rec.failed_at_ms) }),
        el("td", {}, el("span", { class: "code-pill", text: rec.code })),
        el("td", { class: "mono", text: where(rec.destination) }),
        el("td", { text: String(rec.attempt) }),
      ])));
      $("#recent-dlq-empty").hidden = r.records.length > 0;
      $("#recent-dlq").hidden = r.records.length === 0;
    } catch (e) { /* the stats poll reports an unreachable writer */ }
  }

  // ------------------------------------------------------------------ dead letters
  const dlq = { offset: 0, filter: {}, records: [], selected: new Set(), total: 0, current: null };

  function filterQuery(extra) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(dlq.filter)) if (v) p.set(k, v);
    for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
    return p.toString();
  }

  async function refreshDlq() {
    let r;
    try {
      r = await api("/api/dlq?" + filterQuery({ limit: PAGE, offset: dlq.offset }));
      $("#dlq-error").hidden = true;
    } catch (e) {
      $("#dlq-error").textContent = e.message;
      $("#dlq-error").hidden = false;
      return;
    }
    setParked(r.parked);
    dlq.records = r.records;
    dlq.total = r.total;
    const ids = new Set(r.records.map((x) => x.id));
    for (const id of Array.from(dlq.selected)) if (!ids.has(id)) dlq.selected.delete(id);

    const codeSel = $("#f-code");
    const chosen = dlq.filter.code || "";
    const codes = Object.keys(r.facets.codes).sort();
    if (chosen && !codes.includes(chosen)) codes.push(chosen);
    codeSel.replaceChildren(el("option", { value: "", text: "any code" }),
      ...codes.map((c) => el("option", { value: c, text: c + (r.facets.codes[c] ? " (" + r.facets.codes[c] + ")" : "") })));
    codeSel.value = chosen;
    $("#f-destinations").replaceChildren(...Object.keys(r.facets.destinations).sort().map((d) => el("option", { value: d })));

    const body = $("#dlq-table tbody");
    body.replaceChildren(...r.records.map((rec) => {
      const box = el("input", { type: "checkbox", checked: dlq.selected.has(rec.id) });
      box.setAttribute("aria-label", "select " + rec.id);
      box.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (box.checked) dlq.selected.add(rec.id); else dlq.selected.delete(rec.id);
        updateBulk();
      });
      const resched = el("button", { type: "button", class: "btn small ghost", text: "Reschedule", "data-action": "reschedule" });
      const purge = el("button", { type: "button", class: "btn small danger", text: "Purge", "data-action": "purge" });
      resched.addEventListener("click", (ev) => { ev.stopPropagation(); act("reschedule", [rec.id]); });
      purge.addEventListener("click", (ev) => { ev.stopPropagation(); act("purge", [rec.id]); });
      const row = el("tr", { "data-id": rec.id, class: dlq.current === rec.id ? "current" : "" }, [
        el("td", { class: "check" }, box),
        el("td", { class: "when", title: clock(rec.failed_at_ms) }, [ago(rec.failed_at_ms), el("small", { text: rec.id })]),
        el("td", {}, el("span", { class: "code-pill", text: rec.code })),
        el("td", { class: "mono", text: where(rec.destination) }),
        el("td", { class: "mono", text: rec.source.topic + "[" + rec.source.partition + "]@" + rec.source.offset }),
        el("td", { text: String(rec.attempt) }),
        el("td", { class: "reason" }, el("div", { class: "clip", title: rec.message, text: rec.message })),
        el("td", { class: "actions" }, [resched, " ", purge]),
      ]);
      row.addEventListener("click", () => showDlq(rec.id));
      return row;
    }));
    $("#dlq-empty").hidden = r.records.length > 0;
    const first = r.total ? r.offset + 1 : 0, last = r.offset + r.records.length;
    $("#dlq-range").textContent = first + "–" + last + " of " + fmtNum(r.total) + (r.total !== r.parked ? " matching (" + fmtNum(r.parked) + " parked)" : " parked");
    $("#dlq-prev").disabled = r.offset === 0;
    $("#dlq-next").disabled = last >= r.total;
    updateBulk();
  }

  function filtered() { return Object.values(dlq.filter).some((v) => v); }

  function updateBulk() {
    const n = dlq.selected.size;
    const rb = $("#bulk-reschedule"), pb = $("#bulk-purge");
    if (n) {
      rb.textContent = "Reschedule " + n + " selected…";
      pb.textContent = "Purge " + n + " selected…";
    } else {
      const what = filtered() ? fmtNum(dlq.total) + " matching" : "all " + fmtNum(dlq.total);
      rb.textContent = "Reschedule " + what + "…";
      pb.textContent = "Purge " + what + "…";
    }
    rb.disabled = pb.disabled = !(n || dlq.total);
    $("#dlq-all").checked = dlq.records.length > 0 && dlq.records.every((r) => dlq.selected.has(r.id));
  }

  function confirmBox(title, text, okText, danger) {
    return new Promise((resolve) => {
      const modal = $("#confirm");
      $("#confirm-title").textContent = title;
      $("#confirm-text").textContent = text;
      const ok = $("#confirm-ok");
      ok.textContent = okText;
      ok.className = "btn" + (danger ? " danger solid" : "");
      modal.hidden = false;
      const done = (answer) => {
        modal.hidden = true;
        ok.onclick = null;
        $("#confirm-cancel").onclick = null;
        resolve(answer);
      };
      ok.onclick = () => done(true);
      $("#confirm-cancel").onclick = () => done(false);
      ok.focus();
    });
  }

  async function act(action, ids, selection) {
    const verb = action === "reschedule" ? "Reschedule" : "Purge";
    const n = ids ? ids.length : dlq.total;
    const subject = ids && ids.length === 1 ? "record " + ids[0] : fmtNum(n) + " record" + (n === 1 ? "" : "s");
    const text = action === "reschedule"
      ? "Republish " + subject + " to " + (ids && ids.length === 1 ? "its source topic" : "their source topics") +
        ". Each is removed from the queue once Kafka acknowledges it; the destination's unique key makes a replay a no-op."
      : "Drop " + subject + " from the queue. The packet" + (n === 1 ? "" : "s") + " will not be written. This cannot be undone.";
    if (!(await confirmBox(verb + " " + subject + "?", text, verb, action === "purge"))) return;
    try {
      let r;
      if (ids && ids.length === 1) {
        r = await api("/api/dlq/" + encodeURIComponent(ids[0]) + "/" + action, { method: "POST" });
      } else {
        const body = ids ? { ids } : (selection || { all: true });
        r = await api("/api/dlq/" + action, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      }
      toast(r.action.charAt(0).toUpperCase() + r.action.slice(1) + " " + r.count + " record" + (r.count === 1 ? "" : "s") +
        (r.count === 1 ? " (" + r.ids[0] + ")" : ""));
      for (const id of r.ids) dlq.selected.delete(id);
      if (dlq.current && r.ids.includes(dlq.current)) closeDrawer();
    } catch (e) {
      toast(verb + " failed: " + e.message, true);
    }
    await Promise.all([refreshDlq(), refreshRecent()]);
  }

  function bulk(action) {
    if (dlq.selected.size) return act(action, Array.from(dlq.selected));
    const sel = filtered() ? Object.fromEntries(Object.entries(dlq.filter).filter(([, v]) => v)) : { all: true };
    return act(action, null, sel);
  }

  // ------------------------------------------------------------------ drawer
  function openDrawer(kind, title, rec, actions) {
    $("#drawer-kind").textContent = kind;
    $("#drawer-title").textContent = title;
    $("#drawer-actions").hidden = !actions;
    const meta = [
      ["Code", el("span", { class: "code-pill" + (rec.class === "user" ? " user" : ""), text: rec.code })],
      ["Reason", rec.message],
      ["Destination", where(rec.destination)],
      ["Source", rec.source.topic + " [" + rec.source.partition + "] @ " + rec.source.offset],
      ["Published", rec.source.timestamp_ms > 0 ? clock(rec.source.timestamp_ms) : "–"],
      ["Failed", clock(rec.failed_at_ms) + " (" + ago(rec.failed_at_ms) + ")"],
      ["Attempts", String(rec.attempt)],
      ["Key", rec.key == null ? "(none)" : rec.key],
      ["Error record", rec.id],
    ];
    $("#drawer-meta").replaceChildren(...meta.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
    $("#drawer-value").textContent = rec.truncated ? rec.value + " …" : prettyJson(rec.value);
    $("#drawer-size").textContent = fmtNum(rec.size) + " bytes" + (rec.truncated ? ", first " +
      fmtNum(new Blob([rec.value || ""]).size) + " shown" : "");
    const headers = Object.entries(rec.headers || {}).map(([k, v]) => k + ": " + v).join("\n");
    $("#drawer-headers").textContent = headers || "(none)";
    $("#drawer").hidden = false;
  }

  function closeDrawer() {
    $("#drawer").hidden = true;
    dlq.current = null;
    $$("#dlq-table tr.current, #ue-table tr.current").forEach((r) => r.classList.remove("current"));
  }

  async function showDlq(id) {
    try {
      const rec = await api("/api/dlq/" + encodeURIComponent(id));
      dlq.current = id;
      $$("#dlq-table tbody tr").forEach((r) => r.classList.toggle("current", r.dataset.id === id));
      openDrawer("Parked record (system error)", id, rec, true);
      $("#drawer-reschedule").onclick = () => act("reschedule", [id]);
      $("#drawer-purge").onclick = () => act("purge", [id]);
    } catch (e) {
      toast(e.message, true);
      refreshDlq();
    }
  }

  // ------------------------------------------------------------------ user errors
  const ue = { records: [] };

  async function refreshUserErrors() {
    const code = $("#ue-code").value, limit = $("#ue-limit").value;
    let r;
    try {
      r = await api("/api/user-errors?" + new URLSearchParams(Object.assign({ limit }, code ? { code } : {})));
      $("#ue-error").hidden = true;
    } catch (e) {
      $("#ue-error").textContent = e.message;
      $("#ue-error").hidden = false;
      return;
    }
    ue.records = r.records;
    const sel = $("#ue-code");
    const known = new Set(Array.from(sel.options).map((o) => o.value));
    for (const rec of r.records) if (!known.has(rec.code)) { sel.append(el("option", { value: rec.code, text: rec.code })); known.add(rec.code); }
    const body = $("#ue-table tbody");
    body.replaceChildren(...r.records.map((rec) => {
      const row = el("tr", { "data-id": rec.id }, [
        el("td", { class: "when", title: clock(rec.failed_at_ms) }, [ago(rec.failed_at_ms), el("small", { text: rec.id })]),
        el("td", {}, el("span", { class: "code-pill user", text: rec.code })),
        el("td", { class: "mono", text: where(rec.destination) }),
        el("td", { class: "mono", text: rec.source.topic + "[" + rec.source.partition + "]@" + rec.source.offset }),
        el("td", { class: "mono", text: rec.key == null ? "–" : rec.key }),
        el("td", { class: "reason" }, el("div", { class: "clip", title: rec.message, text: rec.message })),
      ]);
      row.addEventListener("click", () => {
        $$("#ue-table tbody tr").forEach((x) => x.classList.toggle("current", x === row));
        openDrawer("User error (read-only)", rec.id, rec, false);
      });
      return row;
    }));
    $("#ue-empty").hidden = r.records.length > 0;
  }

  // ------------------------------------------------------------------ navigation and wiring
  let view = "overview";
  function route() {
    const name = (location.hash || "#overview").slice(1);
    view = ["overview", "dlq", "user-errors", "audit"].includes(name) ? name : "overview";
    $$(".view").forEach((v) => { v.hidden = v.dataset.view !== view; });
    $$(".tab").forEach((t) => t.classList.toggle("active", t.dataset.tab === view));
    closeDrawer();
    if (view === "overview") { Object.values(charts).forEach((c) => c.draw()); refreshRecent(); }
    if (view === "dlq") refreshDlq();
    if (view === "user-errors") refreshUserErrors();
    document.dispatchEvent(new CustomEvent("kapow:view", { detail: { view, stats: lastStats } }));
  }
  window.addEventListener("hashchange", route);
  window.kapowConsole = { api, el, toast, fmtNum, clock };  // for the other panels (audit.js)

  $("#dlq-filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    dlq.filter = { code: $("#f-code").value, destination: $("#f-destination").value.trim(),
                   since: $("#f-since").value.trim(), until: $("#f-until").value.trim() };
    dlq.offset = 0;
    dlq.selected.clear();
    refreshDlq();
  });
  $("#f-code").addEventListener("change", () => $("#dlq-filters").requestSubmit());
  $("#f-clear").addEventListener("click", () => {
    $("#dlq-filters").reset();
    dlq.filter = {};
    dlq.offset = 0;
    dlq.selected.clear();
    refreshDlq();
  });
  $("#dlq-prev").addEventListener("click", () => { dlq.offset = Math.max(0, dlq.offset - PAGE); refreshDlq(); });
  $("#dlq-next").addEventListener("click", () => { dlq.offset += PAGE; refreshDlq(); });
  $("#dlq-all").addEventListener("change", (ev) => {
    for (const r of dlq.records) if (ev.target.checked) dlq.selected.add(r.id); else dlq.selected.delete(r.id);
    $$("#dlq-table tbody input[type=checkbox]").forEach((b) => { b.checked = ev.target.checked; });
    updateBulk();
  });
  $("#bulk-reschedule").addEventListener("click", () => bulk("reschedule"));
  $("#bulk-purge").addEventListener("click", () => bulk("purge"));
  $("#drawer-close").addEventListener("click", closeDrawer);
  $("#ue-code").addEventListener("change", refreshUserErrors);
  $("#ue-limit").addEventListener("change", refreshUserErrors);
  document.addEventListener("keydown", (ev) => {
    if (ev.key !== "Escape") return;
    if (!$("#confirm").hidden) $("#confirm-cancel").click(); else closeDrawer();
  });

  route();
  refreshStats();
  refreshRecent();
  setInterval(refreshStats, STATS_EVERY_MS);
  setInterval(() => {
    if (document.hidden) return;
    if (view === "overview") refreshRecent();
    if (view === "dlq" && $("#confirm").hidden) refreshDlq();
    if (view === "user-errors") refreshUserErrors();
  }, LISTS_EVERY_MS);
})();
