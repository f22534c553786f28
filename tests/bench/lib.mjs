// Shared pieces of the benchmarks: statistics, CPU accounting from /proc, the bench's own HTTP
// server (the colour page shown on the X display and the "move the X pointer" endpoint the viewer
// calls), a Chromium kiosk window ON the display, and the probe script injected into viewers.
//
// Nothing here asserts a timing: the benchmarks measure and report.

import { execFile, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import {
  spawnGroup, killGroup, freePort, sleep, waitFor, CHROMIUM, tmpDir, tail, launchChromium, requireAgentBin,
} from '../e2e/harness.mjs';
import { chromium } from '../e2e/node_modules/playwright-core/index.mjs';

export { chromium };

// ---------------------------------------------------------------------------------------------
// Statistics

/** Nearest-rank percentile of numbers (p in 0..100); NaN for an empty list. */
export function percentile(values, p) {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const rank = Math.ceil((p / 100) * v.length);
  return v[Math.min(v.length - 1, Math.max(0, rank - 1))];
}

export function median(values) { return percentile(values, 50); }

export function summary(values) {
  const v = values.filter((x) => Number.isFinite(x));
  return {
    n: v.length,
    p50: round(percentile(v, 50)),
    p95: round(percentile(v, 95)),
    min: round(v.length ? Math.min(...v) : NaN),
    max: round(v.length ? Math.max(...v) : NaN),
  };
}

export function round(x, digits = 1) {
  if (!Number.isFinite(x)) return null;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** a / b rounded, or null when either side is missing. */
export function ratio(a, b, digits = 2) {
  if (!Number.isFinite(a) || !Number.isFinite(b) || b === 0) return null;
  return round(a / b, digits);
}

// ---------------------------------------------------------------------------------------------
// CPU time from /proc

const CLK_TCK = (() => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  const n = Number(String(r.stdout || '').trim());
  return Number.isFinite(n) && n > 0 ? n : 100;
})();

function readStat(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' '); // f[0] is field 3 (state)
    return { ppid: Number(f[1]), pgrp: Number(f[2]), utime: Number(f[11]), stime: Number(f[12]) };
  } catch {
    return null;
  }
}

/**
 * CPU seconds (user + system, all threads) used so far by every live process in the given
 * process groups. Children that already exited are not counted (they are reaped by their
 * parents' waits), which is fine for long-running servers.
 */
export function groupCpuSeconds(pgids) {
  const want = new Set(pgids.filter(Boolean));
  let ticks = 0;
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = readStat(name);
    if (st && want.has(st.pgrp)) ticks += st.utime + st.stime;
  }
  return ticks / CLK_TCK;
}

/**
 * CPU seconds used so far by the threads of `pid` whose name (comm, 15 chars) starts with
 * `prefix`, e.g. the agent's `pipeline-h264` thread and the x264 slice threads it creates
 * (new threads inherit their creator's name). Also returns the names seen, for the record.
 */
export function threadCpuSeconds(pid, prefix) {
  let ticks = 0;
  const names = {};
  let tasks = [];
  try { tasks = readdirSync(`/proc/${pid}/task`); } catch { return { seconds: 0, names }; }
  for (const tid of tasks) {
    try {
      const s = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const comm = s.slice(s.indexOf('(') + 1, s.lastIndexOf(')'));
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      if (comm.startsWith(prefix)) {
        ticks += Number(f[11]) + Number(f[12]);
        names[comm] = (names[comm] || 0) + 1;
      }
    } catch { /* thread gone */ }
  }
  return { seconds: ticks / CLK_TCK, names };
}

/**
 * Measures the CPU of `pgids` over `seconds` of wall time while `during` (optional, awaited
 * concurrently) runs. Returns { cpuPercent (of one core), cpuSeconds, wallSeconds }.
 */
