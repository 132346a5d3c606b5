// The router's dashboard: one frame per interval from /dashboard/events (frame fields: see
// corral/cluster/router_dashboard.py), drawn into tiles, per-replica charts and the replica table.
"use strict";

const charts = {};
let previous = null;

function replicaName(replica) {
  return (replica.pool ? replica.pool + " " : "") + "#" + replica.index;
}

function ensureCharts(replicas) {
  if (charts.outstanding) return;
  const series = replicas.map((r) => ({ label: replicaName(r) }));
  charts.outstanding = new SeriesChart($("chart-outstanding"), series);
  charts.kv = new SeriesChart($("chart-kv"), series);
}

function replicaState(replica) {
  if (replica.draining) return ["draining", "state-swapped"];
  return replica.available ? ["available", "state-decode"] : ["out", "state-preempted"];
}

function updateTable(replicas) {
  $("replica-table").tBodies[0].replaceChildren(...replicas.map((replica) => {
    const tr = document.createElement("tr");
    tr.dataset.replica = replicaName(replica);
    const link = document.createElement("a");
    link.href = replica.url.replace(/\/$/, "") + "/dashboard";
    link.textContent = replicaName(replica) + " " + replica.url;
    const [state, stateClass] = replicaState(replica);
    const badge = document.createElement("span");
    badge.className = "badge " + stateClass;
    badge.textContent = state;
    const cells = [link, replica.pool || "-", badge, replica.in_flight, replica.external,
      replica.waiting, (100 * replica.kv_load).toFixed(1) + "%", integer(replica.requests),
      integer(replica.retries), integer(replica.failures), replica.last_error || ""];
    cells.forEach((value) => {
      const td = document.createElement("td");
      if (value instanceof Node) td.append(value); else td.textContent = value;
      tr.append(td);
    });
    return tr;
  }));
}

function onFrame(frame) {
  const wallNow = Date.now() / 1000;
  const replicas = frame.replicas || [];
  const c = frame.counters || {};
  setText("policy", "policy: " + frame.policy);
  setText("r-available", `${replicas.filter((r) => r.available).length} / ${replicas.length}`);
  setText("r-requests", integer(c["corral:router_requests"] || 0));
  setText("r-retries", integer(c["corral:router_retries"] || 0));
  setText("r-failures", integer(c["corral:router_failures"] || 0));
  setText("r-no-replica", integer(c["corral:router_no_replica"] || 0));
  if (previous && frame.now_s > previous.now_s) {
    const routed = (c["corral:router_requests"] || 0) - (previous.counters["corral:router_requests"] || 0);
    setText("r-rate", formatNumber(routed / (frame.now_s - previous.now_s)));
  }
  ensureCharts(replicas);
  charts.outstanding.push([[wallNow, ...replicas.map((r) => r.in_flight + r.external)]]);
  charts.kv.push([[wallNow, ...replicas.map((r) => 100 * r.kv_load)]]);
  updateTable(replicas);
  previous = frame;
}

document.addEventListener("DOMContentLoaded", () => connectPage("/dashboard/events", onFrame));
