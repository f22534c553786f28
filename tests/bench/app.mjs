#!/usr/bin/env node
// The desktop app's live view, measured in the real app (porthole-app under tauri-driver +
// WebKitWebDriver on Xvfb, tests/e2e/appdriver.mjs):
//
//   node tests/bench/app.mjs [--quick] [--out FILE]
//
// 1. idle: the app on the Machines page, no live view open: CPU and RSS/PSS of the app process
//    and every process under it (WebKitWebProcess, WebKitNetworkProcess, ...), from /proc;
// 2. one live view (#/live/NAME) of a machine whose screen is busy;
// 3. the Live grid (#/live) with four busy machines, every tile measured; then the same with
//    one tile focused (clicked);
// 4. idle again, after the live views closed.
//
// For every frame drawn on a live canvas: the guest's capture time (session start in Unix ms
// from GET /v1/sessions/current + the frame's session t_ms from its 16-byte header) and the time
// the app's decoder had drawn it (performance.timeOrigin + performance.now()); the app and the
// sandboxes run on this host, so both are the same clock. Nothing is asserted: it prints medians
// and p95s and writes JSON to tests/bench/results/app/<start time>.json (gitignored).
//
// Machines are local sandboxes (--network loopback) created with the CLI in a temporary
// PORTHOLE_HOME that the app shares; their screens are made busy with an xterm in the guest
// (started through the agent's POST /v1/exec) that lists /usr/bin over and over, the e2e
// harness's startBusyScreen. Everything started here is stopped at the end (machines
// destroyed). Needs the binaries (never built here): PORTHOLE_APP_BIN, PORTHOLE_CLI_BIN,
// PORTHOLE_AGENT_BIN (default ${CARGO_TARGET_DIR:-/work/target}/debug/...).

import { execFile } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { agentBin, killGroup, sleep, spawnGroup, startXvfb, tail, tmpDir, waitFor } from '../e2e/harness.mjs';
import { appPrereqs, procsMentioning, startApp } from '../e2e/appdriver.mjs';
import { loadAverage, round, summary } from './lib.mjs';
import { table } from './report.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const TARGET = process.env.CARGO_TARGET_DIR || '/work/target';
const APP = process.env.PORTHOLE_APP_BIN || path.join(TARGET, 'debug', 'porthole-app');
const CLI = process.env.PORTHOLE_CLI_BIN || path.join(TARGET, 'debug', 'porthole');
const AGENT = agentBin();
const MACHINES = ['b1', 'b2', 'b3', 'b4'];

function parseArgs(argv) {
  const a = { quick: false, out: null };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--quick') a.quick = true;
    else if (argv[i] === '--out') a.out = argv[++i];
    else {
      console.error('usage: node tests/bench/app.mjs [--quick] [--out FILE]');
      process.exit(argv[i] === '-h' || argv[i] === '--help' ? 0 : 2);
    }
  }
  return a;
}

const args = parseArgs(process.argv.slice(2));
// warmS: after the view shows frames, before the window starts (stream and decoder settle).
const opts = args.quick ? { windowS: 8, warmS: 3, idleS: 5, settleS: 5 } : { windowS: 20, warmS: 5, idleS: 10, settleS: 10 };
const progress = (m) => process.stderr.write(`${m}\n`);

// ---------------------------------------------------------------------------------------------
// The app's processes, from /proc

const CLK_TCK = 100; // USER_HZ; lib.mjs asks getconf, which says 100 on Linux

function procStat(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' '); // f[0] is field 3 (state)
    return { comm: s.slice(s.indexOf('(') + 1, s.lastIndexOf(')')), ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) };
  } catch {
    return null;
  }
}

/** The porthole-app process started for this run (its environment holds our PORTHOLE_HOME). */
function appPid(home) {
  return procsMentioning(home).find((p) => procStat(p)?.comm === 'porthole-app') ?? null;
}

/** `root` and all its descendants: [{ pid, comm }]. WebKit's processes are children of the app. */
function processTree(root) {
  const kids = new Map();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const st = procStat(d);
    if (!st) continue;
    if (!kids.has(st.ppid)) kids.set(st.ppid, []);
    kids.get(st.ppid).push(Number(d));
  }
  const out = [];
  const walk = (pid) => {
    const st = procStat(pid);
    if (!st) return;
    out.push({ pid, comm: st.comm });
    for (const k of kids.get(pid) || []) walk(k);
  };
  walk(root);
  return out;
}