export async function measureCpu(pgids, seconds) {
  const c0 = groupCpuSeconds(pgids);
  const t0 = performance.now();
  await sleep(seconds * 1000);
  const c1 = groupCpuSeconds(pgids);
  const wall = (performance.now() - t0) / 1000;
  return { cpuPercent: round((100 * (c1 - c0)) / wall), cpuSeconds: round(c1 - c0, 2), wallSeconds: round(wall, 2) };
}

/** Machine-wide load average, recorded with the results because the machine is shared. */
export function loadAverage() {
  try { return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number); } catch { return null; }
}

/** Bytes the server side of established TCP connections on `port` has had acknowledged. */
export function tcpBytesSent(port) {
  const r = spawnSync('ss', ['-tinH', 'state', 'established', `( sport = :${port} )`], { encoding: 'utf8' });
  let total = 0;
  for (const m of String(r.stdout || '').matchAll(/bytes_acked:(\d+)/g)) total += Number(m[1]);
  return total;
}

// ---------------------------------------------------------------------------------------------
// Processes

export function run(cmd, args, { env = {}, timeout = 60000, encoding = 'utf8', maxBuffer = 64 << 20 } = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env: { ...process.env, ...env }, timeout, encoding, maxBuffer }, (err, stdout, stderr) => {
      if (err) {
        err.message += `\n${cmd} ${args.join(' ')}\nstderr: ${String(stderr).slice(-2000)}`;
        reject(err);
      } else resolve({ stdout, stderr });
    });
  });
}

