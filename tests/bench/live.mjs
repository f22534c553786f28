// Live pipe benchmarks: input-to-photon latency, delivered fps, bitrate and server CPU for
// Porthole and its peers (x11vnc + websockify + noVNC, Selkies) on the same Xvfb display and
// the same probe, plus the encode cost of the agent next to bare x264 (ffmpeg).
//
// The scene: an Xvfb display showing the colour page full screen in a Chromium kiosk window ON
// the display (not headless). A viewer in a separate headless Chromium watches through each
// stack's own web client; the probe (lib.mjs PROBE_SOURCE) runs in that viewer page, starts its
// clock right before it fires the input and stops it at the first displayed frame whose colour
// changed. Stacks run one after another, never at the same time.

import { createConnection } from 'node:net';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startXvfb, startAgent, openViewer } from '../e2e/harness.mjs';
import {
  startKiosk, spawnGroup, killGroup, freePort, sleep, waitFor, tail, waitHttp, which,
  PROBE_SOURCE, runProbes, probeSummary, measureCpu, groupCpuSeconds, threadCpuSeconds, tcpBytesSent, round, median,
  summary, run,
} from './lib.mjs';

export const SELKIES_VENV = process.env.PORTHOLE_BENCH_VENV ||
  path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'porthole-bench', 'venv');
const NOVNC_DIR = process.env.PORTHOLE_BENCH_NOVNC || '/usr/share/novnc';

/** Where the probes sample (stream pixels) and where the pointer alternates. */
export function geometry(w, h) {
  const y = Math.round(h * 0.2);
  return {
    sample: [Math.round(w * 0.85), Math.round(h * 0.8)],
    points: [[Math.round(w * 0.15), y], [Math.round(w * 0.15) + 40, y]],
  };
}

// ---------------------------------------------------------------------------------------------
// The scene: Xvfb + kiosk colour page

export async function startScene(w, h, bench, work, log = () => {}) {
  const tag = `${w}x${h}`;
  const xvfb = await startXvfb({ width: w, height: h, log: path.join(work, `xvfb-${tag}.log`) });
  let kiosk;
  try {
    kiosk = await startKiosk(xvfb.display, `${bench.url}/colour.html`, { width: w, height: h, log: path.join(work, `kiosk-${tag}.log`) });
  } catch (e) {
    await xvfb.stop();
    throw e;
  }
  await kiosk.setMode('still');
  log(`  scene ${tag} on ${xvfb.display}: kiosk window ${kiosk.size.w}x${kiosk.size.h}`);
  return {
    w, h, xvfb, kiosk, display: xvfb.display, tag,
    async stop() { await kiosk.stop(); await xvfb.stop(); },
  };
}

