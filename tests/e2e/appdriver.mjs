// The real desktop app (`porthole-app`, Tauri on WebKitGTK) under WebDriver, shared by the app
// end-to-end test (app.test.mjs) and the app benchmark (tests/bench/app.mjs): tauri-driver in
// front of Debian's WebKitWebDriver, on its own Xvfb, under its own D-Bus session, and a plain
// HTTP W3C WebDriver client (fetch; no WebdriverIO).

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { freePort, killGroup, spawnGroup, startXvfb, tail, waitFor } from './harness.mjs';

export const WEBKIT_WEBDRIVER = '/usr/bin/WebKitWebDriver';

export function which(cmd) {
  for (const dir of (process.env.PATH || '').split(':')) {
    if (dir && existsSync(path.join(dir, cmd))) return path.join(dir, cmd);
  }
  return null;
}

/** What is missing to drive the app (tools, and the given binaries), as readable lines. */
export function appPrereqs(bins = []) {
  const missing = [];
  if (!which('tauri-driver')) missing.push('tauri-driver (cargo install tauri-driver --locked; packaging/install-deps.sh does it)');
  if (!existsSync(WEBKIT_WEBDRIVER)) missing.push(`${WEBKIT_WEBDRIVER} (apt-get install webkit2gtk-driver)`);
  if (!which('dbus-run-session')) missing.push('dbus-run-session (apt-get install dbus)');
  for (const b of bins) if (!existsSync(b)) missing.push(`${b} (cargo build --workspace)`);
  return missing;
}

// ---------------------------------------------------------------------------------------------
// A minimal W3C WebDriver client

export const ELEMENT = 'element-6066-11e4-a52e-4f735466cecf';

export class WebDriver {
  constructor(base) {
    this.base = base;
    this.sid = null;
  }