function cpuTicks(pids) {
  const m = new Map();
  for (const p of pids) {
    const st = procStat(p.pid);
    if (st) m.set(p.pid, st.ticks);
  }
  return m;
}

/** kB values of /proc/PID/smaps_rollup (Rss, Pss, ...); null when the process is gone. */
function smapsRollup(pid) {
  try {
    const out = {};
    for (const m of readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8').matchAll(/^(\w+):\s+(\d+) kB/gm)) out[m[1]] = Number(m[2]);
    return out;
  } catch {
    return null;
  }
}

/** Busy ticks of the whole host (all cores) so far, from the first line of /proc/stat. */
function hostBusyTicks() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1, 9).map(Number);
  return f.reduce((a, b) => a + b, 0) - f[3] - f[4]; // minus idle and iowait
}

/**
 * UDP datagrams the host dropped because a socket's receive buffer was full (RcvbufErrors in
 * /proc/net/snmp; loopback sandboxes and the app share this network namespace). WebRTC media
 * runs over UDP: a keyframe is a burst of a few hundred packets.
 */
function udpRcvbufErrors() {
  const lines = readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'));
  const [names, values] = lines.map((l) => l.trim().split(/\s+/));
  return Number(values[names.indexOf('RcvbufErrors')]);
}

/** Drops per UDP socket inode so far (the last column of /proc/net/udp and udp6). */
function udpSocketDrops() {
  const m = new Map();
  for (const f of ['/proc/net/udp', '/proc/net/udp6']) {
    let lines = [];
    try { lines = readFileSync(f, 'utf8').trim().split('\n').slice(1); } catch { continue; }
    for (const l of lines) {
      const c = l.trim().split(/\s+/);
      m.set(c[9], Number(c.at(-1))); // c[9]: inode
    }
  }
  return m;
}

/** Inodes of the sockets the given processes hold open. */
function socketInodes(procs) {
  const out = new Set();
  for (const { pid } of procs) {
    let fds = [];
    try { fds = readdirSync(`/proc/${pid}/fd`); } catch { continue; }
    for (const fd of fds) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) out.add(m[1]);
      } catch { /* closed */ }
    }
  }
  return out;
}

/** Datagrams dropped between two udpSocketDrops() readings on the sockets of `procs`. */
function dropsOf(procs, before, after) {
  let n = 0;
  for (const ino of socketInodes(procs)) if (after.has(ino)) n += after.get(ino) - (before.get(ino) ?? 0);
  return n;
}

const treeTicks = (roots) => [...cpuTicks(roots.flatMap(processTree)).values()].reduce((a, b) => a + b, 0);

/**
 * CPU of the app's process tree over `seconds` (% of one core, user + system, all threads; the
 * tree is re-read at the end so a process started meanwhile counts from its start), then its
 * memory: RSS and PSS per process and summed. PSS splits shared pages among the processes that
 * map them, so its sum is the tree's real footprint; the RSS sum counts shared libraries once
 * per process. For context, the same CPU figure for the machines' sandboxes (`guestRoots`: their
 * agents, X servers, busy xterms), for the app's X server (`displayRoots`: the Xvfb it draws its
 * window on) and for the whole host (100% per core): what the host's figure has beyond those is
 * WebDriver, this script and other work on this shared machine.
 */