function tcpReady(port) {
  return new Promise((resolve) => {
    const s = createConnection({ port, host: '127.0.0.1' });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

async function newViewerPage(browser, viewport) {
  const ctx = await browser.newContext({ viewport, bypassCSP: true });
  const page = await ctx.newPage();
  page.logLines = [];
  page.on('console', (m) => page.logLines.push(`[console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => page.logLines.push(`[pageerror] ${e.message}`));
  return page;
}

async function installProbe(page, selector, kind, [sx, sy]) {
  await page.evaluate(PROBE_SOURCE);
  await page.evaluate(([sel, k, x, y]) => {
    const el = document.querySelector(sel);
    return k === 'video' ? window.__bench.watchVideo(el, x, y) : window.__bench.watchCanvas(el, x, y);
  }, [selector, kind, sx, sy]);
  await waitFor(() => page.evaluate(() => window.__bench.last !== null), {
    timeout: 20000, message: `the probe's first observation (${kind} ${selector})`,
  }).catch(async (e) => {
    const err = await page.evaluate(() => window.__bench.error).catch(() => null);
    throw new Error(`${e.message}${err ? `; probe error: ${err}` : ''}`);
  });
}

const viewportFor = (scene) => ({ width: Math.min(scene.w, 1920), height: Math.min(scene.h, 1080) + 40 });

// ---------------------------------------------------------------------------------------------
// The stacks

function portholeStack() {
  let agent;
  return {
    name: 'porthole',
    label: 'Porthole (WebRTC H.264, /viewer)',
    async start(scene) {
      agent = await startAgent({ display: scene.display });
      const health = await (await fetch(`${agent.url}/v1/health`)).json().catch(() => ({}));
      return { pgids: [agent.child.pid], info: { version: health.version, max_fps: 30, log: agent.logFile } };
    },
    async openViewer(browser, scene) {
      const page = await openViewer(browser, agent, { viewport: viewportFor(scene) });
      await waitFor(() => page.evaluate(() => document.getElementById('video').videoWidth > 0),
        { timeout: 30000, message: 'a decoded frame in the Porthole viewer' });
      await installProbe(page, '#video', 'video', geometry(scene.w, scene.h).sample);
      return page;
    },
    async closeViewer(page) {
      await page.evaluate(() => window.porthole.disconnect()).catch(() => {});
      await page.context().close().catch(() => {});
    },
    triggers: (bench, scene) => [
      { name: 'x', label: 'xdotool mousemove (X side)', make: (x, y) => ({ kind: 'fetch', url: `${bench.url}/move?display=${encodeURIComponent(scene.display)}&x=${x}&y=${y}` }) },
      {
        name: 'dc',
        label: 'data channel pointer',
        async setup(page) {
          await page.evaluate(() => window.porthole.send({ type: 'control', action: 'take' }));
          await waitFor(async () => (await (await fetch(`${agent.url}/v1/control`, { headers: agent.auth() })).json()).holder === 'human',
            { timeout: 10000, message: 'control holder "human" after take' });
        },
        make: (x, y) => ({ kind: 'dc', msg: { type: 'pointer', x, y, buttons: 0 } }),
        async teardown(page) { await page.evaluate(() => window.porthole.release()).catch(() => {}); },
      },
    ],
    async sample(page) {
      return page.evaluate(async () => {
        const s = await window.porthole.stats();
        const msgs = window.porthole.events.filter((m) => m && m.type === 'stats');
        return {
          fps: s.framesPerSecond, bytes: s.bytesReceived, decoded: s.framesDecoded, received: s.framesReceived,
          dropped: s.framesDropped, lost: s.packetsLost, jitterMs: s.jitterBufferDelay, statsMsgs: msgs, t: performance.now(),
        };
      });
    },
    agentUrl: () => agent && agent.url,
    pipelinePid: () => agent && agent.child.pid,
    async stop() { if (agent) await agent.stop(); agent = null; },
  };
}

function novncStack(work) {
  let vnc, ws, wport;
  return {
    name: 'novnc',
    label: 'x11vnc + websockify + noVNC',
    async start(scene) {
      for (const bin of ['x11vnc', 'websockify']) {
        if (!which(bin)) throw new Error(`${bin} is not installed (run packaging/install-bench-deps.sh)`);
      }
      if (!existsSync(path.join(NOVNC_DIR, 'vnc.html'))) throw new Error(`noVNC not found at ${NOVNC_DIR}/vnc.html (apt-get install novnc)`);
      const port = await freePort();
      wport = await freePort();
      const vlog = path.join(work, 'x11vnc.log');
      vnc = spawnGroup('x11vnc', ['-display', scene.display, '-rfbport', String(port), '-shared', '-forever', '-nopw', '-localhost'], { log: vlog });
      await waitFor(async () => {
        if (vnc.exitInfo) throw new Error(`x11vnc exited: ${tail(vlog, 15)}`);
        return tcpReady(port);
      }, { timeout: 20000, message: 'x11vnc listening' });
      ws = spawnGroup('websockify', ['--web', NOVNC_DIR, `127.0.0.1:${wport}`, `127.0.0.1:${port}`], { log: path.join(work, 'websockify.log') });
      await waitHttp(`http://127.0.0.1:${wport}/vnc.html`, { child: ws, what: 'websockify serving noVNC' });
      const ver = await run('x11vnc', ['-version']).then((r) => r.stdout.trim()).catch(() => null);
      return { pgids: [vnc.pid, ws.pid], info: { x11vnc: ver, cpu_counts: 'x11vnc + websockify' } };
    },
    async openViewer(browser, scene) {
      const page = await newViewerPage(browser, viewportFor(scene));
      await page.goto(`http://127.0.0.1:${wport}/vnc.html?autoconnect=1&host=127.0.0.1&port=${wport}&resize=off`);
      await waitFor(() => page.evaluate((w) => [...document.querySelectorAll('canvas')].some((c) => c.width === w), scene.w),
        { timeout: 30000, message: `a noVNC canvas ${scene.w} wide` });
      await page.evaluate((w) => { [...document.querySelectorAll('canvas')].find((c) => c.width === w).id ||= 'bench-vnc-canvas'; }, scene.w);
      const id = await page.evaluate((w) => [...document.querySelectorAll('canvas')].find((c) => c.width === w).id, scene.w);
      await installProbe(page, `#${id}`, 'canvas', geometry(scene.w, scene.h).sample);
      return page;
    },
    async closeViewer(page) { await page.context().close().catch(() => {}); },
    triggers: (bench, scene) => [
      { name: 'x', label: 'xdotool mousemove (X side)', make: (x, y) => ({ kind: 'fetch', url: `${bench.url}/move?display=${encodeURIComponent(scene.display)}&x=${x}&y=${y}` }) },
    ],
    async sample() { return { bytes: tcpBytesSent(wport), t: performance.now() }; },
    async stop() { await killGroup(ws); await killGroup(vnc); },
  };
}

function selkiesStack(work) {
  let child, port, logFile;
  return {
    name: 'selkies',
    label: 'Selkies (PyPI, WebSocket H.264 -> WebCodecs)',
    async start(scene) {
      const bin = path.join(SELKIES_VENV, 'bin', 'selkies');
      if (!existsSync(bin)) throw new Error(`selkies not installed at ${bin} (run packaging/install-bench-deps.sh)`);
      port = await freePort();
      logFile = path.join(work, `selkies-${scene.tag}.log`);
      // Its defaults otherwise (websockets mode, x264, client-chosen frame rate); no login,
      // no audio, and the resolution locked to the display's (Xvfb cannot be resized).
      child = spawnGroup(bin, [
        '--addr', '127.0.0.1', '--port', String(port), '--enable-basic-auth=false', '--audio-enabled=false',
        '--manual-width', String(scene.w), '--manual-height', String(scene.h),
      ], { env: { DISPLAY: scene.display }, log: logFile });
      await waitHttp(`http://127.0.0.1:${port}/`, { child, timeout: 60000, what: `selkies on :${port} (log ${logFile})` });
      const ver = await run(path.join(SELKIES_VENV, 'bin', 'python'), ['-m', 'pip', 'show', 'selkies'])
        .then((r) => (r.stdout.match(/^Version: (.*)$/m) || [])[1]).catch(() => null);
      return { pgids: [child.pid], info: { version: ver, log: logFile } };
    },
    async openViewer(browser, scene) {
      const page = await newViewerPage(browser, viewportFor(scene));
      await page.goto(`http://127.0.0.1:${port}/`);
      await waitFor(() => page.evaluate(() => {
        const v = document.querySelector('video#videoStream') || [...document.querySelectorAll('video')].find((x) => x.srcObject);
        return !!v && v.videoWidth > 0;
      }), { timeout: 45000, message: 'a playing <video> in the Selkies client' }).catch((e) => {
        throw new Error(`${e.message}\n--- selkies log ---\n${tail(logFile, 20)}\n--- page ---\n${page.logLines.slice(-10).join('\n')}`);
      });
      await page.evaluate(() => {
        const v = document.querySelector('video#videoStream') || [...document.querySelectorAll('video')].find((x) => x.srcObject);
        v.id ||= 'bench-selkies-video';
      });
      const id = await page.evaluate(() => (document.querySelector('video#videoStream') || [...document.querySelectorAll('video')].find((x) => x.srcObject)).id);
      await installProbe(page, `#${id}`, 'video', geometry(scene.w, scene.h).sample);
      return page;
    },
    async closeViewer(page) { await page.context().close().catch(() => {}); },
    triggers: (bench, scene) => [
      { name: 'x', label: 'xdotool mousemove (X side)', make: (x, y) => ({ kind: 'fetch', url: `${bench.url}/move?display=${encodeURIComponent(scene.display)}&x=${x}&y=${y}` }) },
    ],
    async sample() { return { bytes: tcpBytesSent(port), t: performance.now() }; },
    streamSettings() {
      const m = [...readFileSync(logFile, 'utf8').matchAll(/Stream settings active -> (.*)/g)].pop();
      return m ? m[1].trim() : null;
    },
    async stop() { if (child) await killGroup(child, 8000); child = null; },
  };
}

// ---------------------------------------------------------------------------------------------
// Measuring one stack

async function busyWindow(page, stack, scene, pgids, seconds) {
  await scene.kiosk.setMode('busy');
  await sleep(2000);
  const threads0 = stack.pipelinePid ? threadCpuSeconds(stack.pipelinePid(), 'pipeline-') : null;
  const k0 = await scene.kiosk.state();
  const cpu0 = groupCpuSeconds(pgids);
  const w0 = performance.now();
  const b0 = await page.evaluate(() => window.__bench.counters());
  const s0 = await stack.sample(page);
  const fps = [];
  for (let i = 0; i < seconds; i++) {
    await sleep(1000);
    const s = await stack.sample(page);
    if (Number.isFinite(s.fps)) fps.push(s.fps);
  }
  const s1 = await stack.sample(page);
  const b1 = await page.evaluate(() => window.__bench.counters());
  const wall = (performance.now() - w0) / 1000;
  const cpu1 = groupCpuSeconds(pgids);
  const k1 = await scene.kiosk.state();
  const threads1 = stack.pipelinePid ? threadCpuSeconds(stack.pipelinePid(), 'pipeline-') : null;
  const dt = (b1.t - b0.t) / 1000;
  await scene.kiosk.setMode('still');
  const out = {
    page_fps: round((k1.frames - k0.frames) / wall),
    cpuPercent: round((100 * (cpu1 - cpu0)) / wall),
    shown_fps: round((b1.frames - b0.frames) / dt),
    colour_updates_per_s: round((b1.updates - b0.updates) / dt),
    kbit_s: s1.bytes != null && s0.bytes != null ? round((8 * (s1.bytes - s0.bytes)) / ((s1.t - s0.t) / 1000) / 1000, 0) : null,
  };
  if (fps.length) out.framesPerSecond_p50 = round(median(fps));
  const sdt = (s1.t - s0.t) / 1000;
  if (s1.decoded != null) {
    out.decoded_fps = round((s1.decoded - s0.decoded) / sdt);
    out.received_fps = round((s1.received - s0.received) / sdt);
    out.frames_dropped = s1.dropped - s0.dropped;
    out.packets_lost = s1.lost - s0.lost;
    out.jitter_buffer_ms = round(s1.jitterMs);
  }
  // The agent's own `stats` messages that arrived during the window.
  const agentStats = s1.statsMsgs && s0.statsMsgs ? s1.statsMsgs.slice(s0.statsMsgs.length) : [];
  if (agentStats.length) {
    const last = agentStats[agentStats.length - 1];
    // Frames the agent encoded per second, counted where they arrive (the viewer's
    // framesReceived; nothing is lost on loopback, packets_lost says so): the `stats` messages
    // come about once a second but late and irregularly when the stream is heavy.
    const fpsMean = out.received_fps ?? median(agentStats.map((a) => a.fps));
    out.agent = {
      fps_p50: round(median(agentStats.map((a) => a.fps))),
      fps_mean: round(fpsMean),
      encode_ms_p50: round(median(agentStats.map((a) => a.encode_ms_p50)), 2),
      bitrate_kbps_p50: round(median(agentStats.map((a) => a.bitrate_kbps)), 0),
      width: last.width,
      height: last.height,
      samples: agentStats.length,
    };
    // Whole-process CPU per encoded frame (capture, convert, encode, WebRTC, HTTP, everything).
    const perSec = (c) => c / wall;
    if (fpsMean > 0) {
      out.agent.process_cpu_ms_per_frame = round((1000 * perSec(cpu1 - cpu0)) / fpsMean, 2);
      if (threads0 && threads1) {
        // The pipeline thread and the x264 slice threads it spawned (same name): capture +
        // convert + encode, all threads. encode_ms_p50 only counts the pipeline thread itself.
        out.agent.pipeline_threads_cpu_ms_per_frame = round((1000 * perSec(threads1.seconds - threads0.seconds)) / fpsMean, 2);
        out.agent.pipeline_threads = threads1.names;
      }
    }
  }
  return out;
}

/** Runs the whole live measurement for one stack on `scene`; never throws (errors are recorded). */
export async function measureStack(stack, scene, browser, bench, opts, log) {
  const res = { name: stack.name, label: stack.label, display: scene.tag };
  let page;
  const t0 = Date.now();
  try {
    log(`  [${stack.name}] starting`);
    const started = await stack.start(scene);
    res.info = started.info;
    const pgids = started.pgids;
    await sleep(2000);
    page = await stack.openViewer(browser, scene);
    log(`  [${stack.name}] viewer shows frames; probing`);
    const { points } = geometry(scene.w, scene.h);
    res.latency = {};
    for (const trig of stack.triggers(bench, scene)) {
      if (trig.setup) await trig.setup(page);
      const raw = await runProbes(page, { count: opts.samples, points, makeTrigger: trig.make });
      if (trig.teardown) await trig.teardown(page);
      res.latency[trig.name] = { label: trig.label, ...probeSummary(raw, opts.discard) };
      if (opts.keepRaw) res.latency[trig.name].raw_ms = raw.map((r) => (Number.isFinite(r.ms) ? round(r.ms, 2) : null));
      const l = res.latency[trig.name];
      log(`  [${stack.name}] ${trig.name}: p50 ${l.p50} ms p95 ${l.p95} ms (n ${l.n}, timeouts ${l.timeouts})`);
    }
    res.cpu = {};
    res.cpu.still = await measureCpu(pgids, opts.windowS);
    log(`  [${stack.name}] still screen, viewer connected: ${res.cpu.still.cpuPercent}% CPU`);
    res.busy = await busyWindow(page, stack, scene, pgids, opts.windowS);
    res.cpu.busy = { cpuPercent: res.busy.cpuPercent };
    log(`  [${stack.name}] busy: ${res.busy.cpuPercent}% CPU, shown ${res.busy.shown_fps} fps, ${res.busy.kbit_s} kbit/s`);
    if (stack.streamSettings) res.info.stream = stack.streamSettings();
    await stack.closeViewer(page);
    page = null;
    await sleep(5000); // Selkies keeps a display for 3 s for a reconnect; let everyone settle
    res.cpu.noViewer = await measureCpu(pgids, opts.windowS);
    log(`  [${stack.name}] no viewer: ${res.cpu.noViewer.cpuPercent}% CPU`);
    res.ok = true;
  } catch (e) {
    res.ok = false;
    res.error = String(e && e.message ? e.message : e).split('\n').slice(0, 12).join('\n');
    log(`  [${stack.name}] FAILED: ${res.error}`);
  } finally {
    if (page) await stack.closeViewer(page).catch(() => {});
    await stack.stop().catch(() => {});
    res.seconds = Math.round((Date.now() - t0) / 1000);
  }
  return res;
}

// ---------------------------------------------------------------------------------------------
// Encode cost: the agent's own figures next to bare x264

/**
 * Runs ffmpeg x11grab -> libx264 (ultrafast, zerolatency, baseline) for `seconds` on the scene
 * (busy page) and returns its CPU time per encoded frame (user + system, all threads, from
 * /usr/bin/time, or the shell's `times` if that is missing).
 */
export async function bareX264(scene, seconds, work) {
  if (!which('ffmpeg')) return { error: 'ffmpeg is not installed' };
  await scene.kiosk.setMode('busy');
  await sleep(1500);
  const args = ['-hide_banner', '-nostdin', '-f', 'x11grab', '-framerate', '30', '-video_size', `${scene.w}x${scene.h}`,
    '-i', scene.display, '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-preset', 'ultrafast', '-tune', 'zerolatency', '-profile:v', 'baseline',
    '-t', String(seconds), '-f', 'null', '-'];
  const timeOut = path.join(work, `time-${scene.tag}.txt`);
  let user, sys, wall, stderr, k0, k1;
  try {
    k0 = await scene.kiosk.state();
    if (existsSync('/usr/bin/time')) {
      const r = await run('/usr/bin/time', ['-f', '%U %S %e', '-o', timeOut, 'ffmpeg', ...args], { timeout: (seconds + 60) * 1000 });
      stderr = r.stderr;
      [user, sys, wall] = readFileSync(timeOut, 'utf8').trim().split('\n').pop().split(' ').map(Number);
    } else {
      const q = (s) => `'${s.replace(/'/g, "'\\''")}'`;
      const t0 = performance.now();
      const r = await run('bash', ['-c', `ffmpeg ${args.map(q).join(' ')}; times >&2`], { timeout: (seconds + 60) * 1000 });
      wall = (performance.now() - t0) / 1000;
      stderr = r.stderr;
      const m = stderr.trim().split('\n').pop().match(/(\d+)m([\d.]+)s (\d+)m([\d.]+)s/);
      user = Number(m[1]) * 60 + Number(m[2]); sys = Number(m[3]) * 60 + Number(m[4]);
    }
    k1 = await scene.kiosk.state();
  } finally {
    await scene.kiosk.setMode('still');
  }
  const frames = Number(([...String(stderr).matchAll(/frame=\s*(\d+)/g)].pop() || [])[1]);
  writeFileSync(path.join(work, `ffmpeg-${scene.tag}.log`), String(stderr));
  const cpu = user + sys;
  return {
    command: `ffmpeg ${args.join(' ')}`,
    frames,
    cpu_s: round(cpu, 2),
    wall_s: round(wall, 2),
    fps: round(frames / seconds),
    page_fps: k0 && k1 ? round((k1.frames - k0.frames) / wall) : null,
    cpu_ms_per_frame: frames > 0 ? round((1000 * cpu) / frames, 2) : null,
  };
}

/** The agent alone at one display size with the busy page: its stats messages over a window. */
export async function agentEncode(scene, browser, opts, log) {
  const stack = portholeStack();
  let page;
  try {
    const { pgids } = await stack.start(scene);
    page = await stack.openViewer(browser, scene);
    const busy = await busyWindow(page, stack, scene, pgids, opts.windowS);
    log(`  [encode ${scene.tag}] agent: ${busy.agent?.encode_ms_p50} cpu-ms/frame (pipeline p50), ${busy.agent?.fps_p50} fps, process ${busy.cpuPercent}% CPU`);
    return busy;
  } finally {
    if (page) await stack.closeViewer(page).catch(() => {});
    await stack.stop().catch(() => {});
  }
}

export { portholeStack, novncStack, selkiesStack };
