// The dashboard: one frame per interval from /dashboard/events, drawn into the tiles, charts,
// KV map and request tables. Frame fields: see corral/serve/dashboard/publisher.py.
"use strict";

const charts = {};

function setupCharts() {
  charts.throughput = new SeriesChart($("chart-throughput"), [
    { label: "generated tok/s" }, { label: "prompt tok/s" },
  ]);
  charts.latency = new SeriesChart($("chart-latency"), [
    { label: "TTFT p50" }, { label: "TTFT p99" }, { label: "TPOT p50" }, { label: "TPOT p99" },
  ], { axes: [{}, secondsAxis()] });
  charts.steps = new SeriesChart($("chart-steps"), [
    { label: "tokens" }, { label: "requests" }, { label: "decodes" }, { label: "step ms", scale: "ms" },
  ], {
    pointsOnly: true,
    scales: { ms: {} },
    axes: [{}, { size: 50 }, { scale: "ms", side: 1, size: 50, grid: { show: false } }],
  });
  charts.queue = new SeriesChart($("chart-queue"), [
    { label: "running" }, { label: "waiting" }, { label: "KV %" },
  ]);
}

function pair(a, b) {
  return `${formatSeconds(a)} / ${formatSeconds(b)}`;
}

function updateTiles(frame) {
  const c = frame.counters || {}, g = frame.gauges || {};
  setText("g-running", integer(g["corral:num_requests_running"]));
  setText("g-waiting", integer(g["corral:num_requests_waiting"]));
  const usage = g["corral:kv_cache_usage_perc"];
  setText("g-kv", usage == null ? "-" : (100 * usage).toFixed(1) + "%");
  setText("c-requests", integer(c["corral:request_success"]));
  setText("c-rejected", integer(c["corral:request_rejected"]));
  setText("c-prompt-tokens", integer(c["corral:prompt_tokens"]));
  setText("c-generation-tokens", integer(c["corral:generation_tokens"]));
  setText("c-preemptions", integer(c["corral:num_preemptions"]));
  const queries = c["corral:prefix_cache_queries"];
  setText("c-prefix-hit", queries ? (100 * c["corral:prefix_cache_hits"] / queries).toFixed(1) + "%" : "-");
  const [short, long] = frame.windows || [{}, {}];
  const throughput = short.generation_tokens_per_s;
  setText("w-throughput", throughput == null ? "-" : formatNumber(throughput));
  setText("w-ttft", pair(long.ttft_p50_s, long.ttft_p99_s));
  setText("w-tpot", pair(long.tpot_p50_s, long.tpot_p99_s));
}

function updateCharts(frame, wallNow) {
  const [short, long] = frame.windows || [{}, {}];
  const g = frame.gauges || {};
  charts.throughput.push([[wallNow, short.generation_tokens_per_s ?? null, short.prompt_tokens_per_s ?? null]]);
  charts.latency.push([[wallNow, long.ttft_p50_s ?? null, long.ttft_p99_s ?? null,
    long.tpot_p50_s ?? null, long.tpot_p99_s ?? null]]);
  const usage = g["corral:kv_cache_usage_perc"];
  charts.queue.push([[wallNow, g["corral:num_requests_running"] ?? null,
    g["corral:num_requests_waiting"] ?? null, usage == null ? null : 100 * usage]]);
  // Steps: [seq, end_s, duration_s, tokens, requests, decodes, preempted] on the engine's
  // monotonic clock, which frame.now_s shares.
  const steps = frame.steps || [];
  if (steps.length) {
    // A replayed simulation runs time_scale wall seconds per virtual second.
    const scale = frame.time_scale ?? 1;
    charts.steps.push(steps.map((s) => [wallNow - scale * (frame.now_s - s[1]), s[3], s[4], s[5], 1000 * s[2]]));
    const last = steps[steps.length - 1];
    setText("steps-note", `last: ${last[3]} tokens, ${last[4]} requests, ${(1000 * last[2]).toFixed(1)} ms`);
  }
}

