#!/usr/bin/env node
// Porthole benchmarks: one entry point.
//
//   node tests/bench/run.mjs [--quick] [--only live|computer] [--out FILE] [--keep-raw]
//
// Prints a plain-text table and writes the figures as JSON to tests/bench/results/<date>.json
// (gitignored), so runs can be compared (tests/bench/compare.mjs A.json B.json).
// Needs the agent binary (cargo build -p porthole-agent) and packaging/install-bench-deps.sh.
// Nothing here asserts a timing; the machine is shared, so read medians and ratios.

import { mkdirSync, writeFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { requireAgentBin, agentBin, tmpDir } from '../e2e/harness.mjs';
import { startBenchServer, launchViewerBrowser, loadAverage, ratio } from './lib.mjs';
import {
  startScene, measureStack, portholeStack, novncStack, selkiesStack, bareX264, agentEncode,
} from './live.mjs';
import { benchComputer, REFERENCE_WAIT_MS } from './computer.mjs';
import { formatReport } from './report.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const a = { quick: false, only: null, out: null, keepRaw: false };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    if (x === '--quick') a.quick = true;
    else if (x === '--keep-raw') a.keepRaw = true;
    else if (x === '--only') a.only = argv[++i];
    else if (x.startsWith('--only=')) a.only = x.slice(7);
    else if (x === '--out') a.out = argv[++i];
    else if (x === '-h' || x === '--help') {
      console.log('usage: node tests/bench/run.mjs [--quick] [--only live|computer] [--out FILE] [--keep-raw]');
      process.exit(0);
    } else {
      console.error(`unknown argument: ${x}`);
      process.exit(2);
    }
  }
  if (a.only && !['live', 'computer'].includes(a.only)) {
    console.error(`--only must be live or computer, not ${a.only}`);
    process.exit(2);
  }
  return a;
}

const args = parseArgs(process.argv.slice(2));
const opts = args.quick
  ? { samples: 20, discard: 5, windowS: 4, x264S: 4, actions: 20, shots: 10, keepRaw: args.keepRaw }
  : { samples: 65, discard: 5, windowS: 10, x264S: 10, actions: 100, shots: 50, keepRaw: args.keepRaw };

const progress = (m) => process.stderr.write(`${m}\n`);

