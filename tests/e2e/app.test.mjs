// The real desktop app (`porthole-app`, Tauri on WebKitGTK) driven through WebDriver:
// tauri-driver (cargo install tauri-driver --locked) in front of Debian's WebKitWebDriver
// (webkit2gtk-driver), on its own Xvfb, under its own D-Bus session. A plain-HTTP W3C WebDriver
// client (fetch) is enough; no WebdriverIO.
//
// One machine, one app session, four steps in order:
//   1. create a local sandbox through the app's New machine form (and find it with the CLI);
//   2. the live canvas follows the guest's screen (root window painted red, then blue, read
//      back as pixels of the canvas the WebCodecs decoder draws into);
//   3. take over and click with a real WebDriver pointer on the picture: an `xev` window in
//      the guest reports the ButtonPress at the guest pixel the click maps to;
//   4. two agent actions (POST /v1/computer) with different screens behind them, sync the
//      recording in the Replay library, open it, click each action's timeline marker: the
//      picture is the screen of that moment, the position settles on the first recorded frame
//      at or after the action (frame times read from the synced MP4 with ffprobe), the player
//      stays paused and the event list highlights the action.
//
// The guest is driven through the agent's /v1/exec (X clients on the machine's display). Every
// wait polls a condition with a timeout; no assertion rests on a sleep.
//
// Needs: tauri-driver on PATH, /usr/bin/WebKitWebDriver, dbus-run-session, Xvfb, root (the
// app creates local machines in their own network namespace when it can), and the binaries
// porthole-app, porthole and porthole-agent (built, never built here).
// Env: PORTHOLE_APP_BIN, PORTHOLE_CLI_BIN, PORTHOLE_AGENT_BIN, CARGO_TARGET_DIR,
// PORTHOLE_E2E_KEEP=1 (keep the temp dir), PORTHOLE_E2E_SCREENSHOTS=DIR (save PNGs there).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { agentBin, killGroup, sleep, tail, tmpDir, waitFor } from './harness.mjs';
import { appPrereqs, procsMentioning, startApp } from './appdriver.mjs';

const TARGET = process.env.CARGO_TARGET_DIR || '/work/target';
const APP = process.env.PORTHOLE_APP_BIN || path.join(TARGET, 'debug', 'porthole-app');
const CLI = process.env.PORTHOLE_CLI_BIN || path.join(TARGET, 'debug', 'porthole');
const AGENT = agentBin();
const KEEP = process.env.PORTHOLE_E2E_KEEP === '1';
const SHOTS = process.env.PORTHOLE_E2E_SCREENSHOTS || '';
const NAME = `app-e2e-${process.pid}`;
const STEP_TIMEOUT = 4 * 60 * 1000;

// Guest layout (the machine's display is 1280x800).
const GUEST = { width: 1280, height: 800 };
/** Root-window pixels no window covers: the colour checks read these. */
const PROBES = [[1180, 60], [90, 740], [640, 90]];
const XEV = { x: 720, y: 380, w: 360, h: 240 };

