/* KaPoW console, audit panel: runs GET /api/audit on demand and shows where every record went. */
"use strict";

(function () {
  const $ = (sel) => document.querySelector(sel);
  const k = window.kapowConsole;
  const CATEGORIES = ["filtered", "landed", "user_errors", "parked", "purged", "pending", "missing"];
  const NAMES = { filtered: "Filtered", landed: "Landed", user_errors: "User errors", parked: "Parked",
                  purged: "Purged", pending: "Pending", missing: "Missing" };
  let running = false;
  let topicsLoaded = false;

  async function loadTopics() {
    if (topicsLoaded) return;
    try {
      const s = await k.api("/api/stats?seconds=1");
      const sel = $("#audit-topic");
      for (const t of s.topics.source) sel.append(k.el("option", { value: t, text: t }));
      topicsLoaded = true;
    } catch (e) { /* the overview reports an unreachable writer */ }
  }

  function render(r) {
    const summary = $("#audit-summary");
    summary.replaceChildren(...["total", ...CATEGORIES].map((c) => k.el("div", {
      class: "kpi" + (c === "missing" && r.missing > 0 ? " alert" : ""), "data-category": c,
    }, [k.el("div", { class: "label", text: c === "total" ? "Records" : NAMES[c] }),
        k.el("div", { class: "value" }, k.el("span", { text: k.fmtNum(r[c]) }))])));
    summary.hidden = false;
    const body = $("#audit-table tbody");
    body.replaceChildren(...r.partitions.map((p) => k.el("tr", { "data-partition": p.topic + "/" + p.partition }, [
      k.el("td", { class: "mono", text: p.topic }),
      k.el("td", { text: String(p.partition) }),
      k.el("td", { class: "mono", text: p.start + "–" + p.end }),
      k.el("td", { class: "mono", text: p.committed < 0 ? "–" : String(p.committed) }),
      k.el("td", { text: k.fmtNum(p.total) }),
      ...CATEGORIES.map((c) => k.el("td", { class: c === "missing" && p.missing > 0 ? "bad" : "", text: k.fmtNum(p[c]) })),
    ])));
    $("#audit-table").hidden = false;
    const list = $("#audit-missing");
    list.replaceChildren(...r.missing_examples.map((m) => k.el("li", { class: "mono" },
      m.topic + "[" + m.partition + "]@" + m.offset + ": " + m.why)));
    list.hidden = r.missing_examples.length === 0;
    const verdict = r.missing > 0 ? r.missing + " missing" : "everything is accounted for";
    $("#audit-status").textContent = k.fmtNum(r.total) + " records audited in " + r.elapsed_s.toFixed(1) +
      " s (group " + r.group + "): " + verdict + (r.unverified ? " · " + r.unverified + " landed unverified (no key)" : "");
    $("#audit-status").dataset.state = r.missing > 0 ? "missing" : "ok";
  }

  async function run(ev) {
    ev.preventDefault();
    if (running) return;
    running = true;
    const button = $("#audit-run");
    button.disabled = true;
    $("#audit-error").hidden = true;
    $("#audit-status").textContent = "Auditing… (every record is read)";
    $("#audit-status").dataset.state = "running";
    const params = new URLSearchParams();
    if ($("#audit-topic").value) params.set("topic", $("#audit-topic").value);
    if ($("#audit-since").value.trim()) params.set("since", $("#audit-since").value.trim());
    try {
      render(await k.api("/api/audit" + (params.toString() ? "?" + params : "")));
    } catch (e) {
      $("#audit-error").textContent = e.message;
      $("#audit-error").hidden = false;
      $("#audit-status").textContent = "The audit did not finish.";
      $("#audit-status").dataset.state = "failed";
    } finally {
      running = false;
      button.disabled = false;
    }
  }

  $("#audit-form").addEventListener("submit", run);
  document.addEventListener("kapow:view", (ev) => { if (ev.detail.view === "audit") loadTopics(); });
  if (location.hash === "#audit") loadTopics();
})();
