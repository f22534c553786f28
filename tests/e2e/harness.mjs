// Helpers shared by the end-to-end tests: an X server, X clients, the real porthole-agent and
// Debian's Chromium (driven by playwright-core; no browser is ever downloaded).
//
// Every process is started in its own process group and killed as a group, in the test's
// `after` hooks and, as a last resort, when this Node process exits.

import https from 'node:https';
import { spawn, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync, statSync,
} from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

export { sleep };

/** The working copy of the viewer page (the agent serves the copy it was built with). */
export const VIEWER_HTML = fileURLToPath(new URL('../../guest-agent/static/viewer.html', import.meta.url));

export const CHROMIUM = process.env.PORTHOLE_CHROMIUM || '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  '--autoplay-policy=no-user-gesture-required',
  '--use-fake-ui-for-media-stream',
];

/** Path of the agent binary under test. */
export function agentBin() {
  if (process.env.PORTHOLE_AGENT_BIN) return process.env.PORTHOLE_AGENT_BIN;
  const target = process.env.CARGO_TARGET_DIR || '/work/target';
  return path.join(target, 'debug', 'porthole-agent');
}

/** Throws (never skips) when the agent binary is missing. */
export function requireAgentBin() {
  const bin = agentBin();
  if (!existsSync(bin)) {
    throw new Error(
      `porthole-agent binary not found at ${bin}. Build it first with ` +
      '`cargo build -p porthole-agent` (or point PORTHOLE_AGENT_BIN / CARGO_TARGET_DIR at it).',
    );
  }
  return bin;
}

// ---------------------------------------------------------------------------------------------
// Process groups

const live = new Map(); // pid -> { name, child }

process.on('exit', () => {
  for (const pid of live.keys()) {
    try { process.kill(-pid, 'SIGKILL'); } catch { /* gone */ }
  }
});
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    for (const pid of live.keys()) {
      try { process.kill(-pid, 'SIGKILL'); } catch { /* gone */ }
    }
    process.exit(130);
  });
}

/**
 * Spawns `cmd` as the leader of a new process group. `log` is a file path that receives
 * stdout and stderr (appended), or undefined to discard them.
 */
export function spawnGroup(cmd, args, { env = {}, log, cwd, unset = [] } = {}) {
  let fd;
  if (log) fd = openSync(log, 'a');
  const fullEnv = { ...process.env, ...env };
  for (const k of unset) delete fullEnv[k];
  const child = spawn(cmd, args, {
    cwd,
    env: fullEnv,
    detached: true,
    stdio: ['ignore', fd ?? 'ignore', fd ?? 'ignore'],
  });
  if (fd !== undefined) closeSync(fd);
  const name = path.basename(cmd);
  child.exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      live.delete(child.pid);
      child.exitInfo = { code, signal };
      resolve(child.exitInfo);
    });
    child.once('error', (err) => {
      live.delete(child.pid);
      child.exitInfo = { code: null, signal: null, error: err };
      resolve(child.exitInfo);
    });
  });
  if (child.pid) live.set(child.pid, { name, child });
  return child;
}

/** SIGTERM to the whole group, SIGKILL after `graceMs`. Resolves once the leader is gone. */
export async function killGroup(child, graceMs = 5000) {
  if (!child || !child.pid) return;
  const signalGroup = (sig) => {
    try { process.kill(-child.pid, sig); } catch { /* already gone */ }
  };
  if (child.exitInfo) { signalGroup('SIGKILL'); return; } // leader gone: sweep stragglers
  signalGroup('SIGTERM');
  const done = await Promise.race([child.exited.then(() => true), sleep(graceMs).then(() => false)]);
  signalGroup('SIGKILL');
  if (!done) await Promise.race([child.exited, sleep(2000)]);
}

function describeExit(info) {
  if (!info) return 'still running';
  if (info.error) return `failed to start: ${info.error.message}`;
  return info.signal ? `killed by ${info.signal}` : `exited with code ${info.code}`;
}

// ---------------------------------------------------------------------------------------------
// Small utilities