function run(cmd, args, { env = {}, timeout = 120000 } = {}) {
  return new Promise((resolve) => {
    execFile(cmd, args, { env: { ...process.env, ...env }, timeout, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** Same format as the UI's fmtClock (ui/src/lib/format.ts). */
function fmtClock(ms) {
  const t = Math.max(0, Math.floor(ms));
  const m = Math.floor(t / 60000);
  const s = Math.floor(t / 1000) % 60;
  return `${String(m).padStart(2, '0')}:${String(s).padStart(2, '0')}.${String(t % 1000).padStart(3, '0')}`;
}

function parseClock(s) {
  const m = /^(\d+):(\d{2})\.(\d{3})$/.exec(s.trim());
  return m ? Number(m[1]) * 60000 + Number(m[2]) * 1000 + Number(m[3]) : NaN;
}

// ---------------------------------------------------------------------------------------------
// WebDriver (the client and the app's start are in appdriver.mjs)

// Page-side helpers (run with exec; plain functions, no closures over test variables).

/** The first element matching `sel` whose trimmed text is `text` (or contains it with `partial`). */
const byText = (sel, text, partial) => [...document.querySelectorAll(sel)]
  .find((e) => (partial ? e.textContent.includes(text) : e.textContent.trim() === text)) || null;

/** The control a <label> with this text points at. */
const byLabel = (label) => {
  const l = [...document.querySelectorAll('label')].find((e) => e.textContent.trim() === label);
  return l ? document.getElementById(l.htmlFor) : null;
};

/** RGB at stream pixels of the video canvas, with the canvas size and whether a picture is up. */
const canvasPixels = (points) => {
  const c = document.querySelector('[data-testid="video-canvas"]');
  if (!c || !c.dataset.renderer) return { missing: true }; // not yet given to the decoder
  const placeholder = c.parentElement.querySelector('.video-placeholder');
  // The WebGL renderer (ui/src/video/renderer.ts) reads its own picture back; a 2D canvas is read directly.
  const read = c.__portholeRead;
  const px = read ? read(points) : points.map(([x, y]) => Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3)));
  return { width: c.width, height: c.height, picture: !placeholder, px, renderer: c.dataset.renderer };
};

function near(rgb, want, tol = 40) {
  return rgb.every((v, i) => Math.abs(v - want[i]) <= tol);
}

// ---------------------------------------------------------------------------------------------
// The world of this file

const w = {
  home: null,
  xvfb: null,
  driver: null,
  driverLog: null,
  wd: null,
  agent: null, // { url, token }
  netIndex: null,
  actions: [], // agent actions for the replay step: { seq, t_ms, color }
  steps: {},
};

function env(extra = {}) {
  // The webview's storage (localStorage: the remembered Fit to window choice) is per run too.
  const e = {
    ...process.env, PORTHOLE_HOME: w.home, PORTHOLE_AGENT_BIN: AGENT,
    XDG_DATA_HOME: path.join(w.home, 'xdg-data'), XDG_CACHE_HOME: path.join(w.home, 'xdg-cache'), ...extra,
  };
  delete e.RUST_LOG;
  return e;
}

async function cli(args) {
  const r = await run(CLI, args, { env: { PORTHOLE_HOME: w.home, PORTHOLE_AGENT_BIN: AGENT } });
  if (r.code !== 0) throw new Error(`porthole ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return args.includes('--json') ? JSON.parse(r.stdout) : r.stdout;
}

async function agentCall(method, p, body) {
  const r = await fetch(w.agent.url + p, {
    method,
    headers: { authorization: `Bearer ${w.agent.token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(60000),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`agent ${method} ${p}: HTTP ${r.status} ${text}`);
  return JSON.parse(text);
}

/** Runs a shell command in the guest; throws unless it exits 0. */
async function guest(command, timeout_ms = 20000) {
  const r = await agentCall('POST', '/v1/exec', { command, timeout_ms });
  if (r.exit_code !== 0) throw new Error(`guest: ${command}\nexit ${r.exit_code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r.stdout;
}

/** Starts a long-lived X client in the guest, detached from the exec call. */
function guestSpawn(command, log = '/dev/null') {
  return guest(`setsid sh -c ${shq(command)} >${log} 2>&1 </dev/null &`);
}

function shq(s) {
  return `'${s.replace(/'/g, "'\\''")}'`;
}

async function allEvents() {
  const out = [];
  let after = 0;
  for (;;) {
    const page = await agentCall('GET', `/v1/events?after=${after}&limit=1000`);
    out.push(...page.events);
    if (!page.events.length || page.next <= after) return out;
    after = page.next;
  }
}

function machineLogs() {
  let out = '';
  const dir = path.join(w.home || '/nonexistent', 'machines');
  let names = [];
  try { names = readdirSync(dir); } catch { return ''; }
  for (const n of names) {
    let files = [];
    try { files = readdirSync(path.join(dir, n, 'logs')); } catch { continue; }
    for (const f of files) out += `\n--- ${path.join(dir, n, 'logs', f)} ---\n${tail(path.join(dir, n, 'logs', f), 20)}`;
  }
  return out;
}

/** A test body whose failures carry the driver/app log, the machine logs and a screenshot path. */
function step(name, fn) {
  return async () => {
    try {
      await fn();
      w.steps[name] = true;
    } catch (e) {
      let more = `\n--- tauri-driver / WebKitWebDriver / app log (${w.driverLog}) ---\n${tail(w.driverLog, 40)}${machineLogs()}`;
      if (w.wd && w.wd.sid && w.home) {
        try {
          const p = path.join(w.home, `failure-${name.replace(/\W+/g, '-')}.png`);
          writeFileSync(p, await w.wd.screenshot());
          more += `\n(screenshot of the app at the failure: ${p}; PORTHOLE_E2E_KEEP=1 keeps it)`;
        } catch { /* no session */ }
      }
      if (e && typeof e === 'object') {
        try { e.message = `${e.message}${more}`; } catch { /* frozen */ }
        if (e.stack) e.stack = `${e.stack}${more}`;
      }
      throw e;
    }
  };
}

function needs(...names) {
  for (const n of names) assert.ok(w.steps[n], `this step needs the earlier step "${n}", which failed`);
}

async function saveShot(file) {
  const png = await w.wd.screenshot();
  assert.equal(png.subarray(1, 4).toString(), 'PNG', 'WebDriver screenshot is not a PNG');
  if (SHOTS) {
    mkdirSync(SHOTS, { recursive: true });
    writeFileSync(path.join(SHOTS, file), png);
  }
  return png;
}

/** Waits for an element found by a page-side finder; returns its reference. */
function waitEl(finder, args, message, timeout = 30000) {
  return waitFor(() => w.wd.exec(finder, ...args), { timeout, interval: 250, message });
}

/** Waits until the video canvas shows `rgb` at every probe; returns the last reading. */
async function waitCanvasColor(rgb, what, timeout = 30000) {
  let last;
  try {
    return await waitFor(async () => {
      last = await w.wd.exec(canvasPixels, PROBES);
      return !last.missing && last.picture && last.px.every((p) => near(p, rgb)) && last;
    }, { timeout, interval: 150, message: what });
  } catch (e) {
    e.message += ` (wanted rgb(${rgb}) at ${JSON.stringify(PROBES)}; canvas read ${JSON.stringify(last)})`;
    throw e;
  }
}

/** Sample times (ms, floored like the app's replay index) of an MP4's video packets, sorted. */
async function recordedFrameTimes(file) {
  const r = await run('ffprobe', ['-v', 'error', '-select_streams', 'v:0', '-show_entries', 'stream=time_base:packet=pts', '-of', 'json', file]);
  assert.equal(r.code, 0, `ffprobe ${file}: ${r.stderr}`);
  const j = JSON.parse(r.stdout);
  const [num, den] = j.streams[0].time_base.split('/').map(Number);
  const out = j.packets.map((p) => Math.floor((Number(p.pts) * 1000 * num) / den)).sort((a, b) => a - b);
  assert.ok(out.length > 10, `only ${out.length} frames in ${file}`);
  return out;
}

// ---------------------------------------------------------------------------------------------

describe('desktop app through tauri-driver', { timeout: 20 * 60 * 1000 }, () => {
  before(async () => {
    const missing = appPrereqs([APP, CLI, AGENT]);
    if (missing.length) throw new Error(`cannot run the app tests; missing:\n  ${missing.join('\n  ')}`);

    w.home = tmpDir('porthole-e2e-app-');
    w.driverLog = path.join(w.home, 'driver.log');
    // The app inherits this environment through tauri-driver and WebKitWebDriver.
    const app = await startApp({ app: APP, env: env(), log: w.driverLog, xvfbLog: path.join(w.home, 'xvfb.log') });
    Object.assign(w, { xvfb: app.xvfb, driver: app.driver, wd: app.wd });
  });

  after(async () => {
    const problems = [];
    try { await w.wd?.quit(); } catch (e) { problems.push(`quit: ${e.message}`); }
    if (w.home) {
      // Machines outlive the app (their sandbox is its own process group): destroy them.
      try {
        const list = await cli(['machine', 'list', '--json']);
        for (const m of list) {
          if (Number.isInteger(m.spec?.net_index)) w.netIndex = m.spec.net_index;
          const r = await run(CLI, ['machine', 'destroy', m.name], { env: { PORTHOLE_HOME: w.home, PORTHOLE_AGENT_BIN: AGENT } });
          if (r.code !== 0) problems.push(`destroy ${m.name}: ${r.stderr}`);
        }
      } catch (e) { problems.push(`machine cleanup: ${e.message}`); }
    }
    await killGroup(w.driver);
    await w.xvfb?.stop();
    if (w.home) {
      for (const pid of procsMentioning(w.home)) {
        try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      }
      if (w.netIndex !== null) {
        const ns = await run('ip', ['netns', 'list']);
        if (ns.stdout.split('\n').some((l) => l.split(/\s+/)[0] === `porthole-${w.netIndex}`)) {
          await run('ip', ['netns', 'del', `porthole-${w.netIndex}`]);
        }
      }
      if (!KEEP) rmSync(w.home, { recursive: true, force: true });
    }
    if (problems.length) console.error(`app.test cleanup: ${problems.join('; ')}`);
  });

  it('creates a local machine through the New machine form', { timeout: STEP_TIMEOUT }, step('create', async () => {
    const wd = w.wd;
    await waitEl(byText, ['h1', 'Machines'], 'the Machines page');
    await wd.click(await waitEl(byText, ['button', 'New machine'], 'the New machine button'));
    const name = await waitEl(byLabel, ['Name'], 'the Name field of the form');
    await wd.type(name, NAME);
    const browser = await wd.exec(() => [...document.querySelectorAll('label.check')]
      .find((l) => l.textContent.includes('Start a browser'))?.querySelector('input') || null);
    assert.ok(browser, 'no "Start a browser on the desktop" checkbox');
    await wd.click(browser); // an empty desktop: the root window is what the colour checks read
    assert.deepEqual(
      await wd.exec((n, b) => [n.value, b.checked, document.querySelector('[role=radio][aria-checked=true]')?.textContent], name, browser),
      [NAME, false, 'Local sandbox'],
      'the form does not hold what was entered',
    );
    await wd.click(await waitEl(byText, ['button[type=submit]', 'Create machine'], 'the Create machine button'));

    // The row shows the machine running, with a Live link.
    const row = await waitFor(() => wd.exec((n) => {
      const r = document.querySelector(`[data-testid="machine-${n}"]`);
      return r && [...r.querySelectorAll('a')].some((a) => a.textContent.trim() === 'Live') ? r.innerText : null;
    }, NAME), { timeout: 120000, interval: 500, message: `machine ${NAME} running in the Machines table` }).catch(async (e) => {
      e.message += `\npage: ${await wd.exec(() => document.querySelector('main')?.innerText).catch(() => '?')}`;
      throw e;
    });
    assert.match(row, /running/, `row: ${row}`);
    assert.match(row, /local/, `row: ${row}`);

    // The CLI sees the same machine in the same state dir.
    const list = await cli(['machine', 'list', '--json']);
    const m = list.find((x) => x.name === NAME);
    assert.ok(m, `porthole machine list does not show ${NAME}: ${JSON.stringify(list)}`);
    assert.equal(m.status, 'running');
    assert.equal(m.provider, 'local');
    assert.equal(m.spec?.browser, false, 'the machine was created with a browser although the box was unticked');
    if (Number.isInteger(m.spec?.net_index)) w.netIndex = m.spec.net_index;
    assert.ok(row.includes(m.agent_url), `the row does not show the agent URL ${m.agent_url}: ${row}`);
    w.agent = { url: m.agent_url, token: (await cli(['machine', 'token', NAME])).trim() };
    const h = await agentCall('GET', '/v1/health');
    assert.equal(h.status, 'ok', `agent health: ${JSON.stringify(h)}`);
  }));

  it('shows the guest screen live and follows it as it changes', { timeout: STEP_TIMEOUT }, step('live', async () => {
    needs('create');
    const wd = w.wd;
    const live = await wd.exec((n) => [...document.querySelector(`[data-testid="machine-${n}"]`).querySelectorAll('a')]
      .find((a) => a.textContent.trim() === 'Live'), NAME);
    await wd.click(live);
    await waitFor(() => wd.exec(() => location.hash), { message: 'the live route' })
      .then((h) => assert.equal(h, `#/live/${NAME}`));
    const first = await waitFor(async () => {
      const r = await wd.exec(canvasPixels, PROBES);
      return !r.missing && r.picture && r.width === GUEST.width && r.height === GUEST.height && r;
    }, { timeout: 60000, message: 'the first decoded frame on the live canvas (1280x800)' });
    // The fast path (issue 16): frames over the loopback WebSocket (live_start has no other
    // way to send them), painted by the WebGL2 shader from copyTo planes where GL runs on a
    // GPU, by the 2D canvas where it is llvmpipe (cheaper there; ui/src/video/decoder.ts).
    const gpu = (() => { try { return readdirSync('/dev/dri').some((n) => n.startsWith('renderD')); } catch { return false; } })();
    assert.equal(first.renderer, gpu ? 'webgl' : '2d', `the renderer for ${gpu ? 'a GPU' : 'software GL'}`);

    // Guest X clients: a clock (keeps frames coming, so replay seeks land close to their
    // target) and xev, which reports button presses with root coordinates.
    await guestSpawn(`exec xterm -geometry 24x2+0+0 -bg black -fg white -e sh -c 'while :; do date +%T.%N; sleep 0.02; done'`);
    await guestSpawn(`exec stdbuf -oL xev -name porthole-xev -geometry ${XEV.w}x${XEV.h}+${XEV.x}+${XEV.y} -event button`, '/tmp/xev.log');

    // The root window is what PROBES read: paint it and watch the canvas follow.
    for (const [color, rgb] of [['#ff0000', [255, 0, 0]], ['#0000ff', [0, 0, 255]], ['#ff0000', [255, 0, 0]]]) {
      await guest(`xsetroot -solid '${color}'`);
      await waitCanvasColor(rgb, `the live canvas to turn ${color} after xsetroot in the guest`);
    }
  }));

  it('takes over and clicks in the guest through the picture', { timeout: STEP_TIMEOUT }, step('takeover', async () => {
    needs('live');
    const wd = w.wd;
    // Where xev's window really is (openbox may adjust the requested position).
    const geo = await waitFor(async () => {
      const out = await guest('xdotool search --name "^porthole-xev$" getwindowgeometry --shell').catch(() => '');
      const v = Object.fromEntries(out.trim().split('\n').filter((l) => l.includes('=')).map((l) => l.split('=')));
      return v.X !== undefined && { x: Number(v.X), y: Number(v.Y), w: Number(v.WIDTH), h: Number(v.HEIGHT) };
    }, { timeout: 20000, message: 'the xev window in the guest' });
    // The picture shows it too: xev's window is white, unlike the red root.
    const inXev = [geo.x + Math.round(geo.w * 0.3), geo.y + Math.round(geo.h * 0.6)];
    await waitFor(async () => {
      const r = await wd.exec(canvasPixels, [inXev]);
      return near(r.px[0], [255, 255, 255]) && r;
    }, { timeout: 20000, message: `the xev window (white) on the live canvas at ${inXev}` });

    // Before takeover the picture ignores the pointer: control stays with the agent.
    assert.match(await wd.exec(() => document.querySelector('[data-testid="control-state"]')?.textContent), /Agent in control/);
    await wd.click(await waitEl(byText, ['button', 'Take control'], 'the Take control button'));
    await waitFor(() => wd.exec(() => /You have control/.test(document.querySelector('[data-testid="control-state"]')?.textContent || '')),
      { timeout: 15000, message: 'the control state to read "You have control"' });
    const control = await agentCall('GET', '/v1/control');
    assert.equal(control.holder, 'human', `agent's control state after Take control: ${JSON.stringify(control)}`);

    // Click at a viewport pixel inside xev's window, and work out the guest pixel the UI maps
    // it to (the same arithmetic as VideoSurface: stream pixels across the canvas's box).
    const target = await wd.exec((gx, gy, sw, sh) => {
      const r = document.querySelector('[data-testid="video-canvas"]').getBoundingClientRect();
      const cx = Math.round(r.left + ((gx + 0.5) * r.width) / sw);
      const cy = Math.round(r.top + ((gy + 0.5) * r.height) / sh);
      return { cx, cy, gx: Math.round(((cx - r.left) * sw) / r.width), gy: Math.round(((cy - r.top) * sh) / r.height), rect: [r.left, r.top, r.width, r.height] };
    }, geo.x + Math.round(geo.w / 2), geo.y + Math.round(geo.h / 2), GUEST.width, GUEST.height);
    assert.ok(target.gx > geo.x && target.gx < geo.x + geo.w && target.gy > geo.y && target.gy < geo.y + geo.h,
      `mapped click ${JSON.stringify(target)} is not inside xev's window ${JSON.stringify(geo)}`);
    const before = await guest('cat /tmp/xev.log');
    assert.ok(!/ButtonPress/.test(before), `xev saw a button press before the click:\n${before}`);
    await wd.pointerClick(target.cx, target.cy);

    const press = await waitFor(async () => {
      const log = await guest('cat /tmp/xev.log');
      const m = /ButtonPress event[\s\S]*?root:\((\d+),(\d+)\)[\s\S]*?button (\d+)/.exec(log);
      return m && { x: Number(m[1]), y: Number(m[2]), button: Number(m[3]), log };
    }, { timeout: 20000, message: 'xev in the guest to report a ButtonPress' });
    assert.equal(press.button, 1, `xev: ${press.log}`);
    assert.ok(Math.abs(press.x - target.gx) <= 1 && Math.abs(press.y - target.gy) <= 1,
      `the press landed at (${press.x},${press.y}); the click maps to (${target.gx},${target.gy}) ${JSON.stringify(target)}\n${press.log}`);
    const loc = await guest('xdotool getmouselocation --shell');
    assert.match(loc, new RegExp(`X=${press.x}\\nY=${press.y}`), `guest pointer: ${loc}`);
    assert.match(await waitFor(() => guest('cat /tmp/xev.log').then((l) => /ButtonRelease/.test(l) && l),
      { timeout: 10000, message: 'the ButtonRelease in xev' }), /ButtonRelease/);

    // The agent recorded the press as human input.
    const evs = await waitFor(async () => {
      const all = await allEvents();
      return all.some((e) => e.kind === 'input' && e.actor === 'human' && !e.data?.move) && all;
    }, { timeout: 10000, message: 'a human input event on the timeline' });
    assert.ok(evs.some((e) => e.kind === 'control' && e.data?.state?.holder === 'human'), 'no control event for the takeover');
    await saveShot('app-e2e-takeover.png');

    await wd.click(await waitEl(byText, ['button', 'Release control'], 'the Release control button'));
    await waitFor(() => wd.exec(() => /Agent in control/.test(document.querySelector('[data-testid="control-state"]')?.textContent || '')),
      { timeout: 15000, message: 'the control state to read "Agent in control" after release' });
    assert.equal((await agentCall('GET', '/v1/control')).holder, 'agent');
  }));

  it('replays the session and seeks to an action from the timeline', { timeout: STEP_TIMEOUT }, step('replay', async () => {
    needs('takeover');
    const wd = w.wd;
    // Two agent actions, each with its own screen behind it, 1.5 s or more apart.
    const plan = [
      { color: '#00c000', rgb: [0, 192, 0], at: [300, 560] },
      { color: '#ff00ff', rgb: [255, 0, 255], at: [520, 640] },
    ];
    for (const p of plan) {
      await guest(`xsetroot -solid '${p.color}'`);
      await waitCanvasColor(p.rgb, `the live canvas to turn ${p.color}`);
      // Reopen the live view: a new viewer makes the agent send a keyframe now; the action
      // comes 1.4 s later, so ~40 frames separate it from the keyframe a seek decodes from.
      await wd.exec(() => { location.hash = '#/machines'; });
      await waitEl(byText, ['h1', 'Machines'], 'the Machines page');
      await wd.exec((n) => { location.hash = `#/live/${n}`; }, NAME);
      await waitCanvasColor(p.rgb, `the reopened live canvas to show ${p.color}`);
      await sleep(1400);
      const r = await agentCall('POST', '/v1/computer', { action: 'left_click', coordinate: p.at });
      assert.equal(r.error, null);
      const ev = (await allEvents()).filter((e) => e.kind === 'action' && e.data?.action === 'left_click').at(-1);
      assert.ok(ev, 'no action event for the left_click');
      assert.deepEqual(ev.data.coordinate, p.at);
      w.actions.push({ ...p, seq: ev.seq, t_ms: ev.t_ms });
      await sleep(1000); // keeps the two markers apart on the timeline (not an assertion)
    }
    assert.ok(w.actions[1].t_ms - w.actions[0].t_ms >= 1500, JSON.stringify(w.actions));
    // The screen changes once more, so the recording goes on past the second action.
    await guest(`xsetroot -solid '#ffffff'`);
    await waitCanvasColor([255, 255, 255], 'the live canvas to turn white');

    // Replay library: sync, open the session, until the recording covers the second action.
    const last = w.actions[1].t_ms;
    let duration = 0;
    await waitFor(async () => {
      await wd.exec(() => { location.hash = '#/replay'; });
      await wd.click(await waitEl(byText, ['button', 'Sync recordings'], 'the Sync recordings button'));
      const toast = await waitFor(() => wd.exec(() => {
        const t = document.body.innerText.match(/Synced \d+ sessions?[^\n]*/);
        return t ? t[0] : null;
      }), { timeout: 60000, message: 'the "Synced ..." toast' });
      assert.match(toast, /Synced [1-9]/, toast);
      const card = await waitEl(() => document.querySelector('[data-testid^="session-"]'), [], 'a session card in the library');
      await wd.click(card);
      const text = await waitFor(() => wd.exec(() => {
        const t = document.querySelector('[data-testid="replay-position"]')?.textContent || '';
        return document.querySelector('[data-testid="timeline"]') && / \/ \d/.test(t) && t;
      }), { timeout: 30000, message: 'the player with its timeline' });
      duration = parseClock(text.split('/')[1]);
      return duration > last + 500;
    }, { timeout: 90000, interval: 1000, message: `a synced recording longer than the second action (${last} ms)` });

    // Frame times of the synced recording, in ms as the app's index reads them.
    const sessionId = await wd.exec(() => location.hash.split('/')[2]);
    // The muxer starts the part's clock at 0; the agent's part event says where it starts.
    const part1 = (await allEvents()).find((e) => e.kind === 'recording' && e.data?.state === 'part' && e.data.part === 1);
    assert.ok(Number.isInteger(part1?.data?.start_t_ms), `the part event names its start: ${JSON.stringify(part1)}`);
    const frames = (await recordedFrameTimes(path.join(w.home, 'recordings', decodeURIComponent(sessionId), 'video-0001.mp4')))
      .map((t) => t + part1.data.start_t_ms);

    // The first picture is up before seeking (the start of the session).
    await waitFor(async () => {
      const r = await wd.exec(canvasPixels, PROBES);
      return !r.missing && r.picture && r;
    }, { timeout: 30000, message: 'the first replay picture' });

    const seekTo = async (a) => {
      const title = `${fmtClock(a.t_ms)} agent: `;
      const marker = await waitEl((t) => [...document.querySelectorAll('.lane-actions .marker')]
        .find((m) => m.title.startsWith(t)) || null, [title], `the timeline marker titled "${title}…"`);
      await wd.click(marker);
      // The picture of that moment: the root colour set just before the action.
      await waitCanvasColor(a.rgb, `the replay canvas to show ${a.color} after seeking to the action at ${a.t_ms} ms`);
      // The position settles on the first frame at or after the action (the clock in the guest
      // keeps frames a few tens of ms apart) and stays there: the player is paused. That
      // frame's time comes from the synced MP4 itself (ffprobe), not from the app.
      const want = frames.find((f) => f + 1 >= a.t_ms);
      assert.ok(want !== undefined && want - a.t_ms < 300,
        `the recording has no frame within 300 ms after the action at ${a.t_ms} ms (next: ${want})`);
      let seen = '';
      await waitFor(async () => {
        seen = await wd.exec(() => document.querySelector('[data-testid="replay-position"]')?.textContent || '');
        return parseClock(seen.split('/')[0]) === want;
      }, { timeout: 10000, message: `the replay position to settle on ${fmtClock(want)}, the first recorded frame at or after the action at ${fmtClock(a.t_ms)}` })
        .catch((e) => { e.message += ` (position reads "${seen}")`; throw e; });
      const playing = await wd.exec(() => document.querySelector('.transport .play')?.textContent.trim());
      assert.equal(playing, 'Play', 'the player started playing after a seek');
      // The event list highlights the last event at or before that position: the action,
      // unless the frame came within the millisecond before it.
      const mark = timeline.filter((e) => e.t_ms <= want).at(-1);
      let row = null;
      await waitFor(async () => {
        row = await wd.exec(() => Number(document.querySelector('.event-row.current')?.dataset.seq ?? NaN));
        return row === mark.seq;
      }, { timeout: 5000, message: `the event list to highlight seq ${mark.seq} (${mark.kind} at ${mark.t_ms} ms)` })
        .catch((e) => { e.message += ` (it highlights seq ${row})`; throw e; });
    };
    const timeline = (await allEvents()).filter((e) => e.kind !== 'terminal')
      .sort((x, y) => x.t_ms - y.t_ms || x.seq - y.seq);
    const [first, second] = w.actions;
    await seekTo(second);
    await saveShot('app-e2e-replay.png');
    await seekTo(first); // backwards too
    const playhead = await wd.exec(() => parseFloat(document.querySelector('.playhead')?.style.left || 'NaN'));
    const expected = (first.t_ms / duration) * 100;
    assert.ok(Math.abs(playhead - expected) < 2, `playhead at ${playhead}%, expected about ${expected.toFixed(1)}%`);
  }));

  // Last: a resize starts a new recording part, which the replay step above does not expect.
  it('fits the guest screen to the window while in control, and gives it back on release', { timeout: STEP_TIMEOUT }, step('fit', async () => {
    needs('live');
    const wd = w.wd;
    await wd.exec((n) => { location.hash = `#/live/${n}`; }, NAME);
    await wd.click(await waitEl(byText, ['button', 'Take control'], 'the Take control button'));
    await waitFor(() => wd.exec(() => /You have control/.test(document.querySelector('[data-testid="control-state"]')?.textContent || '')),
      { timeout: 15000, message: 'the control state to read "You have control"' });
    const fit = await waitEl(byText, ['button', 'Fit to window'], 'the Fit to window toggle');
    await waitFor(() => wd.exec(() => {
      const b = [...document.querySelectorAll('button')].find((x) => x.textContent.trim() === 'Fit to window');
      return b && !b.disabled;
    }), { timeout: 15000, message: 'the Fit to window toggle to be enabled (the sandbox runs Xvnc)' });
    assert.deepEqual(await agentCall('GET', '/v1/display'), { ...GUEST, resizable: true });
    await wd.click(fit);
    // The guest's X screen takes the size of the picture's space, and the canvas draws frames of
    // exactly that size, 1:1 (its box and the guest agree within a pixel or two).
    let seen = null;
    const size = await waitFor(async () => {
      const d = await agentCall('GET', '/v1/display');
      const c = await wd.exec(() => {
        const el = document.querySelector('[data-testid="video-canvas"]');
        const r = el.getBoundingClientRect();
        return { cw: el.width, ch: el.height, bw: r.width, bh: r.height };
      });
      seen = { display: d, canvas: c };
      return (d.width !== GUEST.width || d.height !== GUEST.height) && c.cw === d.width && c.ch === d.height
        && Math.abs(c.bw - d.width) <= 2 && Math.abs(c.bh - d.height) <= 2 && d;
    }, { timeout: 20000, message: 'the guest screen to take the size of the picture, drawn 1:1' })
      .catch((e) => { e.message += ` (last: ${JSON.stringify(seen)})`; throw e; });
    const xsize = await guest('xdpyinfo | grep dimensions');
    assert.match(xsize, new RegExp(`${size.width}x${size.height} pixels`), 'the X server itself reports the size');
    const ev = (await allEvents()).filter((e) => e.kind === 'display').at(-1);
    assert.equal(ev?.actor, 'human', `a human display event: ${JSON.stringify(ev)}`);
    await saveShot('app-e2e-fit.png');

    await wd.click(await waitEl(byText, ['button', 'Release control'], 'the Release control button'));
    await waitFor(async () => {
      const d = await agentCall('GET', '/v1/display');
      return d.width === GUEST.width && d.height === GUEST.height;
    }, { timeout: 15000, message: 'the guest screen to go back to its size on release' });
    await waitFor(() => wd.exec((sw, sh) => {
      const c = document.querySelector('[data-testid="video-canvas"]');
      return c && c.width === sw && c.height === sh;
    }, GUEST.width, GUEST.height), { timeout: 20000, message: 'the live canvas back at the guest size' });

    // The recording now has three parts (1280x800, the fitted size, 1280x800 again); replay
    // plays across them on the session clock: seeking into the fitted stretch shows its size.
    const parts = (await allEvents()).filter((e) => e.kind === 'recording' && e.data?.state === 'part');
    assert.ok(parts.length >= 3, `recording parts: ${JSON.stringify(parts.map((e) => e.data))}`);
    const fitted = parts.find((e) => e.data.width === size.width && e.data.height === size.height);
    assert.ok(fitted, `a part at ${size.width}x${size.height}: ${JSON.stringify(parts.map((e) => e.data))}`);
    await guest(`xsetroot -solid '#0000ff'`); // one more change, so the last part has frames
    await waitCanvasColor([0, 0, 255], 'the live canvas to turn blue');
    await waitFor(async () => {
      await wd.exec(() => { location.hash = '#/replay'; });
      await wd.click(await waitEl(byText, ['button', 'Sync recordings'], 'the Sync recordings button'));
      await waitFor(() => wd.exec(() => /Synced \d+ sessions?/.test(document.body.innerText)), { timeout: 60000, message: 'the "Synced ..." toast' });
      await wd.click(await waitEl(() => document.querySelector('[data-testid^="session-"]'), [], 'a session card in the library'));
      const text = await waitFor(() => wd.exec(() => {
        const t = document.querySelector('[data-testid="replay-position"]')?.textContent || '';
        return / \/ \d/.test(t) && t;
      }), { timeout: 30000, message: 'the player' });
      return parseClock(text.split('/')[1]) > fitted.data.start_t_ms + 1000;
    }, { timeout: 90000, interval: 1000, message: 'a synced recording that goes past the fitted part' });
    const row = await waitEl((seq) => document.querySelector(`.event-row[data-seq="${seq}"]`), [fitted.seq], 'the part event in the replay list');
    // Toasts sit over the list's bottom corner, and the newest rows cannot scroll away from it
    // (the click then landed on a toast: the player stayed in the first part, seen twice in
    // ten runs): dismiss them, then bring the row to the middle.
    await wd.exec(() => document.querySelectorAll('.toasts button[aria-label="Dismiss"]').forEach((b) => b.click()));
    await waitFor(() => wd.exec(() => !document.querySelector('.toasts button[aria-label="Dismiss"]')), { timeout: 10000, message: 'the toasts dismissed' });
    await wd.exec((seq) => document.querySelector(`.event-row[data-seq="${seq}"]`).scrollIntoView({ block: 'center' }), fitted.seq);
    await wd.click(row);
    let drawnAt = null;
    await waitFor(async () => {
      drawnAt = await wd.exec(() => {
        const c = document.querySelector('[data-testid="video-canvas"]');
        return c && { w: c.width, h: c.height, renderer: c.dataset.renderer || null, position: document.querySelector('[data-testid="replay-position"]')?.textContent || '' };
      });
      return drawnAt && drawnAt.w === size.width && drawnAt.h === size.height;
    }, { timeout: 20000, message: `the replay canvas to draw the fitted part at ${size.width}x${size.height}` }).catch((e) => {
      e.message += ` (last seen: ${JSON.stringify(drawnAt)}; the part event at ${fitted.t_ms} ms)`;
      throw e;
    });
    // The header re-renders from the decoder's size report, a frame or so after the canvas.
    let head = '';
    await waitFor(async () => {
      head = await wd.exec(() => document.querySelector('.replay-page .page-head')?.textContent || '');
      return new RegExp(`${size.width}×${size.height}`).test(head);
    }, { timeout: 10000, message: `the header to name the size on screen (${size.width}×${size.height})` }).catch(() => {
      assert.fail(`the header names the size on screen: ${head}`);
    });
  }));

  it('says reconnecting through a 5 s network cut and is back on its own after it', { timeout: STEP_TIMEOUT }, async (t) => {
    needs('live');
    if (w.netIndex === null) return t.skip('the machine has no veth to cut (not root: user-mode network)');
    const wd = w.wd;
    const link = `phh${w.netIndex}`;
    await wd.exec((n) => { location.hash = `#/live/${n}`; }, NAME);
    await waitFor(async () => { const r = await wd.exec(canvasPixels, PROBES); return !r.missing && r.picture; }, { timeout: 30000, message: 'the live view showing the guest before the cut' });
    const cut = Date.now();
    await run('ip', ['link', 'set', link, 'down']);
    try {
      await waitEl(() => document.querySelector('[data-testid="reconnecting"]'), [], 'the view saying it is reconnecting while the link is down', 20000);
      await saveShot('app-e2e-reconnecting.png');
      await sleep(Math.max(0, 5000 - (Date.now() - cut)));
    } finally {
      await run('ip', ['link', 'set', link, 'up']);
    }
    const up = Date.now();
    // A change made after the link returned reaches the same view, without reopening it.
    await guest(`xsetroot -solid '#00ffff'`);
    await waitCanvasColor([0, 255, 255], 'the live canvas to show the guest again after the link returned', 60000);
    console.log(`network cut: link down ${up - cut} ms; the picture back ${Date.now() - up} ms after the link returned`);
    await waitFor(() => wd.exec(() => !document.querySelector('[data-testid="reconnecting"]')), { timeout: 10000, message: 'the reconnecting notice to clear' });
    assert.equal(await wd.exec(() => location.hash), `#/live/${NAME}`);
  });
});
