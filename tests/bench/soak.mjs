// Soak: one agent under everything at once for a long time, sampled every minute. Not CI; it
// asserts nothing and prints what it saw:
//
//   node tests/bench/soak.mjs [--minutes 60] [--sample-seconds 60] [--out FILE] [--without whep|sse|mcp|terminal]
//
// Load, all at the same time: a busy screen (an xterm listing /usr/bin 20 times a second),
// recording on, one Chromium viewer on `/viewer` the whole time, a terminal of the environment
// printing continuously, 100 SSE subscribers each living 1-10 s and replaced when it leaves,
// a second WHEP viewer joining and leaving every few seconds, and an MCP client (the vendor's
// SDK) moving the pointer and taking a screenshot every second.
//
// Each sample: the agent's RSS, open descriptors, threads and CPU (% of one core since the
// last sample), the long-lived viewer's decoded fps, and the `error` events since the last
// sample. At the end: growth of RSS and descriptors from the first sample after warm-up
// (the second) to the last, and fps min/median. Target: RSS and fds flat within 5%, fps
// steady, no error events.
//
// PORTHOLE_AGENT_BIN as for the other benchmarks (a release build for real figures).

import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Client } from '../e2e/node_modules/@modelcontextprotocol/sdk/dist/esm/client/index.js';
import { StreamableHTTPClientTransport } from '../e2e/node_modules/@modelcontextprotocol/sdk/dist/esm/client/streamableHttp.js';
import {
  startXvfb, startAgent, startBusyScreen, launchChromium, openViewer, viewerStats, tmpDir, sleep,
} from '../e2e/harness.mjs';
import { median, round } from './lib.mjs';

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : dflt;
};
const MINUTES = Number(opt('minutes', 60));
const SAMPLE_S = Number(opt('sample-seconds', 60));
const OUT = opt('out', null);
// Leave one load out, to find which one a figure moves with: --without whep|sse|mcp|terminal.
const WITHOUT = new Set(argv.flatMap((a, i) => (a === '--without' ? [argv[i + 1]] : [])));
const log = (...a) => console.error(`[soak ${new Date().toISOString().slice(11, 19)}]`, ...a);

const CLK_TCK = 100;
function proc(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (k) => Number((status.match(new RegExp(`^${k}:\\s+(\\d+)`, 'm')) || [])[1]);
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return {
    rssMiB: field('VmRSS') / 1024,
    threads: field('Threads'),
    fds: readdirSync(`/proc/${pid}/fd`).length,
    cpuS: (Number(f[11]) + Number(f[12])) / CLK_TCK,
  };
}

const dir = tmpDir('porthole-soak-');
const repo = path.join(dir, 'repo');
mkdirSync(path.join(repo, '.cursor'), { recursive: true });
writeFileSync(path.join(repo, '.cursor', 'environment.json'), JSON.stringify({
  name: 'soak',
  terminals: WITHOUT.has('terminal') ? [] : [{ name: 'noise', command: 'while :; do date +%T.%N; seq 1 40; sleep 0.05; done' }],
}));
const tmuxDir = path.join(dir, 'tmux');
mkdirSync(tmuxDir, { mode: 0o700 });

const stops = [];
let stopping = false;
const loops = [];