async function main() {
  requireAgentBin();
  const started = new Date();
  const work = tmpDir('porthole-bench-');
  const results = {
    schema: 1,
    started_at: started.toISOString(),
    quick: args.quick,
    only: args.only,
    opts,
    agent_bin: agentBin(),
    host: { hostname: os.hostname(), cpus: os.cpus().length, cpu_model: os.cpus()[0]?.model, load_before: loadAverage() },
    not_measured: [],
  };
  const bench = await startBenchServer();
  let browser;
  try {
    if (args.only !== 'computer') {
      browser = await launchViewerBrowser();
      results.live = await benchLive(bench, browser, work, results);
      await browser.close().catch(() => {});
      browser = null;
    }
    if (args.only !== 'live') {
      progress('== computer use');
      results.computer = await benchComputer(bench, work, opts, progress);
      if (!results.computer.ok) results.not_measured.push(`computer use: ${results.computer.error}`);
      else if (results.computer.reference_screenshot?.note) results.not_measured.push(`reference screenshot: ${results.computer.reference_screenshot.note}`);
    }
  } finally {
    if (browser) await browser.close().catch(() => {});
    await bench.close();
    results.host.load_after = loadAverage();
    results.finished_at = new Date().toISOString();
    results.seconds = Math.round((Date.now() - started.getTime()) / 1000);
    if (!process.env.PORTHOLE_BENCH_KEEP) rmSync(work, { recursive: true, force: true });
    else results.work_dir = work;
  }
  derive(results);
  const outDir = path.join(HERE, 'results');
  mkdirSync(outDir, { recursive: true });
  const stamp = started.toISOString().replace(/:/g, '-').replace(/\.\d+Z$/, 'Z');
  const out = args.out || path.join(outDir, `${stamp}${args.quick ? '-quick' : ''}.json`);
  writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`);
  console.log(formatReport(results));
  console.log(`\nJSON: ${path.relative(process.cwd(), out) || out}`);
}

async function benchLive(bench, browser, work, results) {
  const live = { stacks: [], encode: [] };
  progress('== live pipe and peers at 1280x800');
  const scene = await startScene(1280, 800, bench, work, progress);
  try {
    for (const stack of [portholeStack(), novncStack(work), selkiesStack(work)]) {
      const r = await measureStack(stack, scene, browser, bench, opts, progress);
      live.stacks.push(r);
      if (!r.ok) results.not_measured.push(`${r.label}: ${r.error}`);
    }
    progress('== encode cost: bare x264 at 1280x800');
    const p = live.stacks.find((s) => s.name === 'porthole');
    const x264 = await bareX264(scene, opts.x264S, work).catch((e) => ({ error: e.message }));
    live.encode.push({ size: '1280x800', agent: p && p.ok ? { ...p.busy.agent, process_cpu_percent: p.busy.cpuPercent, page_fps: p.busy.page_fps } : { error: 'the Porthole live run failed' }, x264 });
  } finally {
    await scene.stop();
  }
  progress('== encode cost at 1920x1080');
  let big;
  try {
    big = await startScene(1920, 1080, bench, work, progress);
    const busy = await agentEncode(big, browser, opts, progress).catch((e) => ({ error: e.message }));
    const x264 = await bareX264(big, opts.x264S, work).catch((e) => ({ error: e.message }));
    live.encode.push({ size: '1920x1080', agent: busy.error ? { error: busy.error } : { ...busy.agent, process_cpu_percent: busy.cpuPercent, shown_fps: busy.shown_fps, kbit_s: busy.kbit_s, page_fps: busy.page_fps }, x264 });
  } catch (e) {
    live.encode.push({ size: '1920x1080', error: e.message });
  } finally {
    if (big) await big.stop();
  }
  for (const e of live.encode) {
    if (e.error) results.not_measured.push(`encode ${e.size}: ${e.error}`);
    if (e.x264?.error) results.not_measured.push(`bare x264 ${e.size}: ${e.x264.error}`);
    if (e.agent?.error) results.not_measured.push(`agent encode ${e.size}: ${e.agent.error}`);
  }
  return live;
}

/** Ratios Porthole / peer, computed once here so the JSON carries them too. */
function derive(r) {
  if (r.live) {
    const by = Object.fromEntries(r.live.stacks.map((s) => [s.name, s]));
    const p = by.porthole;
    r.live.ratios = {};
    for (const peer of ['novnc', 'selkies']) {
      const q = by[peer];
      if (!p?.ok || !q?.ok) continue;
      r.live.ratios[peer] = {
        latency_p50: ratio(p.latency.x.p50, q.latency.x.p50),
        latency_p95: ratio(p.latency.x.p95, q.latency.x.p95),
        cpu_busy: ratio(p.cpu.busy.cpuPercent, q.cpu.busy.cpuPercent),
        cpu_still: ratio(p.cpu.still.cpuPercent, q.cpu.still.cpuPercent),
        cpu_no_viewer: ratio(p.cpu.noViewer.cpuPercent, q.cpu.noViewer.cpuPercent),
      };
    }
    for (const e of r.live.encode) {
      if (e.agent && e.x264 && !e.agent.error && !e.x264.error) {
        e.ratio_pipeline_vs_x264 = ratio(e.agent.encode_ms_p50, e.x264.cpu_ms_per_frame);
        e.ratio_threads_vs_x264 = ratio(e.agent.pipeline_threads_cpu_ms_per_frame, e.x264.cpu_ms_per_frame);
        e.ratio_process_vs_x264 = ratio(e.agent.process_cpu_ms_per_frame, e.x264.cpu_ms_per_frame);
      }
    }
  }
  if (r.computer?.ok) {
    const c = r.computer;
    c.ratios = {
      click_p50: ratio(c.porthole_click.p50, c.reference_click.p50),
      screenshot_action_vs_grab_p50: ratio(c.porthole_screenshot_action.p50, c.reference_screenshot.p50),
      screenshot_action_vs_grab_plus_wait_p50: ratio(c.porthole_screenshot_action.p50, c.reference_screenshot.p50 + REFERENCE_WAIT_MS),
    };
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
