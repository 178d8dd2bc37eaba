/**
 * Two small chart kinds as standalone SVG text, for the benchmark report: a line chart
 * (one or more series of (x, y) points, x linear or logarithmic) and a grouped bar chart
 * (one bar per series in each group). No dependencies; fixed layout, readable on GitHub.
 */

const WIDTH = 720;
const HEIGHT = 400;
const MARGIN = { left: 70, right: 170, top: 40, bottom: 60 };
const PLOT_W = WIDTH - MARGIN.left - MARGIN.right;
const PLOT_H = HEIGHT - MARGIN.top - MARGIN.bottom;
/** Colour-blind-safe palette (Okabe and Ito). */
const COLOURS = ['#0072B2', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#56B4E9', '#000000'];
const TICKS = 5;
const FONT = 'font-family="sans-serif" font-size="12"';

export interface LineSeries {
  name: string;
  points: ReadonlyArray<readonly [number, number]>;
}

export interface LineChart {
  title: string;
  xLabel: string;
  yLabel: string;
  series: LineSeries[];
  /** Logarithmic x axis, ticks at the data's x values. */
  logX?: boolean;
  /** A dashed horizontal line, e.g. a target. */
  reference?: { y: number; label: string };
}

export interface BarChart {
  title: string;
  yLabel: string;
  groups: string[];
  series: { name: string; values: ReadonlyArray<number | null> }[];
  reference?: { y: number; label: string };
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** A round step (1, 2 or 5 times a power of ten) that splits [0, max] into about TICKS parts. */
function niceStep(max: number): number {
  if (!(max > 0)) return 1;
  const raw = max / TICKS;
  const pow = 10 ** Math.floor(Math.log10(raw));
  const f = raw / pow;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * pow;
}

function label(n: number): string {
  if (n === 0) return '0';
  if (Math.abs(n) >= 1000) return n.toLocaleString('en-US', { maximumFractionDigits: 0 });
  return Number(n.toPrecision(3)).toString();
}

function frame(title: string, xLabel: string, yLabel: string, body: string[]): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="#ffffff"/>`,
    `<text x="${MARGIN.left}" y="24" font-family="sans-serif" font-size="15" font-weight="bold">${esc(title)}</text>`,
    ...body,
    `<line x1="${MARGIN.left}" y1="${MARGIN.top + PLOT_H}" x2="${MARGIN.left + PLOT_W}" y2="${MARGIN.top + PLOT_H}" stroke="#000"/>`,
    `<line x1="${MARGIN.left}" y1="${MARGIN.top}" x2="${MARGIN.left}" y2="${MARGIN.top + PLOT_H}" stroke="#000"/>`,
    `<text x="${MARGIN.left + PLOT_W / 2}" y="${HEIGHT - 14}" ${FONT} text-anchor="middle">${esc(xLabel)}</text>`,
    `<text x="18" y="${MARGIN.top + PLOT_H / 2}" ${FONT} text-anchor="middle" transform="rotate(-90 18 ${MARGIN.top + PLOT_H / 2})">${esc(yLabel)}</text>`,
    '</svg>',
    '',
  ].join('\n');
}

/** Horizontal grid lines and y tick labels for [0, yMax]; returns the y scale's top. */
function yAxis(maxValue: number, body: string[]): (y: number) => number {
  const step = niceStep(maxValue);
  const top = Math.max(step, Math.ceil(maxValue / step) * step);
  const y = (v: number): number => MARGIN.top + PLOT_H - (v / top) * PLOT_H;
  for (let v = 0; v <= top + step / 2; v += step) {
    body.push(`<line x1="${MARGIN.left}" y1="${y(v)}" x2="${MARGIN.left + PLOT_W}" y2="${y(v)}" stroke="#e0e0e0"/>`);
    body.push(`<text x="${MARGIN.left - 6}" y="${y(v) + 4}" ${FONT} text-anchor="end">${label(v)}</text>`);
  }
  return y;
}

function legend(names: string[], body: string[]): void {
  names.forEach((name, i) => {
    const ly = MARGIN.top + 10 + i * 20;
    const lx = MARGIN.left + PLOT_W + 16;
    body.push(`<rect x="${lx}" y="${ly - 9}" width="14" height="10" fill="${COLOURS[i % COLOURS.length]}"/>`);
    body.push(`<text x="${lx + 20}" y="${ly}" ${FONT}>${esc(name)}</text>`);
  });
}

function reference(ref: { y: number; label: string } | undefined, y: (v: number) => number, body: string[]): void {
  if (!ref) return;
  body.push(`<line x1="${MARGIN.left}" y1="${y(ref.y)}" x2="${MARGIN.left + PLOT_W}" y2="${y(ref.y)}" stroke="#555" stroke-dasharray="6 4"/>`);
  body.push(`<text x="${MARGIN.left + PLOT_W - 4}" y="${y(ref.y) - 5}" ${FONT} text-anchor="end" fill="#555">${esc(ref.label)}</text>`);
}

export function lineChart(c: LineChart): string {
  const body: string[] = [];
  const pts = c.series.flatMap((s) => s.points).filter(([x, v]) => Number.isFinite(x) && Number.isFinite(v));
  const xs = [...new Set(pts.map(([x]) => x))].sort((a, b) => a - b);
  const yMax = Math.max(0, ...pts.map(([, v]) => v), c.reference?.y ?? 0) * 1.05;
  const y = yAxis(yMax, body);
  const fx = c.logX ? (v: number): number => Math.log10(v) : (v: number): number => v;
  const lo = fx(xs[0] ?? 1);
  const hi = fx(xs.at(-1) ?? 1);
  const span = hi - lo || 1;
  const x = (v: number): number => MARGIN.left + 20 + ((fx(v) - lo) / span) * (PLOT_W - 40);
  const ticks = c.logX || xs.length <= 12 ? xs : Array.from({ length: TICKS + 1 }, (_, i) => (xs[0] ?? 0) + (i * ((xs.at(-1) ?? 0) - (xs[0] ?? 0))) / TICKS);
  for (const t of ticks) {
    body.push(`<line x1="${x(t)}" y1="${MARGIN.top + PLOT_H}" x2="${x(t)}" y2="${MARGIN.top + PLOT_H + 5}" stroke="#000"/>`);
    body.push(`<text x="${x(t)}" y="${MARGIN.top + PLOT_H + 19}" ${FONT} text-anchor="middle">${label(t)}</text>`);
  }
  reference(c.reference, y, body);
  c.series.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const good = s.points.filter(([px, pv]) => Number.isFinite(px) && Number.isFinite(pv));
    if (good.length > 1) body.push(`<polyline fill="none" stroke="${colour}" stroke-width="2" points="${good.map(([px, pv]) => `${x(px).toFixed(1)},${y(pv).toFixed(1)}`).join(' ')}"/>`);
    for (const [px, pv] of good) body.push(`<circle cx="${x(px).toFixed(1)}" cy="${y(pv).toFixed(1)}" r="3.5" fill="${colour}"><title>${esc(`${s.name}: ${label(px)}, ${label(pv)}`)}</title></circle>`);
  });
  legend(c.series.map((s) => s.name), body);
  return frame(c.title, c.xLabel, c.yLabel, body);
}

export function barChart(c: BarChart): string {
  const body: string[] = [];
  const vals = c.series.flatMap((s) => s.values).filter((v): v is number => v !== null && Number.isFinite(v));
  const y = yAxis(Math.max(0, ...vals, c.reference?.y ?? 0) * 1.05, body);
  const groupW = PLOT_W / Math.max(1, c.groups.length);
  const barW = (groupW * 0.8) / Math.max(1, c.series.length);
  c.groups.forEach((g, gi) => {
    const gx = MARGIN.left + gi * groupW + groupW * 0.1;
    body.push(`<text x="${gx + groupW * 0.4}" y="${MARGIN.top + PLOT_H + 19}" ${FONT} text-anchor="middle">${esc(g)}</text>`);
    c.series.forEach((s, si) => {
      const v = s.values[gi];
      if (v === null || v === undefined || !Number.isFinite(v)) return;
      const top = y(v);
      body.push(`<rect x="${(gx + si * barW).toFixed(1)}" y="${top.toFixed(1)}" width="${(barW - 1).toFixed(1)}" height="${(MARGIN.top + PLOT_H - top).toFixed(1)}" fill="${COLOURS[si % COLOURS.length]}"><title>${esc(`${s.name}, ${g}: ${label(v)}`)}</title></rect>`);
    });
  });
  reference(c.reference, y, body);
  legend(c.series.map((s) => s.name), body);
  return frame(c.title, '', c.yLabel, body);
}