try {
  const xvfb = await startXvfb({ log: path.join(dir, 'xvfb.log') });
  stops.push(() => xvfb.stop());
  const busy = await startBusyScreen(xvfb.display, { log: path.join(dir, 'busy.log') });
  stops.push(() => busy.stop());
  const agent = await startAgent({
    display: xvfb.display, record: true, args: ['--workspace', repo], env: { TMUX_TMPDIR: tmuxDir },
  });
  stops.push(() => agent.stop());
  const pid = agent.child.pid;
  const headers = agent.auth();
  log(`agent ${agent.url} pid ${pid}, ${MINUTES} min, a sample every ${SAMPLE_S} s; logs in ${dir}`);

  const browser = await launchChromium();
  stops.push(() => browser.close());
  const viewer = await openViewer(browser, agent);

  // 100 SSE subscribers, each living 1-10 s, replaced when it leaves.
  let sseOpened = 0;
  const subscriber = async () => {
    while (!stopping) {
      const ac = new AbortController();
      const life = 1000 + Math.random() * 9000;
      const t = setTimeout(() => ac.abort(), life);
      try {
        const r = await fetch(`${agent.url}/v1/events/stream`, { headers, signal: ac.signal });
        sseOpened++;
        for await (const _ of r.body) { /* read and drop */ }
      } catch { /* aborted: leaves */ }
      clearTimeout(t);
    }
  };
  if (!WITHOUT.has('sse')) for (let i = 0; i < 100; i++) loops.push(subscriber());

  // A second WHEP viewer joining and leaving every few seconds, in a browser of its own (a
  // second page in the first one's would make the long-lived viewer a background tab).
  let whepJoins = 0;
  const churn = WITHOUT.has('whep') ? null : await launchChromium();
  if (churn) stops.push(() => churn.close());
  if (churn) loops.push((async () => {
    while (!stopping) {
      try {
        const p = await openViewer(churn, agent);
        whepJoins++;
        await sleep(2000 + Math.random() * 3000);
        await p.close();
      } catch (e) { log(`whep viewer: ${e.message.split('\n')[0]}`); }
      await sleep(1000 + Math.random() * 2000);
    }
  })());

  // An MCP client acting through the vendor's SDK.
  let mcpCalls = 0;
  let mcpErrors = 0;
  const mcp = new Client({ name: 'porthole-soak', version: '0.0.0' });
  await mcp.connect(new StreamableHTTPClientTransport(new URL(`${agent.url}/mcp`), { requestInit: { headers } }));
  stops.push(() => mcp.close());
  if (!WITHOUT.has('mcp')) loops.push((async () => {
    let i = 0;
    while (!stopping) {
      try {
        await mcp.callTool({ name: 'computer', arguments: { action: 'mouse_move', coordinate: [100 + (i % 800), 700] } });
        if (i % 5 === 0) await mcp.callTool({ name: 'screenshot', arguments: {} });
        mcpCalls++;
      } catch (e) {
        mcpErrors++;
        if (mcpErrors < 5) log(`mcp: ${e.message}`);
      }
      i++;
      await sleep(1000);
    }
  })());

  const samples = [];
  let lastSeq = (await (await fetch(`${agent.url}/v1/events?after=0&limit=1`, { headers })).json()).next;
  let prev = { p: proc(pid), frames: (await viewerStats(viewer)).framesDecoded, at: performance.now() };
  const end = Date.now() + MINUTES * 60000;
  console.log('minute  rss_MiB  fds  threads  cpu_%  viewer_fps  errors  sse_opened  whep_joins  mcp_calls');
  while (Date.now() < end) {
    await sleep(Math.min(SAMPLE_S * 1000, Math.max(1000, end - Date.now())));
    const p = proc(pid);
    const frames = (await viewerStats(viewer)).framesDecoded;
    const at = performance.now();
    const wall = (at - prev.at) / 1000;
    // Error events since the last sample (read a page at a time, as sync does).
    let errors = 0;
    for (;;) {
      const page = await (await fetch(`${agent.url}/v1/events?after=${lastSeq}&limit=5000`, { headers })).json();
      if (!page.events.length) break;
      errors += page.events.filter((e) => e.kind === 'error').length;
      lastSeq = page.next;
    }
    const s = {
      minute: round((Date.now() - (end - MINUTES * 60000)) / 60000, 1),
      rssMiB: round(p.rssMiB), fds: p.fds, threads: p.threads,
      cpuPercent: round((100 * (p.cpuS - prev.p.cpuS)) / wall),
      fps: round((frames - prev.frames) / wall), errors, sseOpened, whepJoins, mcpCalls,
    };
    samples.push(s);
    console.log([s.minute, s.rssMiB, s.fds, s.threads, s.cpuPercent, s.fps, s.errors, s.sseOpened, s.whepJoins, s.mcpCalls]
      .map((x) => String(x).padStart(7)).join('  '));
    prev = { p, frames, at };
  }

  const base = samples[Math.min(1, samples.length - 1)];
  const last = samples[samples.length - 1];
  const growth = (a, b) => round((100 * (b - a)) / a);
  const result = {
    minutes: MINUTES, sampleSeconds: SAMPLE_S, samples,
    rssGrowthPercent: growth(base.rssMiB, last.rssMiB),
    fdGrowthPercent: growth(base.fds, last.fds),
    threadsFirstLast: [base.threads, last.threads],
    fpsMin: Math.min(...samples.map((s) => s.fps)), fpsMedian: median(samples.map((s) => s.fps)),
    errorEvents: samples.reduce((n, s) => n + s.errors, 0), mcpErrors,
  };
  console.log(`\nafter warm-up (sample 2 → last): RSS ${base.rssMiB} → ${last.rssMiB} MiB (${result.rssGrowthPercent}%), ` +
    `fds ${base.fds} → ${last.fds} (${result.fdGrowthPercent}%), threads ${base.threads} → ${last.threads}; ` +
    `viewer fps min ${result.fpsMin} median ${result.fpsMedian}; error events ${result.errorEvents}; MCP errors ${mcpErrors}`);
  if (OUT) writeFileSync(OUT, `${JSON.stringify(result, null, 2)}\n`);
} finally {
  stopping = true;
  for (const s of stops.reverse()) await Promise.resolve().then(s).catch(() => {});
  await Promise.race([Promise.allSettled(loops), sleep(15000)]);
  if (!process.env.PORTHOLE_BENCH_KEEP) rmSync(dir, { recursive: true, force: true });
  process.exit(0);
}