async function measureApp(root, seconds, guestRoots = [], displayRoots = []) {
  const before = cpuTicks(processTree(root));
  const guests0 = treeTicks(guestRoots);
  const display0 = treeTicks(displayRoots);
  const udp0 = udpRcvbufErrors();
  const drops0 = udpSocketDrops();
  const host0 = hostBusyTicks();
  const t0 = performance.now();
  await sleep(seconds * 1000);
  const wall = (performance.now() - t0) / 1000;
  const host1 = hostBusyTicks();
  const guests1 = treeTicks(guestRoots);
  const display1 = treeTicks(displayRoots);
  const udp1 = udpRcvbufErrors();
  const drops1 = udpSocketDrops();
  const tree = processTree(root);
  const after = cpuTicks(tree);
  const byComm = {};
  let ticks = 0, rss = 0, pss = 0;
  for (const p of tree) {
    const dt = (after.get(p.pid) ?? 0) - (before.get(p.pid) ?? 0);
    const mem = smapsRollup(p.pid) || {};
    const c = (byComm[p.comm] ||= { n: 0, cpu_percent: 0, rss_mb: 0, pss_mb: 0 });
    c.n++;
    c.cpu_percent += (100 * dt) / CLK_TCK / wall;
    c.rss_mb += (mem.Rss || 0) / 1024;
    c.pss_mb += (mem.Pss || 0) / 1024;
    ticks += dt;
    rss += mem.Rss || 0;
    pss += mem.Pss || 0;
  }
  for (const c of Object.values(byComm)) {
    c.cpu_percent = round(c.cpu_percent);
    c.rss_mb = round(c.rss_mb);
    c.pss_mb = round(c.pss_mb);
  }
  return {
    seconds: round(wall, 2),
    cpu_percent: round((100 * ticks) / CLK_TCK / wall),
    rss_mb: round(rss / 1024),
    pss_mb: round(pss / 1024),
    processes: byComm,
    guests_cpu_percent: round((100 * (guests1 - guests0)) / CLK_TCK / wall),
    display_cpu_percent: round((100 * (display1 - display0)) / CLK_TCK / wall),
    host_cpu_percent: round((100 * (host1 - host0)) / CLK_TCK / wall),
    udp_rcvbuf_errors: udp1 - udp0,
    // Drops counted by the sockets themselves (the kernel's sk_drops: receive buffer full and
    // the like), on the app's sockets (its WebRTC peers) and on the sandboxes' (the agents').
    // A socket closed during the window is not counted.
    udp_drops_app: dropsOf(tree, drops0, drops1),
    udp_drops_guests: dropsOf(guestRoots.flatMap(processTree), drops0, drops1),
  };
}

// ---------------------------------------------------------------------------------------------
// In the page: the decoder's own per-frame times (ui/src/video/decoder.ts `FrameTiming`), kept
// while `window.__portholeTiming` is an array: for every frame drawn, its machine, session t_ms,
// when the app's Rust side had it (Unix ms, low 32 bits, from the frame header), when the page
// got it (WebSocket message), called decode(), got the decoder's output, had it drawn (WebGL
// draw or drawImage returned) and the next animation frame after that (≈ painted). All Unix ms
// (performance.timeOrigin + now()). The hook also counts decoders created and their errors.
function installHook() {
  if (window.__portholeBench) return 'already installed';
  const B = { on: false, t0: 0, t1: 0, created: 0, errors: [] };
  window.__portholeBench = B;
  window.__portholeTiming = [];
  const Dec = window.VideoDecoder;
  window.VideoDecoder = class extends Dec {
    constructor(init) {
      if (B.on) B.created++;
      super({ ...init, error: (e) => { if (B.on) B.errors.push(String((e && e.message) || e)); init.error(e); } });
    }
  };
  return 'installed';
}

/** Frames drawn so far per machine. */
function seenFrames() {
  const seen = {};
  for (const r of window.__portholeTiming) seen[r.name] = (seen[r.name] || 0) + 1;
  return seen;
}

// ---------------------------------------------------------------------------------------------
// CLI, agents, guests