export function which(cmd) {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

export function waitHttp(url, { timeout = 30000, child, what = url } = {}) {
  return waitFor(async () => {
    if (child && child.exitInfo) throw new Error(`${what} exited: ${JSON.stringify(child.exitInfo)}`);
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    return res.status < 500;
  }, { timeout, interval: 250, message: what });
}

/**
 * Like the harness's startAgent, but WITH recording (the agent's default; the harness always
 * passes --no-record). Returns { url, token, auth(), child, logFile, stop() }.
 */
export async function startAgentRecording(display, { args = [] } = {}) {
  const bin = requireAgentBin();
  const dir = tmpDir('porthole-bench-agent-');
  const token = randomBytes(24).toString('hex');
  const tokenFile = path.join(dir, 'token');
  writeFileSync(tokenFile, token, { mode: 0o600 });
  const port = await freePort();
  const logFile = path.join(dir, 'agent.log');
  const child = spawnGroup(bin, ['serve', '--display', display, '--listen', `127.0.0.1:${port}`,
    '--token-file', tokenFile, '--data-dir', path.join(dir, 'data'), ...args],
  { env: { DISPLAY: display, RUST_LOG: process.env.RUST_LOG || 'info' }, unset: ['PORTHOLE_TOKEN'], log: logFile });
  const agent = {
    url: `http://127.0.0.1:${port}`, token, child, logFile, dir,
    auth: () => ({ Authorization: `Bearer ${token}` }),
    async stop() { await killGroup(child); rmSync(dir, { recursive: true, force: true }); },
  };
  try {
    await waitHttp(`${agent.url}/v1/health`, { child, what: `porthole-agent (recording) /v1/health; log ${logFile}` });
  } catch (e) {
    e.message += `\n${tail(logFile, 20)}`;
    await agent.stop();
    throw e;
  }
  return agent;
}

// ---------------------------------------------------------------------------------------------
// The colour page and the bench's HTTP server

/**
 * The page shown full screen ON the X display. `still` mode: the whole body turns the next
 * colour of a high-contrast palette on every mousemove, and nothing else changes. `busy` mode:
 * every requestAnimationFrame the colour changes and the left 60% of the screen re-renders a
 * block of pseudo-random text (so the encoder sees real texture, not only flat colour). The
 * right 40% stays a flat colour in both modes: the probes sample there, away from the pointer.
 */
export const COLOUR_PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>porthole-bench colour</title>
<style>
html,body{margin:0;height:100%;overflow:hidden;cursor:default}
#txt{position:absolute;left:0;top:0;width:60%;height:100%;margin:0;overflow:hidden;
  font:14px/16px monospace;color:#f0f0f0;white-space:pre;display:none}
</style></head>
<body><pre id="txt"></pre>
<script>
const PAL = ['#ff0000','#00ff00','#0000ff','#ffff00','#ff00ff','#00ffff','#ffffff','#000000'];
let i = 0, mode = 'still', frames = 0, moves = 0, raf = 0, seed = 1;
const txt = document.getElementById('txt');
function next() { i = (i + 1) % PAL.length; document.body.style.background = PAL[i]; }
document.body.style.background = PAL[0];
addEventListener('mousemove', () => { moves++; next(); });
function rnd() { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed; }
function busyFrame() {
  frames++; next();
  let s = '';
  for (let r = 0; r < 70; r++) {
    let line = String(frames).padStart(7, '0') + ' ';
    for (let c = 0; c < 12; c++) line += (rnd() % 1000000).toString(16).padStart(6, '0') + ' ';
    s += line + '\\n';
  }
  txt.textContent = s;
  raf = requestAnimationFrame(busyFrame);
}
window.setMode = (m) => {
  mode = m;
  cancelAnimationFrame(raf);
  txt.style.display = m === 'busy' ? 'block' : 'none';
  if (m === 'busy') raf = requestAnimationFrame(busyFrame);
  return mode;
};
window.benchState = () => ({ mode, frames, moves, colour: PAL[i], w: innerWidth, h: innerHeight });
</script></body></html>`;

/**
 * Starts the bench's HTTP server on 127.0.0.1: GET /colour.html, and GET /move?display=:N&x=&y=
 * which runs `xdotool mousemove x y` on that display and answers once it has exited (CORS open,
 * so a viewer page on another origin can call it).
 */
export async function startBenchServer() {
  const port = await freePort();
  const server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://x');
    const cors = { 'Access-Control-Allow-Origin': '*', 'Cache-Control': 'no-store' };
    if (u.pathname === '/colour.html') {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', ...cors });
      res.end(COLOUR_PAGE);
      return;
    }
    if (u.pathname === '/move') {
      const display = u.searchParams.get('display');
      const x = String(Math.round(Number(u.searchParams.get('x'))));
      const y = String(Math.round(Number(u.searchParams.get('y'))));
      if (!/^:\d+$/.test(display || '')) { res.writeHead(400, cors); res.end('display'); return; }
      execFile('xdotool', ['mousemove', x, y], { env: { ...process.env, DISPLAY: display } }, (err) => {
        res.writeHead(err ? 500 : 204, cors);
        res.end(err ? String(err.message) : undefined);
      });
      return;
    }
    res.writeHead(404, cors);
    res.end();
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise((resolve) => { server.closeAllConnections?.(); server.close(() => resolve()); }),
  };
}

// ---------------------------------------------------------------------------------------------
// A Chromium kiosk window ON the X display, showing the colour page

/**
 * Starts Debian's Chromium (not headless) in kiosk mode on `display`, showing `url`, and
 * connects playwright to it over CDP so the bench can switch the page between still and busy.
 */
export async function startKiosk(display, url, { width, height, log } = {}) {
  const dir = tmpDir('porthole-bench-kiosk-');
  const cdpPort = await freePort();
  const child = spawnGroup(CHROMIUM, [
    '--no-sandbox', '--disable-gpu', '--kiosk', '--no-first-run', '--no-default-browser-check',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-features=Translate,MediaRouter', '--password-store=basic',
    '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
    '--disable-backgrounding-occluded-windows',
    `--user-data-dir=${dir}`, `--remote-debugging-port=${cdpPort}`, '--remote-debugging-address=127.0.0.1',
    '--window-position=0,0', `--window-size=${width},${height}`, url,
  ], { env: { DISPLAY: display }, log });
  let browser;
  try {
    await waitHttp(`http://127.0.0.1:${cdpPort}/json/version`, { child, what: 'kiosk Chromium DevTools endpoint' });
    browser = await chromium.connectOverCDP(`http://127.0.0.1:${cdpPort}`);
  } catch (e) {
    await killGroup(child);
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const page = await waitFor(() => browser.contexts().flatMap((c) => c.pages()).find((p) => p.url().includes('/colour.html')),
    { timeout: 20000, message: 'the colour page in the kiosk window' });
  await page.waitForFunction(() => typeof window.setMode === 'function');
  const kiosk = {
    child, page, browser, dir,
    setMode: (m) => page.evaluate((mm) => window.setMode(mm), m),
    state: () => page.evaluate(() => window.benchState()),
    async stop() {
      await browser.close().catch(() => {});
      await killGroup(child);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  // The window has to cover the screen, or the probes would watch something else.
  const st = await waitFor(async () => {
    const s = await kiosk.state();
    return s.w >= width - 2 && s.h >= height - 2 ? s : null;
  }, { timeout: 15000, message: `kiosk window ${width}x${height}` }).catch(async (e) => {
    throw new Error(`${e.message}; page says ${JSON.stringify(await kiosk.state())}`);
  });
  kiosk.size = { w: st.w, h: st.h };
  return kiosk;
}

// ---------------------------------------------------------------------------------------------
// The probe that runs inside a viewer page

/**
 * Installed into a viewer page (page.evaluate(PROBE_SOURCE)): `window.__bench`.
 *
 * watchVideo(video, sx, sy): on every decoded frame presented (requestVideoFrameCallback) the
 * frame is drawn into an 8x8 canvas from the source region around (sx, sy) in stream pixels,
 * and its mean colour recorded with performance.now().
 * watchCanvas(canvas, sx, sy): the same, polling the canvas pixels every requestAnimationFrame.
 *
 * probe(trigger): records the current colour, starts the clock (performance.now()), fires the
 * trigger (a data-channel message or a fetch of the bench's /move endpoint) and resolves with
 * the time until the first observed colour that differs clearly from the one before.
 */
export const PROBE_SOURCE = String.raw`(() => {
  if (window.__bench) return true;
  const B = { last: null, updates: 0, pending: null, kind: null, error: null };
  const dist = (a, b) => Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
  const THRESH = 90;
  const cv = document.createElement('canvas'); cv.width = 8; cv.height = 8;
  const ctx = cv.getContext('2d', { willReadFrequently: true });
  function mean(d) {
    let r = 0, g = 0, b = 0; const n = d.length / 4;
    for (let i = 0; i < d.length; i += 4) { r += d[i]; g += d[i + 1]; b += d[i + 2]; }
    return [r / n, g / n, b / n];
  }
  function observe(rgb, t, extra) {
    const changed = !B.last || dist(rgb, B.last.rgb) > THRESH;
    if (changed) B.updates++;
    B.last = { rgb, t, ...extra };
    const p = B.pending;
    if (p && dist(rgb, p.before) > THRESH) {
      B.pending = null;
      p.resolve({ ms: t - p.t0, before: p.before.map(Math.round), after: rgb.map(Math.round),
        recvMs: extra && extra.receiveTime ? extra.receiveTime - p.t0 : null });
    }
  }
  B.frames = 0;
  B.watchVideo = (video, sx, sy) => {
    B.kind = 'video';
    const step = (now, meta) => {
      try {
        B.frames++;
        const t = performance.now();
        ctx.drawImage(video, Math.max(0, sx - 4), Math.max(0, sy - 4), 8, 8, 0, 0, 8, 8);
        observe(mean(ctx.getImageData(0, 0, 8, 8).data), t, { receiveTime: meta && meta.receiveTime });
      } catch (e) { B.error = String(e); }
      video.requestVideoFrameCallback(step);
    };
    video.requestVideoFrameCallback(step);
    return true;
  };
  B.watchCanvas = (canvas, sx, sy) => {
    B.kind = 'canvas';
    const c2 = canvas.getContext('2d');
    const step = () => {
      try {
        B.frames++;
        const t = performance.now();
        observe(mean(c2.getImageData(Math.max(0, sx - 4), Math.max(0, sy - 4), 8, 8).data), t);
      } catch (e) { B.error = String(e); }
      requestAnimationFrame(step);
    };
    requestAnimationFrame(step);
    return true;
  };
  B.colour = () => B.last && B.last.rgb.map(Math.round);
  B.counters = () => ({ updates: B.updates, frames: B.frames, t: performance.now() });
  /** trigger: {kind:'dc', msg} | {kind:'fetch', url}. */
  B.probe = (trigger, timeoutMs = 3000) => new Promise((resolve) => {
    if (!B.last) { resolve({ error: 'nothing observed yet' }); return; }
    const timer = setTimeout(() => { if (B.pending) { B.pending = null; resolve({ timeout: true, before: B.last.rgb.map(Math.round) }); } }, timeoutMs);
    const before = B.last.rgb;
    let injected = null; // when the /move request came back, i.e. xdotool had run
    const t0 = performance.now();
    B.pending = { before, t0, resolve: (r) => { clearTimeout(timer); setTimeout(() => resolve({ ...r, injectMs: injected }), 0); } };
    if (trigger.kind === 'dc') {
      window.porthole.send(trigger.msg);
    } else {
      fetch(trigger.url, { mode: 'no-cors', cache: 'no-store' })
        .then(() => { injected = performance.now() - t0; })
        .catch((e) => { B.error = String(e); });
    }
  });
  window.__bench = B;
  return true;
})()`;

/** Launches the headless Chromium used as viewer (harness flags), sized for a 1080p stream. */
export async function launchViewerBrowser() {
  return launchChromium({ args: ['--disable-background-timer-throttling', '--disable-renderer-backgrounding'] });
}

/**
 * Runs `count` probes in `page` (which has PROBE_SOURCE installed and watching), alternating
 * the pointer between two points; `makeTrigger(x, y)` builds the trigger. Waits a settle time
 * with jitter between samples so triggers do not lock to the sender's frame tick. Returns the
 * raw results (the first `discard` are dropped by the caller's summary).
 */
export async function runProbes(page, { count, points, makeTrigger, settleMs = 250, onProgress } = {}) {
  const out = [];
  for (let k = 0; k < count; k++) {
    const [x, y] = points[k % points.length];
    await sleep(settleMs + Math.floor(Math.random() * 150));
    const r = await page.evaluate(([trig]) => window.__bench.probe(trig), [makeTrigger(x, y)]);
    out.push(r);
    if (onProgress) onProgress(k, r);
    if (r.timeout) await sleep(500); // let a late frame land before the next baseline
  }
  return out;
}

export function probeSummary(results, discard) {
  const kept = results.slice(discard);
  const ms = kept.filter((r) => Number.isFinite(r.ms)).map((r) => r.ms);
  const recv = kept.filter((r) => Number.isFinite(r.recvMs)).map((r) => r.recvMs);
  const inj = kept.filter((r) => Number.isFinite(r.injectMs)).map((r) => r.injectMs);
  return {
    ...summary(ms),
    timeouts: kept.filter((r) => r.timeout).length,
    errors: kept.filter((r) => r.error).length,
    discarded: Math.min(discard, results.length),
    // Video only: when the last packet of the frame that showed the change arrived (RTC
    // receiveTime), relative to the same clock start; the rest until `ms` is decode + present.
    recv_p50: recv.length ? round(median(recv)) : null,
    // X side only: when the bench's /move request had answered (HTTP + xdotool run). Part of
    // `ms`, not subtracted: the same for every stack.
    inject_p50: inj.length ? round(median(inj)) : null,
  };
}

export { spawnGroup, killGroup, freePort, sleep, waitFor, tmpDir, tail, path, existsSync };