function progressCell(row) {
  const cell = document.createElement("td");
  const bar = document.createElement("div");
  bar.className = "progress";
  const fill = document.createElement("span");
  let done, total, label;
  if (row.state === "prefill" || row.num_computed_tokens < row.num_prompt_tokens) {
    done = row.num_computed_tokens; total = row.num_prompt_tokens; label = `prompt ${done}/${total}`;
  } else {
    done = row.num_output_tokens; total = row.max_tokens; label = `output ${done}/${total}`;
  }
  fill.style.width = (total ? Math.min(100, 100 * done / total) : 0) + "%";
  bar.append(fill);
  const text = document.createElement("small");
  text.textContent = label;
  cell.append(bar, text);
  return cell;
}

function requestRows(tbody, rows) {
  tbody.replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    tr.dataset.requestId = row.id;
    tr.dataset.state = row.state;
    const cells = [row.rank + 1, row.id, null, row.owner, null, row.num_blocks, row.num_preemptions,
      row.age_s.toFixed(1) + " s"];
    cells.forEach((value, i) => {
      if (i === 4) { tr.append(progressCell(row)); return; }
      const td = document.createElement("td");
      if (i === 2) {
        const badge = document.createElement("span");
        badge.className = "badge state-" + row.state;
        badge.textContent = row.state;
        td.append(badge);
      } else {
        td.textContent = value;
      }
      tr.append(td);
    });
    return tr;
  }));
}

function updateRequests(frame) {
  const requests = frame.requests;
  if (!requests) return;
  requestRows($("running-table").tBodies[0], requests.running);
  requestRows($("waiting-table").tBodies[0], requests.waiting);
  setText("waiting-order", requests.waiting_order === "policy" ? "(in admission order)" : "(in arrival order)");
  setText("policy", "policy: " + requests.policy);
}

function updateSLO(frame) {
  const classes = Object.entries(frame.slo || {}).sort();
  $("slo-table").tBodies[0].replaceChildren(...classes.map(([name, s]) => {
    const tr = document.createElement("tr");
    tr.dataset.sloClass = name;
    const attainment = s.attainment_ratio == null ? "-" : (100 * s.attainment_ratio).toFixed(1) + "%";
    [name, attainment, integer(s.requests_finished), integer(s.requests_with_target),
      integer(s.requests_attained), integer(s.requests_aborted), formatSeconds(s.max_queue_wait_seconds)]
      .forEach((value) => { const td = document.createElement("td"); td.textContent = value; tr.append(td); });
    return tr;
  }));
}

function updateKV(frame) {
  const kv = frame.kv;
  if (!kv) return;
  drawKVMap($("kv-map"), kv);
  kvLegend($("kv-legend"), kv);
  kvTiers($("kv-tiers"), kv.tiers);
  const per = kv.blocks_per_cell > 1 ? `, ${kv.blocks_per_cell} blocks per cell` : "";
  setText("kv-note", `${kv.num_blocks} blocks of ${kv.block_size} tokens${per}`);
}

// A replayed simulation's instances (corral simulate dashboard): links to each one's view.
function updateInstances(frame) {
  const element = $("instances");
  if (!frame.instances || element.childElementCount) return;
  element.replaceChildren(...frame.instances.map((index) => {
    const link = document.createElement("a");
    link.href = "?instance=" + index;
    link.className = "pill" + (index === frame.instance ? " state-ok" : "");
    link.textContent = "instance " + index;
    return link;
  }));
}

function onFrame(frame) {
  const wallNow = Date.now() / 1000;
  setText("model", frame.model);
  updateInstances(frame);
  if (!frame.healthy) setConnection("engine down", "state-bad");
  updateTiles(frame);
  updateCharts(frame, wallNow);
  updateRequests(frame);
  updateKV(frame);
  updateSLO(frame);
}

document.addEventListener("DOMContentLoaded", () => {
  setupCharts();
  connectPage("/dashboard/events" + window.location.search, onFrame);
});