function run(cmd, argv, { env = {}, timeout = 180000 } = {}) {
  return new Promise((resolve) => {
    execFile(cmd, argv, { env: { ...process.env, ...env }, timeout, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

async function agentCall(m, method, p, body) {
  const r = await fetch(m.url + p, {
    method,
    headers: { authorization: `Bearer ${m.token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(60000),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${m.name}: ${method} ${p}: HTTP ${r.status} ${text}`);
  return JSON.parse(text);
}

async function guest(m, command) {
  const r = await agentCall(m, 'POST', '/v1/exec', { command, timeout_ms: 20000 });
  if (r.exit_code !== 0) throw new Error(`${m.name}: ${command}: exit ${r.exit_code}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

const shq = (s) => `'${s.replace(/'/g, "'\\''")}'`;

/**
 * The harness's busy screen, in the guest: a 160x50 xterm at the top left listing /usr/bin
 * over and over. Returns its pid in the guest; setsid made it a process group leader there.
 */
async function startBusy(m) {
  const cmd = "exec xterm -geometry 160x50+0+0 -bg '#101820' -fg '#d0e0d0' -e sh -c 'while :; do ls -l --color=always /usr/bin; date; sleep 0.05; done'";
  m.busyPid = Number((await guest(m, `setsid sh -c ${shq(cmd)} >/dev/null 2>&1 </dev/null & echo $!`)).trim());
}

async function stopBusy(m) {
  if (!m.busyPid) return;
  // dash's kill takes no `--`; xterm's shell gets SIGHUP when xterm goes.
  await guest(m, `kill -TERM -${m.busyPid}`).catch((e) => progress(`stopping the busy screen of ${m.name}: ${e.message}`));
  m.busyPid = null;
}

/**
 * The session's start in Unix ms (the agent's SystemTime when its session clock started), and
 * a check of it: the host's time at the middle of the request minus the session's t_ms then.
 * Their difference bounds the error of the latency figures (plus 1 ms of t_ms rounding).
 */
async function sessionClock(m) {
  const a = Date.now();
  const s = await agentCall(m, 'GET', '/v1/sessions/current');
  const b = Date.now();
  return { session: s.id, started_at_unix_ms: s.started_at_unix_ms, check_ms: round((a + b) / 2 - s.t_ms - s.started_at_unix_ms), rtt_ms: b - a };
}

// ---------------------------------------------------------------------------------------------
// A measuring window in the page

async function frameWindow(wd, root, seconds, ctx) {
  await wd.exec(() => {
    const B = window.__portholeBench;
    window.__portholeTiming.length = 0;
    B.created = 0;
    B.errors = [];
    B.t0 = performance.timeOrigin + performance.now();
    B.on = true;
  });
  const app = await measureApp(root, seconds, ctx.guestRoots, ctx.displayRoots);
  const data = await wd.exec(() => {
    const B = window.__portholeBench;
    B.on = false;
    B.t1 = performance.timeOrigin + performance.now();
    // Page wall clock vs the clock the times are given in (should be ~0).
    const skew = Date.now() - (performance.timeOrigin + performance.now());
    const draws = window.__portholeTiming.filter((r) => r.drawnMs >= B.t0 && r.drawnMs <= B.t1);
    return { t0: B.t0, t1: B.t1, draws, created: B.created, errors: B.errors, skew };
  });
  return { app, data };
}

/**
 * Per machine (every one in `names`, drawn or not): fps, frame intervals, capture → drawn
 * latency and where it goes, from one window's records.
 */
function analyse(data, clocks, names) {
  const windowS = (data.t1 - data.t0) / 1000;
  const per = {};
  for (const n of names) per[n] = [];
  for (const r of data.draws) (per[r.name] ||= []).push(r);
  const out = {};
  for (const [name, draws] of Object.entries(per).sort(([a], [b]) => a.localeCompare(b))) {
    const c = clocks[name];
    // t_ms is 0 until the app has the agent's first `clock` message.
    const timed = c ? draws.filter((r) => r.tMs > 0) : [];
    const capture = (r) => c.started_at_unix_ms + r.tMs;
    // The header has the low 32 bits of the receive time: put back the high ones from capture.
    const rx = (r) => {
      const cap = capture(r);
      const d = ((r.rxMs - (cap % 2 ** 32)) % 2 ** 32 + 2 ** 32) % 2 ** 32;
      return cap + (d > 2 ** 31 ? d - 2 ** 32 : d);
    };
    const withRx = timed.filter((r) => r.rxMs > 0);
    const intervals = [];
    for (let i = 1; i < draws.length; i++) intervals.push(draws[i].drawnMs - draws[i - 1].drawnMs);
    out[name] = {
      window_s: round(windowS, 2),
      drawn: draws.length,
      drawn_fps: round(draws.length / windowS),
      renderer: draws[0]?.renderer ?? null,
      interval_ms: summary(intervals),
      untimed: draws.length - timed.length,
      latency_ms: summary(timed.map((r) => r.drawnMs - capture(r))),
      to_paint_ms: summary(timed.filter((r) => r.paintedMs > 0).map((r) => r.paintedMs - capture(r))),
      // The split: guest capture → app Rust had the frame (encode, RTP, depacketize) → page
      // message → decode() → decoder output → drawn → next animation frame.
      split_ms: {
        capture_to_app: summary(withRx.map((r) => rx(r) - capture(r))),
        app_to_page: summary(withRx.map((r) => r.pageMs - rx(r))),
        page_to_decode: summary(draws.map((r) => r.decodeMs - r.pageMs)),
        decode: summary(draws.map((r) => r.outputMs - r.decodeMs)),
        draw: summary(draws.map((r) => r.drawnMs - r.outputMs)),
        to_paint: summary(draws.filter((r) => r.paintedMs > 0).map((r) => r.paintedMs - r.drawnMs)),
      },
    };
  }
  const errors = {};
  for (const e of data.errors) errors[e] = (errors[e] || 0) + 1;
  return { machines: out, decoders_created: data.created, decoder_errors: errors };
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const missing = appPrereqs([APP, CLI, AGENT]);
  if (missing.length) throw new Error(`cannot run the app bench; missing:\n  ${missing.join('\n  ')}`);
  const started = new Date();
  const home = tmpDir('porthole-bench-app-');
  const driverLog = path.join(home, 'driver.log');
  const env = { PORTHOLE_HOME: home, PORTHOLE_AGENT_BIN: AGENT };
  const results = {
    kind: 'app',
    schema: 1,
    started_at: started.toISOString(),
    quick: args.quick,
    opts,
    bins: { app: APP, cli: CLI, agent: AGENT },
    host: { hostname: os.hostname(), cpus: os.cpus().length, cpu_model: os.cpus()[0]?.model, load_before: loadAverage() },
    notes: [],
  };
  const machines = {};
  let app = null;
  const cli = async (argv) => {
    const r = await run(CLI, argv, { env });
    if (r.code !== 0) throw new Error(`porthole ${argv.join(' ')} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
    return argv.includes('--json') ? JSON.parse(r.stdout) : r.stdout;
  };

  try {
    // Machines first (one at a time: creating one is CPU-heavy), then the app on the same home.
    for (const name of MACHINES) {
      const t0 = performance.now();
      const m = await cli(['machine', 'create', '--name', name, '--network', 'loopback', '--json']);
      machines[name] = { name, url: m.agent_url, token: (await cli(['machine', 'token', name])).trim(), pid: m.pid };
      progress(`machine ${name}: ${m.agent_url} (created in ${Math.round(performance.now() - t0)} ms)`);
    }
    // Each sandbox is a process tree under the machine's pid (bwrap).
    const guestRoots = Object.values(machines).map((m) => m.pid).filter(Number.isInteger);
    if (guestRoots.length !== MACHINES.length) results.notes.push('some machines have no pid: guest CPU is incomplete');
    const health = await agentCall(machines.b1, 'GET', '/v1/health');
    results.agent_version = health.version;

    progress('starting the app (tauri-driver + WebKitWebDriver on Xvfb)');
    app = await startApp({ app: APP, env: { ...process.env, ...env }, log: driverLog, xvfbLog: path.join(home, 'xvfb.log') });
    const { wd } = app;
    await waitFor(() => wd.exec((names) => {
      const h1 = document.querySelector('h1')?.textContent.trim();
      return h1 === 'Machines' && names.every((n) => document.querySelector(`[data-testid="machine-${n}"]`));
    }, MACHINES), { timeout: 60000, interval: 500, message: 'the Machines page listing the four machines' });
    const root = await waitFor(() => appPid(home), { timeout: 10000, message: 'the porthole-app process' });
    const size = await wd.exec(() => ({ w: innerWidth, h: innerHeight, dpr: devicePixelRatio }));
    results.app = { pid: root, viewport: size, processes: processTree(root).map((p) => p.comm) };
    progress(`app pid ${root}, viewport ${size.w}x${size.h}; processes: ${results.app.processes.join(', ')}`);
    const hook = await wd.exec(installHook);
    if (hook !== 'installed') throw new Error(`the page hook: ${hook}`);

    // 1. Idle.
    progress(`idle: ${opts.settleS} s to settle, then ${opts.idleS} s measured`);
    await sleep(opts.settleS * 1000);
    results.idle = await measureApp(root, opts.idleS, guestRoots, [app.xvfb.child.pid]);
    progress(`  idle: ${results.idle.cpu_percent}% CPU, PSS ${results.idle.pss_mb} MB, RSS ${results.idle.rss_mb} MB`);

    const clocks = {};
    for (const m of Object.values(machines)) clocks[m.name] = await sessionClock(m);
    results.clocks = clocks;

    const waitFrames = (names, what) => waitFor(async () => {
      const seen = await wd.exec(seenFrames);
      return names.every((n) => (seen[n] || 0) >= 10) && seen;
    }, { timeout: 60000, interval: 500, message: what });

    const ctx = { guestRoots, displayRoots: [app.xvfb.child.pid] };
    const phase = async (key, label, names) => {
      await sleep(opts.warmS * 1000);
      progress(`${label}: ${opts.windowS} s measured`);
      const { app: cpu, data } = await frameWindow(wd, root, opts.windowS, ctx);
      const a = analyse(data, clocks, names);
      results[key] = { app: cpu, page_clock_skew_ms: round(data.skew), ...a };
      for (const [n, s] of Object.entries(a.machines)) {
        progress(`  ${n}: drawn ${s.drawn_fps} fps (${s.renderer}), latency p50 ${s.latency_ms?.p50} p95 ${s.latency_ms?.p95} ms, to paint p50 ${s.to_paint_ms?.p50} ms`);
      }
      progress(`  app: ${cpu.cpu_percent}% CPU, PSS ${cpu.pss_mb} MB; decoders created ${a.decoders_created}; host ${cpu.host_cpu_percent}%, guests ${cpu.guests_cpu_percent}%; UDP receive-buffer drops ${cpu.udp_rcvbuf_errors}`);
    };

    // 2. One live view.
    await startBusy(machines.b1);
    await wd.exec((n) => { location.hash = `#/live/${n}`; }, 'b1');
    await waitFrames(['b1'], 'frames of b1 on the live canvas');
    await phase('single', 'one live view (b1)', ['b1']);

    // 2b. The same view with the guest screen still (nothing moving): what an open view costs.
    await stopBusy(machines.b1);
    await phase('still', 'one live view (b1), screen still', ['b1']);
    await startBusy(machines.b1);

    // 2c. The peer, same run, same guest: Debian's Chromium on b1's own /viewer page (browser
    // WebRTC, <video>), on an X server of its own, while the app shows the Machines page.
    await wd.exec(() => { location.hash = '#/machines'; });
    results.chromium = await measureChromium(home, machines.b1, ctx);
    await wd.exec((n) => { location.hash = `#/live/${n}`; }, 'b1');

    // 3. The grid, four busy machines.
    for (const n of ['b2', 'b3', 'b4']) await startBusy(machines[n]);
    await wd.exec(() => { location.hash = '#/live'; });
    await waitFor(() => wd.exec((names) => names.every((n) => document.querySelector(`[data-testid="tile-${n}"]`)), MACHINES),
      { timeout: 30000, message: 'four tiles in the Live grid' });
    results.grid_text = await wd.exec(() => document.querySelector('.page-head p')?.textContent || '');
    const seen0 = await wd.exec(seenFrames);
    await waitFor(async () => {
      const seen = await wd.exec(seenFrames);
      return MACHINES.every((n) => (seen[n] || 0) - (seen0[n] || 0) >= 10);
    }, { timeout: 60000, interval: 500, message: 'frames on all four tiles' });
    await phase('grid', 'grid of four, no tile focused', MACHINES);

    // The same with b1's tile focused (a click on its tile head; the tile restarts its stream).
    const seen1 = (await wd.exec(seenFrames)).b1 || 0;
    const head = await wd.exec(() => document.querySelector('[data-testid="tile-b1"] .tile-head .strong'));
    await wd.click(head);
    await waitFor(() => wd.exec(() => document.querySelector('[data-testid="tile-b1"]')?.classList.contains('focused')),
      { timeout: 10000, message: 'tile b1 focused' });
    await waitFor(async () => ((await wd.exec(seenFrames)).b1 || 0) >= seen1 + 10,
      { timeout: 60000, interval: 500, message: 'frames on the focused tile' });
    await phase('grid_focused', 'grid of four, b1 focused', MACHINES);

    // 4. Idle again, after the live views.
    for (const m of Object.values(machines)) await stopBusy(m);
    await wd.exec(() => { location.hash = '#/machines'; });
    progress(`idle after the live views: ${opts.settleS} s to settle, then ${opts.idleS} s measured`);
    await sleep(opts.settleS * 1000);
    results.idle_after = await measureApp(root, opts.idleS, guestRoots, [app.xvfb.child.pid]);
    progress(`  idle after: ${results.idle_after.cpu_percent}% CPU, PSS ${results.idle_after.pss_mb} MB`);
  } catch (e) {
    e.message += `\n--- tauri-driver / WebKitWebDriver / app log (${driverLog}) ---\n${tail(driverLog, 30)}`;
    throw e;
  } finally {
    // Stop everything this run started: the app, the machines (their sandboxes outlive the
    // app), tauri-driver and Xvfb, then anything else still carrying our PORTHOLE_HOME.
    try { await app?.wd.quit(); } catch (e) { progress(`quit: ${e.message}`); }
    for (const name of Object.keys(machines)) {
      const r = await run(CLI, ['machine', 'destroy', name], { env });
      if (r.code !== 0) progress(`destroy ${name}: ${r.stderr.trim()}`);
    }
    if (app) {
      await killGroup(app.driver);
      await app.xvfb.stop();
    }
    for (const pid of procsMentioning(home)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    results.host.load_after = loadAverage();
    results.finished_at = new Date().toISOString();
    results.seconds = Math.round((Date.now() - started.getTime()) / 1000);
    if (process.env.PORTHOLE_BENCH_KEEP) results.work_dir = home;
    else rmSync(home, { recursive: true, force: true });
  }

  const outDir = path.join(HERE, 'results', 'app');
  mkdirSync(outDir, { recursive: true });
  const stamp = started.toISOString().replace(/:/g, '-').replace(/\.\d+Z$/, 'Z');
  const out = args.out || path.join(outDir, `${stamp}${args.quick ? '-quick' : ''}.json`);
  writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`);
  console.log(formatApp(results));
  console.log(`\nJSON: ${path.relative(process.cwd(), out) || out}`);
}

/** Chromium on `m`'s /viewer: its process tree's CPU with the guest busy, then still. */
async function measureChromium(home, m, ctx) {
  const dir = path.join(home, 'chromium');
  mkdirSync(dir, { recursive: true });
  const xvfb = await startXvfb({ width: 1440, height: 900, log: path.join(dir, 'xvfb.log') });
  const chrome = spawnGroup('chromium', ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required', '--kiosk',
    `--user-data-dir=${path.join(dir, 'profile')}`, `${m.url}/viewer#token=${encodeURIComponent(m.token)}`],
  { env: { DISPLAY: xvfb.display }, log: path.join(dir, 'chrome.log') });
  try {
    await sleep((opts.warmS + 5) * 1000); // start, WHEP, first keyframe
    progress(`chromium on b1's /viewer, busy: ${opts.windowS} s measured`);
    const busy = await measureApp(chrome.pid, opts.windowS, ctx.guestRoots, [xvfb.child.pid]);
    await stopBusy(m);
    await sleep(opts.warmS * 1000);
    progress(`chromium on b1's /viewer, still: ${opts.windowS} s measured`);
    const still = await measureApp(chrome.pid, opts.windowS, ctx.guestRoots, [xvfb.child.pid]);
    await startBusy(m);
    progress(`  chromium: busy ${busy.cpu_percent}% CPU, still ${still.cpu_percent}% CPU`);
    return { busy, still };
  } finally {
    await killGroup(chrome);
    await xvfb.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// The table

const f = (x, d = 1) => (x === null || x === undefined || !Number.isFinite(Number(x)) ? '–' : Number(x).toFixed(d));

function formatApp(r) {
  const out = [];
  const load = (l) => (l ? l.map((x) => x.toFixed(2)).join(' ') : '?');
  out.push(`Porthole app benchmark  ${r.started_at}${r.quick ? '  (--quick)' : ''}`);
  out.push(`host: ${r.host.cpus} cores (${r.host.cpu_model || '?'}), load ${load(r.host.load_before)} -> ${load(r.host.load_after)}; took ${r.seconds} s`);
  out.push('Shared machine: read medians, not absolute numbers.');
  const dbg = Object.values(r.bins).some((b) => /\/debug\//.test(b));
  out.push(`binaries: ${r.bins.app}${dbg ? ' (DEBUG builds: unoptimised Rust in the app and the agents; CPU and latency are pessimistic)' : ''}`);
  if (r.app) out.push(`app viewport ${r.app.viewport.w}x${r.app.viewport.h}; agent ${r.agent_version ?? '?'}; machines 1280x800 local sandboxes, screens busy (xterm listing /usr/bin)`);

  const rows = [];
  const PHASES = [['single', 'one live view'], ['still', 'one view, still'], ['grid', 'grid of 4'], ['grid_focused', 'grid of 4, b1 focused']];
  const srows = [];
  for (const [key, label] of PHASES) {
    const ph = r[key];
    if (!ph) continue;
    for (const [n, s] of Object.entries(ph.machines)) {
      rows.push([label, n, s.renderer ?? '–', f(s.drawn_fps), f(s.interval_ms.p50), f(s.interval_ms.p95),
        f(s.latency_ms?.p50), f(s.latency_ms?.p95), f(s.to_paint_ms?.p50), f(s.to_paint_ms?.p95), String(s.drawn)]);
      const sp = s.split_ms || {};
      srows.push([label, n, ...['capture_to_app', 'app_to_page', 'page_to_decode', 'decode', 'draw', 'to_paint'].map((k) => f(sp[k]?.p50))]);
    }
  }
  out.push('');
  out.push('1. Live view: frames drawn on the canvas and guest capture -> drawn / painted latency (ms)');
  out.push(table(['view', 'machine', 'renderer', 'drawn fps', 'interval p50', 'p95', 'drawn p50', 'p95', 'painted p50', 'p95', 'n'], rows));
  out.push('   drawn: the WebGL draw (or drawImage) returned - capture (session start + frame t_ms); painted: the next animation');
  out.push('   frame after it; same host clock. The split (p50 ms): capture -> app (agent encode, RTP, NACK wait, depacketize),');
  out.push('   app -> page (loopback WebSocket), page -> decode() (JS), decode (WebCodecs), draw (copyTo + upload + draw), to paint.');
  out.push(table(['view', 'machine', 'capture->app', 'app->page', 'page->decode', 'decode', 'draw', 'to paint'], srows));
  for (const [key, label] of PHASES) {
    if (r[key]) out.push(`   ${label}: ${r[key].decoders_created} decoder(s) created in the window; UDP datagrams dropped: ${r[key].app.udp_drops_app} on the app's sockets, ${r[key].app.udp_drops_guests} on the agents' (host RcvbufErrors ${r[key].app.udp_rcvbuf_errors})`);
    const errs = Object.entries(r[key]?.decoder_errors || {});
    for (const [msg, n] of errs.slice(0, 4)) out.push(`     decoder error${n > 1 ? ` x${n}` : ''}: ${msg}`);
    if (errs.length > 4) out.push(`     ... and ${errs.slice(4).reduce((x, [, n]) => x + n, 0)} more decoder errors (all in the JSON)`);
  }
  const checks = Object.entries(r.clocks || {}).map(([n, c]) => `${n} ${f(c.check_ms, 0)}`).join(', ');
  if (checks) out.push(`   session clock check (host time - t_ms - started_at, ms; error bound of the latency): ${checks}`);

  const mrows = [];
  for (const [key, label] of [['idle', 'idle (Machines page)'], ['single', 'one live view'], ['still', 'one view, screen still'], ['grid', 'grid of 4'], ['grid_focused', 'grid of 4, focused'], ['idle_after', 'idle after live views']]) {
    const a = key.startsWith('idle') ? r[key] : r[key]?.app;
    if (!a) continue;
    mrows.push([label, f(a.cpu_percent), f(a.pss_mb), f(a.rss_mb), f(a.guests_cpu_percent), f(a.display_cpu_percent), f(a.host_cpu_percent), Object.entries(a.processes).map(([c, p]) => `${c}${p.n > 1 ? `x${p.n}` : ''} ${f(p.cpu_percent)}%/${f(p.pss_mb, 0)}MB`).join(', ')]);
  }
  if (r.chromium) {
    mrows.push(['Chromium /viewer, busy', f(r.chromium.busy.cpu_percent), f(r.chromium.busy.pss_mb), f(r.chromium.busy.rss_mb), f(r.chromium.busy.guests_cpu_percent), f(r.chromium.busy.display_cpu_percent), f(r.chromium.busy.host_cpu_percent), 'same guest (b1), same run']);
    mrows.push(['Chromium /viewer, still', f(r.chromium.still.cpu_percent), f(r.chromium.still.pss_mb), f(r.chromium.still.rss_mb), f(r.chromium.still.guests_cpu_percent), f(r.chromium.still.display_cpu_percent), f(r.chromium.still.host_cpu_percent), '']);
    const ratio = (a, b) => (b > 0 ? `${(a / b).toFixed(1)}x` : '–');
    if (r.single && r.still) out.push(`\n   app / Chromium CPU: busy ${ratio(r.single.app.cpu_percent, r.chromium.busy.cpu_percent)}, still ${ratio(r.still.app.cpu_percent, r.chromium.still.cpu_percent)}`);
  }
  out.push('');
  out.push('2. The app process and its children (CPU % of one core over the window; memory at its end, MB)');
  out.push(table(['state', 'CPU %', 'PSS', 'RSS sum', 'guests CPU %', 'app Xvfb CPU %', 'host CPU %', 'by process (CPU / PSS)'], mrows));
  out.push(`   guests: the four sandboxes (agents recording, X, xterms); app Xvfb: the X server the app's window is on;`);
  out.push(`   host: everything (${r.host.cpus * 100}% = every core busy), including WebDriver, this script and other work on the machine.`);
  if (r.grid_text) out.push(`   grid header: "${r.grid_text}"`);
  for (const n of r.notes) out.push(`   note: ${n}`);
  return out.join('\n');
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
