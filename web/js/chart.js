// Time-series charts (uPlot, vendored under vendor/uplot/).

import uPlot from '../vendor/uplot/uPlot.esm.js';
import { h } from './dom.js';

const last = (u, si) => {
  const d = u.data[si];
  return d && d.length ? d[d.length - 1] : null;
};
const time = (v) => (v == null ? '–' : new Date(v * 1000).toLocaleTimeString());
const compact = new Intl.NumberFormat('en-US', { notation: 'compact', maximumFractionDigits: 1 });

/**
 * lineChart({series: [{label, color}], unit}) → {el, setData([xs, ys1, ys2, …]), destroy()}.
 * x values are Unix seconds.
 */
export function lineChart({ series, unit = '', height = 230 }) {
  const el = h('div.chart');
  const fmt = (v) => (v == null ? '–' : `${v < 10 && v % 1 ? v.toFixed(1) : compact.format(v)}${unit}`);
  const opts = {
    width: 600,
    height,
    cursor: { drag: { x: false, y: false } },
    // The time axis's span in seconds, on the element (the axis itself is drawn on a canvas).
    hooks: { setScale: [(u, key) => key === 'x' && u.scales.x.max != null && (el.dataset.xSpan = String(Math.round(u.scales.x.max - u.scales.x.min)))] },
    legend: { live: true },
    // At least a minute wide, so a fresh chart's axis is not in half seconds. With one sample
    // uPlot widens the scale to a day of *milliseconds* (86,400,000 s: an axis of years from now),
    // so one sample ends the minute.
    scales: { x: { time: true, range: (u, min, max) => (min == null ? [0, 1] : u.data[0].length === 1 ? [min - 60, min] : [Math.min(min, max - 60), max]) }, y: { range: (u, min, max) => [0, Math.max(max * 1.15, unit === '/s' ? 1 : 5)] } },
    axes: [
      { stroke: '#667085', grid: { stroke: '#eef1f5' }, ticks: { stroke: '#e2e6ec' } },
      {
        stroke: '#667085',
        grid: { stroke: '#eef1f5' },
        ticks: { stroke: '#e2e6ec' },
        size: 56,
        values: (u, vals) => vals.map((v) => compact.format(v) + unit),
      },
    ],
    series: [
      { label: 'Time', value: (u, v, si, idx) => time(idx == null ? last(u, 0) : v) },
      ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color,
        width: 2,
        fill: i === 0 ? s.color + '14' : undefined,
        spanGaps: true,
        points: { show: false },
        // Away from the cursor the legend shows the latest sample.
        value: (u, v, si, idx) => fmt(idx == null ? last(u, si) : v),
      })),
    ],
  };
  const empty = [[], ...series.map(() => [])];
  let plot = null;
  let pending = empty;
  const ro = new ResizeObserver(() => {
    const w = Math.floor(el.clientWidth - 16);
    if (w <= 0) return;
    if (!plot) plot = new uPlot(opts, pending, el);
    plot.setSize({ width: w, height });
  });
  ro.observe(el);
  return {
    el,
    setData(data) {
      pending = data;
      if (plot) plot.setData(data);
    },
    destroy() {
      ro.disconnect();
      if (plot) plot.destroy();
    },
  };
}
