#!/usr/bin/env node
// Compares benchmark runs side by side: node tests/bench/compare.mjs A.json B.json [C.json ...]
// (with no argument: the two newest files in tests/bench/results/). The last column is the
// last run divided by the first; the machine is shared, so look at ratios that move a lot.

import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { table } from './report.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** The figures worth comparing, flattened to label -> number. */
export function figures(r) {
  const out = {};
  const put = (k, v) => { if (Number.isFinite(v)) out[k] = v; };
  for (const s of r.live?.stacks || []) {
    if (!s.ok) continue;
    for (const [k, l] of Object.entries(s.latency || {})) {
      put(`${s.name} photon ${k} p50 ms`, l.p50);
      put(`${s.name} photon ${k} p95 ms`, l.p95);
    }
    put(`${s.name} CPU busy %`, s.cpu?.busy?.cpuPercent);
    put(`${s.name} CPU still %`, s.cpu?.still?.cpuPercent);
    put(`${s.name} CPU no viewer %`, s.cpu?.noViewer?.cpuPercent);
    put(`${s.name} busy shown fps`, s.busy?.shown_fps);
    put(`${s.name} busy kbit/s`, s.busy?.kbit_s);
    put(`${s.name} busy page fps`, s.busy?.page_fps);
  }
  for (const e of r.live?.encode || []) {
    put(`encode ${e.size} agent stats ms/frame`, e.agent?.encode_ms_p50);
    put(`encode ${e.size} agent threads ms/frame`, e.agent?.pipeline_threads_cpu_ms_per_frame);
    put(`encode ${e.size} agent process ms/frame`, e.agent?.process_cpu_ms_per_frame);
    put(`encode ${e.size} agent fps`, e.agent?.fps_mean);
    put(`encode ${e.size} bare x264 ms/frame`, e.x264?.cpu_ms_per_frame);
  }
  // tests/bench/app.mjs runs
  for (const ph of ['single', 'grid', 'grid_focused']) {
    for (const [m, x] of Object.entries(r[ph]?.machines || {})) {
      put(`app ${ph} ${m} drawn fps`, x.drawn_fps);
      put(`app ${ph} ${m} latency p50 ms`, x.latency_ms?.p50);
      put(`app ${ph} ${m} latency p95 ms`, x.latency_ms?.p95);
    }
    put(`app ${ph} CPU %`, r[ph]?.app?.cpu_percent);
    put(`app ${ph} PSS MB`, r[ph]?.app?.pss_mb);
  }
  for (const ph of ['idle', 'idle_after']) {
    put(`app ${ph} CPU %`, r[ph]?.cpu_percent);
    put(`app ${ph} PSS MB`, r[ph]?.pss_mb);
    put(`app ${ph} RSS MB`, r[ph]?.rss_mb);
  }
  const c = r.computer;
  if (c?.ok) {
    for (const k of ['porthole_click', 'porthole_click_recording', 'reference_click', 'porthole_screenshot_action',
      'porthole_get_screenshot', 'porthole_get_screenshot_nosettle', 'reference_screenshot']) {
      put(`${k} p50 ms`, c[k]?.p50);
      put(`${k} p95 ms`, c[k]?.p95);
    }
  }
  return out;
}

let files = process.argv.slice(2);
if (files.length === 0) {
  const dir = path.join(HERE, 'results');
  files = readdirSync(dir).filter((f) => f.endsWith('.json')).map((f) => path.join(dir, f))
    .sort((a, b) => statSync(a).mtimeMs - statSync(b).mtimeMs).slice(-2);
}
if (files.length < 2) {
  console.error('usage: node tests/bench/compare.mjs A.json B.json [...]  (needs two runs)');
  process.exit(2);
}
const runs = files.map((f) => JSON.parse(readFileSync(f, 'utf8')));
const figs = runs.map(figures);
const keys = [...new Set(figs.flatMap((x) => Object.keys(x)))];
const fmt = (v) => (v === undefined ? '–' : String(v));
const rows = keys.map((k) => {
  const a = figs[0][k], z = figs[figs.length - 1][k];
  return [k, ...figs.map((x) => fmt(x[k])), Number.isFinite(a) && Number.isFinite(z) && a !== 0 ? (z / a).toFixed(2) : '–'];
});
files.forEach((f, i) => console.log(`[${i + 1}] ${path.basename(f)}  ${runs[i].started_at}${runs[i].quick ? ' (quick)' : ''}  load ${(runs[i].host?.load_before || []).join(' ')}`));
console.log(table(['figure', ...files.map((_, i) => `[${i + 1}]`), 'last/first'], rows));