export function tmpDir(prefix = 'porthole-e2e-') {
  return mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function tail(file, lines = 60) {
  try {
    const text = readFileSync(file, 'utf8').replace(/\x1b\[[0-9;]*m/g, ''); // drop ANSI colours
    return text.split('\n').slice(-lines - 1).join('\n');
  } catch (e) {
    return `(no log: ${e.message})`;
  }
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Polls `fn` until it returns a truthy value (returned) or `timeout` ms pass (throws with
 * `message` and the last value or error seen).
 */
export async function waitFor(fn, { timeout = 10000, interval = 200, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last, lastErr;
  for (;;) {
    try {
      last = await fn();
      lastErr = undefined;
      if (last) return last;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() > deadline) {
      const detail = lastErr ? `last error: ${lastErr.message}` : `last value: ${JSON.stringify(last)}`;
      throw new Error(`timed out after ${timeout} ms waiting for ${message} (${detail})`);
    }
    await sleep(interval);
  }
}

function run(cmd, args, { env = {}, timeout = 15000 } = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env: { ...process.env, ...env }, timeout }, (err, stdout, stderr) => {
      if (err) {
        err.message += `\n${cmd} ${args.join(' ')}\nstdout: ${stdout}\nstderr: ${stderr}`;
        reject(err);
      } else resolve(stdout);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// X

function connectUnix(sock) {
  return new Promise((resolve) => {
    const s = net.connect(sock);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

function displayInUse(n) {
  return existsSync(`/tmp/.X11-unix/X${n}`) || existsSync(`/tmp/.X${n}-lock`);
}

/**
 * Starts Xvfb on a free display (probing /tmp/.X11-unix) and waits until it accepts
 * connections. Returns { display: ':N', number, child, stop() }.
 */
/** An X server on a free display: Xvfb (fixed size), or with `server: 'Xvnc'` TigerVNC's Xvnc
 * without a VNC port (its RandR can change the screen size, as the local sandbox's can). */
export async function startXvfb({ width = 1280, height = 800, depth = 24, log, server = 'Xvfb' } = {}) {
  let lastProblem = '';
  for (let attempt = 0; attempt < 10; attempt++) {
    let n = 100 + Math.floor(Math.random() * 800);
    while (displayInUse(n)) n++;
    // -noreset: the readiness probe below connects and leaves; without it the server resets when
    // that last client goes, and a client connecting during the reset (the busy xterm) fails
    // with "Can't open display".
    const args = server === 'Xvnc'
      ? [`:${n}`, '-geometry', `${width}x${height}`, '-depth', String(depth), '-rfbport', '-1',
        '-SecurityTypes', 'None', '-nolisten', 'tcp', '-noreset']
      : [`:${n}`, '-screen', '0', `${width}x${height}x${depth}`, '-nolisten', 'tcp', '-noreset'];
    const child = spawnGroup(server, args, { log });
    const sock = `/tmp/.X11-unix/X${n}`;
    const deadline = Date.now() + 15000;
    let ready = false;
    while (Date.now() < deadline && !child.exitInfo) {
      if (existsSync(sock) && await connectUnix(sock)) { ready = true; break; }
      await sleep(50);
    }
    if (ready) {
      const display = `:${n}`;
      return { display, number: n, child, stop: () => killGroup(child) };
    }
    lastProblem = `${server} :${n} ${describeExit(child.exitInfo)}` + (log ? `\n${tail(log, 20)}` : '');
    await killGroup(child);
  }
  throw new Error(`could not start ${server}: ${lastProblem}`);
}

export function xdotool(display, ...args) {
  return run('xdotool', args, { env: { DISPLAY: display } });
}

/** `{x, y}` of the X pointer on `display`. */
export async function mouseLocation(display) {
  const out = await xdotool(display, 'getmouselocation', '--shell');
  const v = Object.fromEntries(out.trim().split('\n').map((l) => l.split('=')));
  return { x: Number(v.X), y: Number(v.Y) };
}

/** Waits until a window whose title matches `title` exists on `display`. */
export async function waitForWindow(display, title, timeout = 20000) {
  return waitFor(async () => {
    const out = await xdotool(display, 'search', '--onlyvisible', '--name', title).catch(() => '');
    return out.trim().split('\n').filter(Boolean)[0];
  }, { timeout, message: `an X window titled ${JSON.stringify(title)} on ${display}` });
}

export function startOpenbox(display, { log } = {}) {
  const child = spawnGroup('openbox', ['--sm-disable'], { env: { DISPLAY: display }, log });
  return { child, stop: () => killGroup(child) };
}

/**
 * An X client that keeps changing the picture: a full-width xterm listing /usr/bin over and
 * over (a screenful of scrolling text about 20 times a second).
 */
export async function startBusyScreen(display, { log } = {}) {
  const title = `porthole-e2e-busy-${process.pid}`;
  const child = spawnGroup('xterm', [
    '-title', title, '-geometry', '160x50+0+0', '-bg', '#101820', '-fg', '#d0e0d0',
    '-e', 'sh', '-c', 'while :; do ls -l --color=always /usr/bin; date; sleep 0.05; done',
  ], { env: { DISPLAY: display }, log });
  try {
    await waitForWindow(display, title);
  } catch (e) {
    // Seen once in a full CI run (never alone): the window existed but was not viewable,
    // as when a window manager starts while it is being mapped. Map it and wait once more;
    // otherwise fail with what xterm said.
    const ids = (await xdotool(display, 'search', '--name', title).catch(() => '')).trim().split('\n').filter(Boolean);
    for (const id of ids) await xdotool(display, 'windowmap', id).catch(() => {});
    try {
      await waitForWindow(display, title, 20000);
    } catch (e2) {
      throw new Error(`${e2.message}; windows with that title (any state): ${ids.length}; xterm ${child.exitInfo ? `exited ${JSON.stringify(child.exitInfo)}` : 'running'}${log ? `\n--- ${log} ---\n${tail(log, 20)}` : ''}`);
    }
  }
  return { child, title, stop: () => killGroup(child) };
}

/**
 * An xterm at +100+100 whose shell runs `cat > outFile`, so whatever is typed into it (and
 * ended with Enter) lands in outFile.
 */
export async function startCatTerminal(display, outFile, { log } = {}) {
  const title = `porthole-e2e-cat-${process.pid}`;
  writeFileSync(outFile, '');
  const child = spawnGroup('xterm', [
    '-title', title, '-geometry', '80x10+100+100', '-bg', '#202830', '-fg', '#ffffff',
    '-e', 'sh', '-c', `exec cat > '${outFile.replace(/'/g, "'\\''")}'`,
  ], { env: { DISPLAY: display }, log });
  await waitForWindow(display, title);
  return { child, title, stop: () => killGroup(child) };
}

// ---------------------------------------------------------------------------------------------
// The agent

/**
 * Starts `porthole-agent serve` on `display` with a fresh token (0600 file), data dir and
 * port, and waits until GET /v1/health answers 200 (30 s).
 */
/** GET over HTTPS without verifying the certificate (the test pins it elsewhere): the status. */
export function insecureHttpsStatus(url) {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { rejectUnauthorized: false, timeout: 2000 }, (res) => { res.resume(); resolve(res.statusCode); });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

export async function startAgent({
  display, args = [], env = {}, healthTimeout = 30000,
  // Recording on (the default here is --no-record), and an agent started again on the same
  // data directory, port and token (a restart after a crash): pass the earlier agent's.
  record = false, dataDir: keepData, port: keepPort, token: keepToken, keepDir = false,
} = {}) {
  const bin = requireAgentBin();
  const dir = tmpDir('porthole-e2e-agent-');
  const token = keepToken || randomBytes(24).toString('hex');
  const tokenFile = path.join(dir, 'token');
  writeFileSync(tokenFile, token, { mode: 0o600 });
  const dataDir = keepData || path.join(dir, 'data');
  const logFile = path.join(dir, 'agent.log');
  const port = keepPort || await freePort();
  // With --tls-cert the agent serves HTTPS (a self-signed certificate: the probe does not verify it).
  const tls = args.includes('--tls-cert');
  const url = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  const argv = [
    'serve', '--display', display, '--listen', `127.0.0.1:${port}`,
    '--token-file', tokenFile, '--data-dir', dataDir, ...(record ? [] : ['--no-record']), ...args,
  ];
  writeFileSync(logFile, `$ ${bin} ${argv.join(' ')}\n`);
  const child = spawnGroup(bin, argv, {
    env: {
      RUST_LOG: process.env.RUST_LOG || 'info',
      RUST_BACKTRACE: '1',
      DISPLAY: display,
      ...env,
    },
    unset: env.PORTHOLE_TOKEN === undefined ? ['PORTHOLE_TOKEN'] : [], // token from --token-file
    log: logFile,
  });

  const agent = {
    bin, url, port, token, tokenFile, dataDir, dir, logFile, child, display,
    logTail: (n = 60) => tail(logFile, n),
    auth: () => ({ Authorization: `Bearer ${token}` }),
    async stop() {
      await killGroup(child);
      if (!process.env.PORTHOLE_E2E_KEEP && !keepDir) rmSync(dir, { recursive: true, force: true });
    },
  };

  const deadline = Date.now() + healthTimeout;
  let last = '';
  while (Date.now() < deadline) {
    if (child.exitInfo) {
      const msg = `porthole-agent ${describeExit(child.exitInfo)} before answering /v1/health\n` +
        `--- agent log (${logFile}) ---\n${agent.logTail(80)}`;
      await agent.stop();
      throw new Error(msg);
    }
    try {
      const status = tls ? await insecureHttpsStatus(`${url}/v1/health`)
        : (await fetch(`${url}/v1/health`, { signal: AbortSignal.timeout(2000) })).status;
      if (status === 200) return agent;
      last = `HTTP ${status}`;
    } catch (e) {
      last = e.cause?.code || e.message;
    }
    await sleep(200);
  }
  const msg = `porthole-agent did not answer GET /v1/health with 200 within ${healthTimeout} ms ` +
    `(last: ${last})\n--- agent log (${logFile}) ---\n${agent.logTail(80)}`;
  await agent.stop();
  throw new Error(msg);
}

/**
 * Wraps a test body so that a failure carries the tail of the agent's log (and of any page
 * console lines collected in `extra()`).
 */
export function withAgentLog(getAgent, fn, extra) {
  return async (t) => {
    try {
      await fn(t);
    } catch (e) {
      const agent = getAgent();
      let more = '';
      if (agent) more += `\n--- porthole-agent log tail (${agent.logFile}) ---\n${agent.logTail(60)}`;
      if (extra) {
        const x = extra();
        if (x) more += `\n${x}`;
      }
      if (e && typeof e === 'object' && more) {
        try { e.message = `${e.message}${more}`; } catch { /* frozen */ }
        if (e.stack) e.stack = `${e.stack}${more}`;
      }
      throw e;
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Chromium

/** Launches Debian's Chromium (headless, fresh temporary profile owned by Playwright). */
export async function launchChromium({ args = [] } = {}) {
  if (!existsSync(CHROMIUM)) throw new Error(`Chromium not found at ${CHROMIUM} (apt-get install chromium)`);
  const { chromium } = await import('playwright-core');
  const env = { ...process.env };
  delete env.DISPLAY; // headless: never touch a test display
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, ...args],
    env,
    timeout: 60000,
  });
}

/**
 * Opens the viewer page of `agent` in a new page of `browser`, with the token in the URL
 * fragment, and waits until its data channel is open. Console lines are kept in page.logLines.
 */
export async function openViewer(browser, agent, { viewport = { width: 1280, height: 838 }, wait = true, query = '' } = {}) {
  const page = await browser.newPage({ viewport });
  if (process.env.PORTHOLE_E2E_VIEWER_FROM_DISK === '1') {
    // The agent embeds viewer.html at build time; this serves the working copy instead, to try
    // page changes without rebuilding the agent.
    await page.route(/\/viewer(\?[^#]*)?(#.*)?$/, (route) => route.fulfill({
      status: 200, contentType: 'text/html; charset=utf-8', body: readFileSync(VIEWER_HTML),
    }));
  }
  page.logLines = [];
  page.on('console', (m) => page.logLines.push(`[console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => page.logLines.push(`[pageerror] ${e.message}`));
  await page.goto(`${agent.url}/viewer${query ? `?${query}` : ''}#token=${encodeURIComponent(agent.token)}`);
  await page.waitForFunction(() => typeof window.porthole === 'object' && window.porthole !== null);
  if (wait) {
    try {
      await page.evaluate(() => window.porthole.waitOpen(30000));
    } catch (e) {
      const st = await page.evaluate(() => ({
        state: window.porthole.state,
        lastError: window.porthole.lastError,
        pc: window.porthole.pc && window.porthole.pc.connectionState,
      })).catch(() => ({}));
      throw new Error(`viewer data channel did not open: ${e.message}; page state ${JSON.stringify(st)}\n` +
        page.logLines.slice(-20).join('\n'));
    }
  }
  return page;
}

export function viewerStats(page) {
  return page.evaluate(() => window.porthole.stats());
}

/** Agent→viewer `event` messages received by the page, flattened to the event itself. */
export function viewerEvents(page) {
  return page.evaluate(() => window.porthole.events
    .filter((m) => m && m.type === 'event')
    .map((m) => (m.event && typeof m.event === 'object' ? m.event : m)));
}

export function fileSize(p) {
  try { return statSync(p).size; } catch { return -1; }
}