  async cmd(method, p, body) {
    const url = this.base + (p.startsWith('/session/') || p === '/session' || p === '/status' ? p : `/session/${this.sid}${p}`);
    const r = await fetch(url, {
      method,
      headers: { 'content-type': 'application/json; charset=utf-8' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(90000),
    });
    const text = await r.text();
    let j;
    try { j = JSON.parse(text); } catch { throw new Error(`WebDriver ${method} ${p}: HTTP ${r.status}, not JSON: ${text.slice(0, 300)}`); }
    if (!r.ok || (j.value && j.value.error)) {
      const v = j.value || {};
      throw new Error(`WebDriver ${method} ${p}: HTTP ${r.status} ${v.error}: ${v.message}`);
    }
    return j.value;
  }

  async start(application) {
    // No browserName: tauri-driver fills in what WebKitWebDriver needs from tauri:options.
    const v = await this.cmd('POST', '/session', {
      capabilities: { alwaysMatch: { 'tauri:options': { application } } },
    });
    this.sid = v.sessionId;
    return v;
  }

  async quit() {
    if (!this.sid) return;
    const sid = this.sid;
    this.sid = null;
    await this.cmd('DELETE', `/session/${sid}`);
  }

  /** Runs `fn` (its source) in the page with JSON/element arguments; returns its value. */
  exec(fn, ...args) {
    return this.cmd('POST', '/execute/sync', { script: `return (${fn}).apply(null, arguments);`, args });
  }

  /** Like exec, for an async function: resolves with its result, rejects with its error. */
  async execAsync(fn, ...args) {
    const script = `const done = arguments[arguments.length - 1];
      Promise.resolve().then(() => (${fn}).apply(null, Array.prototype.slice.call(arguments, 0, -1)))
        .then((v) => done({ ok: v === undefined ? null : v }), (e) => done({ err: String(e && e.stack || e) }));`;
    const r = await this.cmd('POST', '/execute/async', { script, args });
    if (r && 'err' in r) throw new Error(`in page: ${r.err}`);
    return r ? r.ok : r;
  }

  /** Clicks an element; when something lies over it (a toast in a corner), brings it to the
   * middle of its scroll box and tries again for a few seconds (toasts fade on their own). */
  async click(el) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.cmd('POST', `/element/${el[ELEMENT]}/click`, {});
      } catch (e) {
        if (!/click intercepted/.test(e.message) || attempt >= 8) throw e;
        await this.exec((x) => x.scrollIntoView({ block: 'center' }), el).catch(() => {});
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  type(el, text) {
    return this.cmd('POST', `/element/${el[ELEMENT]}/value`, { text });
  }

  /** A real pointer click at viewport pixel (x, y): move, press, release. */
  async pointerClick(x, y) {
    await this.cmd('POST', '/actions', {
      actions: [{
        type: 'pointer', id: 'mouse', parameters: { pointerType: 'mouse' },
        actions: [
          { type: 'pointerMove', duration: 0, origin: 'viewport', x, y },
          { type: 'pause', duration: 50 },
          { type: 'pointerDown', button: 0 },
          { type: 'pause', duration: 50 },
          { type: 'pointerUp', button: 0 },
        ],
      }],
    });
    await this.cmd('DELETE', '/actions');
  }

  async screenshot() {
    return Buffer.from(await this.cmd('GET', '/screenshot'), 'base64');
  }
}

// ---------------------------------------------------------------------------------------------
// The app

/**
 * Starts Xvfb (width x height), then `dbus-run-session -- tauri-driver` on it, and opens a
 * WebDriver session on `app`, which starts the app. The app inherits `env` (give it
 * PORTHOLE_HOME, PORTHOLE_AGENT_BIN) through tauri-driver and WebKitWebDriver; NO_AT_BRIDGE=1
 * keeps GTK from looking for an accessibility bus. Returns { xvfb, driver, wd }; on failure
 * everything it started is stopped again. The caller stops them: wd.quit(), killGroup(driver),
 * xvfb.stop().
 */
export async function startApp({ app, env, log, xvfbLog, width = 1440, height = 900 }) {
  const xvfb = await startXvfb({ width, height, log: xvfbLog });
  let driver;
  try {
    const port = await freePort();
    const nativePort = await freePort();
    driver = spawnGroup('dbus-run-session', [
      '--', 'tauri-driver', '--port', String(port), '--native-port', String(nativePort),
      '--native-driver', WEBKIT_WEBDRIVER,
    ], {
      env: { ...env, DISPLAY: xvfb.display, NO_AT_BRIDGE: '1', RUST_BACKTRACE: '1' },
      log,
    });
    const wd = new WebDriver(`http://127.0.0.1:${port}`);
    await waitFor(async () => {
      if (driver.exitInfo) throw new Error(`tauri-driver exited: ${JSON.stringify(driver.exitInfo)}\n${tail(log)}`);
      return (await fetch(`${wd.base}/status`, { signal: AbortSignal.timeout(2000) })).ok;
    }, { timeout: 20000, message: 'tauri-driver to answer /status' }).catch((e) => {
      throw new Error(`${e.message}\n${tail(log)}`);
    });
    const caps = await wd.start(app);
    if (!wd.sid) throw new Error(`no session id in ${JSON.stringify(caps)}`);
    return { xvfb, driver, wd };
  } catch (e) {
    await killGroup(driver);
    await xvfb.stop();
    throw e;
  }
}

/** Live processes (not this one) whose command line or environment contains `needle`. */
export function procsMentioning(needle) {
  const out = [];
  for (const d of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    if (Number(d) === process.pid) continue;
    let hit = false;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
      if (state === 'Z' || state === 'X') continue;
      hit = readFileSync(`/proc/${d}/cmdline`, 'utf8').includes(needle)
        || readFileSync(`/proc/${d}/environ`, 'utf8').includes(needle);
    } catch { continue; }
    if (hit) out.push(Number(d));
  }
  return out;
}
