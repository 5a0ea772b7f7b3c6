// flowmill health view: the Pipeline's graph is inline SVG rendered by the API from the
// spec; this script polls /pipelines/{name}/health every second and writes each node's
// numbers into it. window.flowmillHealth.snapshot() exposes what is shown (for tests).
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const apiKey = params.get("api_key");
  const pipeline = document.body.dataset.pipeline;
  const POLL_MS = 1000;
  const $ = (id) => document.getElementById(id);
  const state = { polls: 0, health: null, error: null };

  const fmtRate = (v) => (v === null || v === undefined ? "–" : v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString("en"));
  const fmtNum = (v) => (v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en"));
  const fmtTime = (ms) => (ms ? new Date(ms).toISOString().slice(11, 19) : "");

  function setStatus(text, cls) {
    const el = $("status");
    el.textContent = text;
    el.className = `status ${cls || ""}`;
  }

  // State, ready/replicas, restarts; on a cluster also the pods that stopped reporting
  // within the hour (Prometheus: deleted, evicted, rolled or scaled down).
  const pods = (node) =>
    `${node.state || "unknown"} · ${node.ready_replicas ?? "–"}/${node.replicas ?? "–"} · restarts ${node.restarts ?? "–"}`
    + (node.pods_gone ? ` · gone ${node.pods_gone}` : "");

  function lines(node) {
    switch (node.kind) {
      case "source":
        return [
          `out ${fmtRate(node.rate_out)}/s · ${fmtNum(node.events_out)}`,
          `bad input ${fmtNum(node.dead_letters)}`,
          pods(node),
        ];
      case "step":
        return [
          `in ${fmtRate(node.rate_in)}/s · out ${fmtRate(node.rate_out)}/s`,
          `lag ${fmtNum(node.lag)} · dead ${fmtNum(node.dead_letters)}`,
          pods(node),
        ];
      case "topic":
        return [
          `${fmtNum(node.messages)} messages`,
          `in ${fmtRate(node.rate_in)}/s`,
          node.reasons.length ? `newest: ${node.reasons[0].reason.slice(0, 22) + "…"}` : "",
        ];
      default:
        return [`in ${fmtRate(node.rate_in)}/s · ${fmtNum(node.events_in)}`, node.state || "", ""];
    }
  }

  function render(health) {
    for (const node of health.nodes) {
      const g = document.querySelector(`g[data-node="${CSS.escape(node.id)}"]`);
      if (!g) continue;
      const texts = lines(node);
      g.querySelectorAll("text.line").forEach((t, i) => { t.textContent = texts[i] || ""; });
      g.setAttribute("class", g.getAttribute("class").replace(/ state-\S+| has-dead/g, "")
        + (node.state ? ` state-${node.state}` : "") + (node.dead_letters ? " has-dead" : ""));
      g.dataset.state = node.state || "";
      g.dataset.restarts = node.restarts ?? "";
      g.dataset.rateIn = node.rate_in ?? "";
      g.dataset.rateOut = node.rate_out ?? "";
      const title = g.querySelector("title");
      const why = node.message ? `\n${node.message}` : "";
      title.textContent = `${node.id}${why}`;
    }
    const dead = new Map();
    for (const node of health.nodes) {
      if (node.kind !== "topic") continue;
      for (const d of node.reasons) dead.set(`${d.topic}/${d.partition}/${d.offset}`, d);
    }
    const rows = [...dead.values()].sort((a, b) => (b.timestamp_ms || 0) - (a.timestamp_ms || 0));
    const table = $("dead-letters");
    table.innerHTML = "";
    const head = table.createTHead().insertRow();
    for (const name of ["time", "step", "topic", "reason", "event"]) {
      head.appendChild(document.createElement("th")).textContent = name;
    }
    const body = table.createTBody();
    for (const d of rows) {
      const tr = body.insertRow();
      tr.insertCell().textContent = fmtTime(d.timestamp_ms);
      tr.insertCell().textContent = d.step || "";
      tr.insertCell().textContent = `${d.topic}[${d.partition}]@${d.offset}`;
      const reason = tr.insertCell();
      reason.className = "reason";
      reason.textContent = d.reason;
      tr.insertCell().textContent = d.origin || "";
    }
    $("dead-count").textContent = rows.length ? `${rows.length} shown` : "(none)";
    $("source").textContent = `${health.detail}; Kafka: ${health.kafka}`;
    $("updated").textContent = `updated ${fmtTime(health.updated_ms)} UTC`;
    const api = health.api;
    $("api-state").textContent = api ? `${api.state} · restarts ${api.restarts}` : "";
  }

  async function poll() {
    try {
      const headers = apiKey ? { "X-API-Key": apiKey } : {};
      const response = await fetch(`/pipelines/${encodeURIComponent(pipeline)}/health`, { headers });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const health = await response.json();
      state.health = health;
      state.polls += 1;
      state.error = null;
      render(health);
      setStatus("live", "live");
      $("message").hidden = true;
    } catch (err) {
      state.error = String(err);
      setStatus("unreachable", "down");
      $("message").textContent = `health: ${err}`;
      $("message").hidden = false;
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  $("pipeline").addEventListener("change", (e) => {
    const next = new URLSearchParams(location.search);
    next.set("pipeline", e.target.value);
    location.search = next.toString();
  });

  window.flowmillHealth = {
    snapshot() {
      const nodes = {};
      document.querySelectorAll("#graph g[data-node]").forEach((g) => {
        nodes[g.dataset.node] = {
          state: g.dataset.state || null,
          restarts: g.dataset.restarts === "" || g.dataset.restarts === undefined ? null : Number(g.dataset.restarts),
          rate_in: g.dataset.rateIn ? Number(g.dataset.rateIn) : null,
          rate_out: g.dataset.rateOut ? Number(g.dataset.rateOut) : null,
          text: [...g.querySelectorAll("text")].map((t) => t.textContent),
        };
      });
      return {
        pipeline,
        polls: state.polls,
        error: state.error,
        nodes,
        edges: [...document.querySelectorAll("#graph path.edge")].map((p) => [p.dataset.source, p.dataset.target]),
        deadLetters: [...document.querySelectorAll("#dead-letters tbody tr")].map((tr) => [...tr.cells].map((c) => c.textContent)),
      };
    },
  };

  poll();
})();
