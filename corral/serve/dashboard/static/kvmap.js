// The KV block map: one cell per block (or per group of blocks on large pools), coloured by
// state: free, cached (evictable prefix-cache entry), held (KV transfer), shared (a prefix used
// by several requests), or in use by an owner (LoRA adapter or tenant).
"use strict";

const KV_FREE = 0, KV_CACHED = 1, KV_HELD = 2, KV_SHARED = 3, KV_OWNED = 4;
const KV_COLOURS = { [KV_FREE]: "#e5e7eb", [KV_CACHED]: "#93c5fd", [KV_HELD]: "#fbbf24", [KV_SHARED]: "#a78bfa" };
const OWNER_COLOURS = ["#16a34a", "#dc2626", "#0891b2", "#ea580c", "#db2777", "#65a30d", "#7c3aed", "#0d9488"];

function kvColour(state) {
  if (state >= KV_OWNED) return OWNER_COLOURS[(state - KV_OWNED) % OWNER_COLOURS.length];
  return KV_COLOURS[state];
}

function drawKVMap(canvas, kv) {
  const cells = kv.cells;
  const width = canvas.clientWidth || canvas.width;
  canvas.width = width;
  const columns = Math.max(1, Math.min(cells.length, Math.floor(width / 8)));
  const size = Math.max(2, Math.floor(width / columns));
  const rows = Math.ceil(cells.length / columns);
  canvas.height = Math.max(size, rows * size);
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  cells.forEach((state, index) => {
    context.fillStyle = kvColour(state);
    const x = (index % columns) * size, y = Math.floor(index / columns) * size;
    context.fillRect(x, y, size - 1, size - 1);
  });
  canvas.dataset.cells = cells.join(",");
}

function kvLegend(element, kv) {
  const entries = [
    ["free", KV_FREE, kv.num_free], ["cached", KV_CACHED, kv.num_cached],
    ["held (transfer, session pins)", KV_HELD, kv.num_held], ["shared prefix", KV_SHARED, kv.num_shared],
  ];
  kv.owners.forEach((owner, i) => entries.push([owner, KV_OWNED + i, kv.num_owned[owner]]));
  element.replaceChildren(...entries.map(([label, state, count]) => {
    const item = document.createElement("span");
    item.className = "legend-item";
    item.dataset.state = label;
    const swatch = document.createElement("i");
    swatch.style.background = kvColour(state);
    item.append(swatch, `${label}: ${count}`);
    return item;
  }));
}

function kvTiers(element, tiers) {
  element.replaceChildren(...tiers.map((tier) => {
    const item = document.createElement("span");
    item.className = "legend-item";
    const share = tier.num_blocks ? (100 * tier.num_used / tier.num_blocks).toFixed(0) : "0";
    item.textContent = `${tier.name} tier: ${tier.num_used} / ${tier.num_blocks} blocks (${share}%)`;
    return item;
  }));
}
