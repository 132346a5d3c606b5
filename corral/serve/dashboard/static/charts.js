// Time-series charts (uPlot) fed one point per frame, keeping the last HISTORY_S seconds.
"use strict";

const HISTORY_S = 300;
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

class SeriesChart {
  // series: [{label, scale?, points?}]; scales: extra uPlot scales (e.g. a right-hand axis).
  constructor(element, series, { axes = null, scales = {}, pointsOnly = false } = {}) {
    this.element = element;
    this.data = [[]].concat(series.map(() => []));
    const width = Math.max(300, element.clientWidth || 500);
    const uSeries = [{}].concat(series.map((s, i) => ({
      label: s.label,
      scale: s.scale || "y",
      stroke: PALETTE[i % PALETTE.length],
      width: pointsOnly ? 0 : 1.5,
      points: pointsOnly ? { show: true, size: 3, fill: PALETTE[i % PALETTE.length] } : { show: false },
      spanGaps: false,
      value: (u, v) => (v == null ? "-" : formatNumber(v)),
    })));
    const uAxes = axes || [{}, { size: 60, values: (u, vals) => vals.map(formatNumber) }];
    this.plot = new uPlot(
      { width, height: 180, series: uSeries, axes: uAxes, scales: { x: { time: true }, ...scales },
        legend: { live: true } },
      this.data,
      element,
    );
    window.addEventListener("resize", () => this.plot.setSize({ width: Math.max(300, element.clientWidth), height: 180 }));
  }

  // Append points (time in unix seconds, then one value per series; null for a gap).
  push(rows) {
    for (const row of rows) row.forEach((value, i) => this.data[i].push(value));
    const cutoff = (this.data[0].length ? this.data[0][this.data[0].length - 1] : 0) - HISTORY_S;
    let drop = 0;
    while (drop < this.data[0].length && this.data[0][drop] < cutoff) drop++;
    if (drop) this.data = this.data.map((column) => column.slice(drop));
    this.plot.setData(this.data);
  }

  get numPoints() { return this.data[0].length; }
}

function formatNumber(value) {
  if (value == null || !isFinite(value)) return "-";
  const magnitude = Math.abs(value);
  if (magnitude >= 1e6) return (value / 1e6).toFixed(1) + "M";
  if (magnitude >= 1e4) return (value / 1e3).toFixed(1) + "k";
  if (magnitude >= 100) return value.toFixed(0);
  if (magnitude >= 1) return value.toFixed(2);
  if (magnitude === 0) return "0";
  return value.toPrecision(2);
}

function formatSeconds(value) {
  if (value == null || !isFinite(value)) return "-";
  if (value < 1) return (value * 1000).toFixed(value < 0.01 ? 2 : 0) + " ms";
  return value.toFixed(2) + " s";
}

function secondsAxis() {
  return { size: 70, values: (u, vals) => vals.map((v) => formatSeconds(v)) };
}
