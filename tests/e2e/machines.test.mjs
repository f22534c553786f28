// Machines end to end through the `porthole` CLI: local sandboxes (loopback and netns), bad
// input and faults, a sandbox that dies, a remote host simulated in a network namespace,
// recording sync (incremental, resumable after a network cut) and evidence export, and the
// warm pool.
//
// Every test has its own PORTHOLE_HOME (a temp dir) and PORTHOLE_AGENT_BIN; nothing here builds
// the binaries (they are waited for when briefly missing during a rebuild). Count/condition
// polling with generous timeouts; no wall-clock assertions. Needs root (netns mode, `ip netns`).
//
// On failure the message ends with the tails of the machines' logs
// (PORTHOLE_HOME/machines/NAME/logs/*.log). PORTHOLE_E2E_KEEP=1 keeps the temp dirs.

import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  chownSync, copyFileSync, existsSync, linkSync, lstatSync, mkdirSync, readFileSync, readdirSync, rmSync,
  writeFileSync,
} from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  agentBin, spawnGroup, killGroup, tmpDir, tail, freePort, waitFor, sleep,
  launchChromium, openViewer, viewerStats, startXvfb, startAgent, insecureHttpsStatus,
} from './harness.mjs';

const TARGET = process.env.CARGO_TARGET_DIR || '/work/target';
const CLI = process.env.PORTHOLE_CLI_BIN || path.join(TARGET, 'debug', 'porthole');
const AGENT = agentBin();
const KEEP = process.env.PORTHOLE_E2E_KEEP === '1';
const TEST_TIMEOUT = 12 * 60 * 1000;

// ---------------------------------------------------------------------------------------------
// Running things

/** Waits (up to 10 min) for a binary that another engineer may be rebuilding right now. */
async function waitForBinary(p) {
  await waitFor(() => existsSync(p), {
    timeout: 10 * 60 * 1000, interval: 1000,
    message: `${p} to exist (build it: cargo build -p porthole-cli -p porthole-agent)`,
  });
}

function execOnce(cmd, args, { env = process.env, timeout = 180000 } = {}) {
  return new Promise((resolve) => {
    execFile(cmd, args, { env, timeout, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      resolve({
        err,
        code: err ? (typeof err.code === 'number' ? err.code : null) : 0,
        spawnError: err && typeof err.code === 'string' ? err.code : null,
        signal: err ? err.signal ?? null : null,
        stdout: String(stdout ?? ''),
        stderr: String(stderr ?? ''),
      });
    });
  });
}

/** Runs a command, retrying while its binary is missing or being replaced. */
async function execRetry(cmd, args, opts) {
  for (let i = 0; ; i++) {
    const r = await execOnce(cmd, args, opts);
    if (r.spawnError && ['ENOENT', 'ETXTBSY', 'EACCES'].includes(r.spawnError) && i < 60) {
      if (cmd.startsWith('/')) await waitForBinary(cmd);
      await sleep(2000);
      continue;
    }
    return r;
  }
}

function fmtRun(cmdline, r) {
  return `$ ${cmdline}\nexit ${r.code}${r.signal ? ` (signal ${r.signal})` : ''}` +
    `${r.spawnError ? ` (spawn error ${r.spawnError})` : ''}\nstdout: ${r.stdout.trim()}\nstderr: ${r.stderr.trim()}`;
}

/** Runs a system tool (ip, ffprobe); throws with its output unless `allowFail`. */
async function sh(cmd, args, { allowFail = false, timeout = 60000 } = {}) {
  const r = await execOnce(cmd, args, { timeout });
  if (!allowFail && r.code !== 0) throw new Error(`command failed:\n${fmtRun(`${cmd} ${args.join(' ')}`, r)}`);
  return r;
}

// ---------------------------------------------------------------------------------------------
// A test's world: its PORTHOLE_HOME, the CLI bound to it, cleanup and logs

function quote(a) {
  return /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`;
}

function makeWorld(label) {
  const home = tmpDir(`porthole-e2e-machines-${label}-`);
  const w = {
    home,
    netIndexes: new Set(), // net_index values our machines used
    teardowns: [], // extra cleanup (a test's own namespace, processes)
    env(extra = {}) {
      const env = { ...process.env, PORTHOLE_HOME: home, PORTHOLE_AGENT_BIN: AGENT, RUST_BACKTRACE: '1', ...extra };
      delete env.RUST_LOG;
      return env;
    },
    /** `porthole ARGS` with this world's state dir: {code, stdout, stderr, cmdline}. */
    async ph(args, { env = {}, timeout = 180000 } = {}) {
      await waitForBinary(CLI);
      if (!env.PORTHOLE_AGENT_BIN) await waitForBinary(AGENT);
      const r = await execRetry(CLI, args, { env: w.env(env), timeout });
      const envText = Object.entries(env).map(([k, v]) => `${k}=${quote(v)} `).join('');
      r.cmdline = `PORTHOLE_HOME=${home} ${envText}porthole ${args.map(quote).join(' ')}`;
      return r;
    },
    /** Runs and expects exit 0; parses stdout as JSON when `--json` is among the args. */
    async ok(args, opts) {
      const r = await w.ph(args, opts);
      assert.equal(r.code, 0, `expected exit 0:\n${fmtRun(r.cmdline, r)}`);
      if (!args.includes('--json')) return r.stdout;
      try {
        return JSON.parse(r.stdout);
      } catch (e) {
        throw new Error(`stdout is not JSON (${e.message}):\n${fmtRun(r.cmdline, r)}`);
      }
    },
    async list() {
      const l = await w.ok(['machine', 'list', '--json']);
      assert.ok(Array.isArray(l), `machine list --json is not an array: ${JSON.stringify(l)}`);
      for (const m of l) if (m.spec && Number.isInteger(m.spec.net_index)) w.netIndexes.add(m.spec.net_index);
      return l;
    },
    async create(args) {
      const m = await w.ok(['machine', 'create', ...args, '--json']);
      if (m.spec && Number.isInteger(m.spec.net_index)) w.netIndexes.add(m.spec.net_index);
      return m;
    },
    async token(name) {
      const t = (await w.ok(['machine', 'token', name])).trim();
      assert.match(t, /^\S{16,}$/, `porthole machine token ${name} printed ${JSON.stringify(t)}`);
      return t;
    },
    /** Tails of every log under machines/NAME/logs. */
    logs() {
      const dir = path.join(home, 'machines');
      let out = '';
      let names = [];
      try { names = readdirSync(dir); } catch { return ''; }
      for (const n of names) {
        let files = [];
        try { files = readdirSync(path.join(dir, n, 'logs')); } catch { continue; }
        for (const f of files) {
          const p = path.join(dir, n, 'logs', f);
          out += `\n--- ${p} ---\n${tail(p, 25)}`;
        }
      }
      return out;
    },
    async cleanup() {
      for (const fn of w.teardowns.reverse()) {
        try { await fn(); } catch (e) { console.error(`teardown: ${e.message}`); }
      }
      // Destroy whatever is still listed, then sweep (by pid) anything that still names our
      // state dir, and any of our machines' namespaces.
      try {
        const r = await w.ph(['machine', 'list', '--json']);
        const l = r.code === 0 ? JSON.parse(r.stdout) : [];
        for (const m of l) {
          if (m.spec && Number.isInteger(m.spec.net_index)) w.netIndexes.add(m.spec.net_index);
          await w.ph(['machine', 'destroy', m.name]);
        }
      } catch (e) { console.error(`cleanup: ${e.message}`); }
      for (const p of procsMentioning(home)) {
        try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ }
      }
      const ns = await netnsList();
      for (const idx of w.netIndexes) {
        if (ns.includes(`porthole-${idx}`)) await sh('ip', ['netns', 'del', `porthole-${idx}`], { allowFail: true });
      }
      if (!KEEP) rmSync(home, { recursive: true, force: true });
    },
  };
  return w;
}

/** A test body with its own world; failures carry the machines' log tails. */
function worldTest(label, fn) {
  return async (t) => {
    const w = makeWorld(label);
    try {
      await fn(w, t);
    } catch (e) {
      const more = `\n(PORTHOLE_HOME=${w.home})${w.logs()}`;
      if (e && typeof e === 'object') {
        try { e.message = `${e.message}${more}`; } catch { /* frozen */ }
        if (e.stack) e.stack = `${e.stack}${more}`;
      }
      throw e;
    } finally {
      await w.cleanup();
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Processes, namespaces, files

/**
 * Live (non-zombie) processes whose command line, or environment, contains `needle`. The
 * environment catches processes inside a sandbox (Xvfb, openbox) that inherit PORTHOLE_HOME
 * without naming it on their command line, and the background `porthole pool fill`.
 */
function procsMentioning(needle) {
  const out = [];
  let pids = [];
  try { pids = readdirSync('/proc').filter((d) => /^\d+$/.test(d)); } catch { return out; }
  for (const d of pids) {
    const pid = Number(d);
    if (pid === process.pid) continue;
    let cmd, stat;
    try {
      cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8');
      stat = readFileSync(`/proc/${d}/stat`, 'utf8');
    } catch { continue; }
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    if (state === 'Z' || state === 'X') continue;
    let where = null;
    if (cmd.includes(needle)) where = 'cmdline';
    else {
      try { if (readFileSync(`/proc/${d}/environ`, 'utf8').includes(needle)) where = 'environ'; } catch { /* gone */ }
    }
    if (where) out.push({ pid, where, cmd: cmd.split('\0').join(' ').trim() });
  }
  return out;
}

async function assertNoProcesses(w, what) {
  let last = [];
  try {
    await waitFor(() => { last = procsMentioning(w.home); return last.length === 0; }, { timeout: 20000, interval: 250 });
  } catch {
    assert.fail(`${what}: processes still mention PORTHOLE_HOME ${w.home}:\n` +
      last.map((p) => `  pid ${p.pid} (${p.where}): ${p.cmd}`).join('\n'));
  }
}

async function netnsList() {
  const r = await execOnce('ip', ['netns', 'list']);
  return r.stdout.split('\n').map((l) => l.trim().split(/\s+/)[0]).filter(Boolean);
}

async function linkExists(name) {
  return (await execOnce('ip', ['link', 'show', 'dev', name])).code === 0;
}

/** No `porthole-*` namespace beyond those that existed before, and none of our indexes. */
async function assertNoNewNamespaces(w, nsBefore, what) {
  const after = await netnsList();
  const leftover = after.filter((n) => n.startsWith('porthole-') && !nsBefore.includes(n));
  assert.deepEqual(leftover, [], `${what}: network namespaces left behind: ${leftover.join(', ')} ` +
    `(ip netns list before: [${nsBefore.join(', ')}], after: [${after.join(', ')}])`);
  for (const idx of w.netIndexes) {
    assert.ok(!after.includes(`porthole-${idx}`), `${what}: namespace porthole-${idx} (one of ours) remains`);
    assert.ok(!(await linkExists(`phh${idx}`)), `${what}: host veth phh${idx} (one of ours) remains`);
  }
}

function machineDirEntries(w) {
  try { return readdirSync(path.join(w.home, 'machines')); } catch { return []; }
}

function isPrefix(small, big) {
  return small.length <= big.length && big.subarray(0, small.length).equals(small);
}

function firstDifference(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

// ---------------------------------------------------------------------------------------------
// The agent over HTTP

/**
 * One HTTP request on a fresh connection (no keep-alive pool: a pooled connection opened while
 * a machine was stopped or cut off could otherwise be reused after it is back).
 */
function httpRequest(url, { method = 'GET', headers = {}, body, timeout = 60000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent: false, timeout }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`timed out after ${timeout} ms: ${method} ${url}`)));
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

async function agentApi(url, token, p, { method = 'GET', body, timeout = 60000 } = {}) {
  const headers = { Connection: 'close' };
  if (token) headers.Authorization = `Bearer ${token}`;
  let data;
  if (body !== undefined) {
    data = JSON.stringify(body);
    headers['Content-Type'] = 'application/json';
    headers['Content-Length'] = Buffer.byteLength(data);
  }
  const res = await httpRequest(`${url}${p}`, { method, headers, body: data, timeout });
  const text = res.body.toString('utf8');
  let json;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text };
}

async function agentOk(url, token, p, opts = {}) {
  const r = await agentApi(url, token, p, opts);
  assert.ok(r.status >= 200 && r.status < 300,
    `${opts.method || 'GET'} ${url}${p}${opts.body !== undefined ? ` ${JSON.stringify(opts.body)}` : ''} → HTTP ${r.status}: ${r.text}`);
  return r.json;
}

/**
 * Whether a porthole agent answers at `url`: GET /v1/health is 200 with a health body. (Any
 * other answer does not count: where a route is gone, packets may reach whatever the host's
 * default route leads to.)
 */
async function agentAnswers(url) {
  try {
    const r = await agentApi(url, null, '/v1/health', { timeout: 3000 });
    return r.status === 200 && !!r.json && (r.json.status === 'ok' || r.json.status === 'degraded');
  } catch {
    return false;
  }
}

const computer = (url, token, action) => agentOk(url, token, '/v1/computer', { method: 'POST', body: action });
const execIn = (url, token, command) => agentOk(url, token, '/v1/exec', { method: 'POST', body: { command } });

/** A TCP listener on this host that records who connected. */
async function hostListener(host) {
  const conns = [];
  const srv = net.createServer((s) => { conns.push(`${s.remoteAddress}:${s.remotePort}`); s.destroy(); });
  await new Promise((resolve, reject) => { srv.once('error', reject); srv.listen(0, host, resolve); });
  return { port: srv.address().port, conns, close: () => new Promise((r) => srv.close(() => r())) };
}

/** Whether this host opens a TCP connection to host:port within `ms`. */
function hostReaches(host, port, ms = 5000) {
  return new Promise((resolve) => {
    const s = net.connect({ host, port, timeout: ms });
    const done = (ok) => { s.destroy(); resolve(ok); };
    s.once('connect', () => done(true));
    s.once('timeout', () => done(false));
    s.once('error', () => done(false));
  });
}

/** From inside a VM, through its agent's exec: which of `targets` ([host, port]) it can open. */
async function guestReaches(url, token, targets) {
  const script = targets.map(([h, p]) =>
    `if timeout 5 bash -c 'exec 3<>/dev/tcp/${h}/${p}' 2>/dev/null; then echo "${h} ${p} open"; else echo "${h} ${p} closed"; fi`).join('\n');
  const r = await execIn(url, token, script);
  assert.equal(r.exit_code, 0, JSON.stringify(r));
  return Object.fromEntries(r.stdout.trim().split('\n').map((l) => {
    const [h, p, st] = l.split(' ');
    return [`${h}:${p}`, st];
  }));
}

/**
 * The VM reaches nothing of this host but what the host opened to it: listeners on 127.0.0.1
 * and on every address (through QEMU's user-net gateway 10.0.2.2, which slirp maps to the
 * host's loopback, the tap's host side, every host address) stay unreached, the cloud metadata
 * address too; the agent still answers, and outbound traffic still flows when this host has it.
 */
async function assertVmOffTheHost(t, m, token, label) {
  const lo = await hostListener('127.0.0.1');
  const all = await hostListener('0.0.0.0');
  try {
    const hostIps = Object.values(os.networkInterfaces()).flat()
      .filter((a) => a.family === 'IPv4' && !a.internal).map((a) => a.address);
    // 10.216.0.2: slirp4netns's gateway (the host's loopback, unless disabled) for an ordinary
    // user's VM.
    const targets = [['10.0.2.2', lo.port], ['10.0.2.2', all.port], ['10.0.2.4', lo.port], ['10.216.0.2', lo.port],
      ['169.254.169.254', 80], ...hostIps.map((a) => [a, all.port])];
    if (m.spec.tap_index) targets.push([`10.215.${m.spec.tap_index}.1`, all.port]);
    // The probes are sound: this host itself reaches both listeners on those addresses.
    assert.ok(await hostReaches('127.0.0.1', lo.port), `${label}: the host cannot reach its own loopback listener`);
    for (const a of hostIps) assert.ok(await hostReaches(a, all.port), `${label}: the host cannot reach ${a}:${all.port}`);
    lo.conns.length = 0; all.conns.length = 0;
    const seen = await guestReaches(m.agent_url, token, targets);
    t.diagnostic(`${label} from the guest: ${JSON.stringify(seen)}`);
    for (const [h, p] of targets) {
      assert.equal(seen[`${h}:${p}`], 'closed', `${label}: the guest opened ${h}:${p} on this host: ${JSON.stringify(seen)}`);
    }
    assert.deepEqual([...lo.conns, ...all.conns], [], `${label}: the host's listeners saw the guest`);
    // Still reachable the way Porthole reaches it.
    assert.ok(await agentAnswers(m.agent_url), `${label}: the agent stopped answering`);
    if (await hostReaches('deb.debian.org', 80)) {
      const out = await guestReaches(m.agent_url, token, [['deb.debian.org', 80]]);
      assert.equal(out['deb.debian.org:80'], 'open', `${label}: outbound traffic is cut too: ${JSON.stringify(out)}`);
    } else {
      t.diagnostic(`${label}: this host has no outbound HTTP; outbound from the guest not checked`);
    }
  } finally {
    await lo.close();
    await all.close();
  }
}

async function doActions(url, token, actions, pauseMs = 500) {
  for (const a of actions) {
    await computer(url, token, a);
    await sleep(pauseMs); // spread the actions over a few seconds of recording
  }
}

function assertMachineShape(m, { name, provider = 'local', status = 'running' }) {
  assert.equal(m.name, name, `name: ${JSON.stringify(m)}`);
  assert.equal(m.provider, provider, `provider: ${JSON.stringify(m)}`);
  assert.equal(m.status, status, `status: ${JSON.stringify(m)}`);
  assert.equal(typeof m.agent_url, 'string', `agent_url: ${JSON.stringify(m)}`);
  assert.match(m.agent_url, /^https?:\/\/[^/\s]+:\d+$/, `agent_url must be http[s]://host:port without a trailing slash: ${m.agent_url}`);
}

/** Expects a failure: non-zero exit, one line on stderr matching `re`, no panic. */
function assertOneLineError(r, re, what) {
  const detail = fmtRun(r.cmdline, r);
  assert.ok(r.code !== 0 && r.code !== null, `${what}: expected a non-zero exit:\n${detail}`);
  assert.ok(!/panicked at|stack backtrace/.test(r.stderr), `${what}: the CLI panicked:\n${detail}`);
  const msg = r.stderr.trim();
  assert.ok(msg.length > 0, `${what}: no message on stderr:\n${detail}`);
  const lines = msg.split('\n');
  assert.equal(lines.length, 1, `${what}: expected a one-line message on stderr, got ${lines.length} lines:\n${detail}`);
  assert.match(msg, re, `${what}: the message does not name the problem (${re}):\n${detail}`);
}

// ---------------------------------------------------------------------------------------------

describe('porthole machines (CLI end to end)', { timeout: 90 * 60 * 1000 }, () => {
  before(async () => {
    assert.equal(process.getuid(), 0, 'these tests need root (netns mode, ip netns)');
    await waitForBinary(CLI);
    await waitForBinary(AGENT);
  });

  // 1 ----------------------------------------------------------------------------------------
  for (const mode of ['loopback', 'netns']) {
    it(`1. local sandbox (--network ${mode}): create, list, token, health, actions, live frames, ` +
      'snapshot → new machine, stop/start, destroy; nothing left', { timeout: TEST_TIMEOUT },
    worldTest(`1-${mode}`, async (w, t) => {
      const nsBefore = await netnsList();

      const m1 = await w.create(['--name', 'm1', '--network', mode]);
      assertMachineShape(m1, { name: 'm1' });
      if (mode === 'netns') {
        assert.ok(Number.isInteger(m1.spec?.net_index), `spec.net_index: ${JSON.stringify(m1)}`);
        assert.match(m1.agent_url, new RegExp(`^http://10\\.213\\.${m1.spec.net_index}\\.2:\\d+$`), m1.agent_url);
      } else {
        assert.match(m1.agent_url, /^http:\/\/127\.0\.0\.1:\d+$/, m1.agent_url);
      }

      const listed = (await w.list()).find((m) => m.name === 'm1');
      assert.ok(listed, 'machine list --json does not show m1');
      assert.equal(listed.status, 'running');
      assert.equal(listed.provider, 'local');
      assert.equal(listed.agent_url, m1.agent_url);

      // Resource limits: as root on this kind of host, a cgroup with the defaults holds the
      // sandbox's processes (the agent among them).
      assert.equal(m1.spec?.limits?.applied, true, `limits: ${JSON.stringify(m1.spec?.limits)}`);
      assert.equal(m1.spec.limits.memory_max, 4096 * 1024 * 1024);
      const cgPaths = m1.spec.limits.paths || [m1.spec.limits.path];
      const memCg = cgPaths.find((p) => p.includes('/memory/')) || cgPaths[0];
      const inCg = readFileSync(path.join(memCg, 'cgroup.procs'), 'utf8').trim().split('\n').filter(Boolean).map(Number);
      assert.ok(inCg.some((pid) => { try { return /porthole-agent/.test(readFileSync(`/proc/${pid}/cmdline`, 'utf8')); } catch { return false; } }),
        `the agent is not in ${memCg}: ${inCg.join(',')}`);

      const tok1 = await w.token('m1');
      t.diagnostic(`m1: ${m1.agent_url} pid ${m1.pid} spec ${JSON.stringify(m1.spec)}`);
      const url1 = m1.agent_url;

      const health = await agentOk(url1, null, '/v1/health');
      assert.equal(health.status, 'ok', `health: ${JSON.stringify(health)}`);
      assert.equal((await agentApi(url1, null, '/v1/control')).status, 401, 'no token must be 401');
      await agentOk(url1, tok1, '/v1/control');

      await computer(url1, tok1, { action: 'mouse_move', coordinate: [100, 120] });
      const pos = await computer(url1, tok1, { action: 'cursor_position' });
      assert.match(String(pos.output), /X=100,\s*Y=120/, `cursor_position: ${JSON.stringify(pos)}`);

      // A frame through the agent's own viewer page in Chromium on the host (in netns mode it
      // reaches 10.213.N.2 through the veth).
      const browser = await launchChromium();
      try {
        const page = await openViewer(browser, { url: url1, token: tok1 });
        let st;
        try {
          await waitFor(async () => { st = await viewerStats(page); return st.framesDecoded > 0; },
            { timeout: 60000, interval: 250, message: 'framesDecoded > 0' });
        } catch (e) {
          throw new Error(`${e.message}; stats ${JSON.stringify(st)}\n${page.logLines.slice(-20).join('\n')}`);
        }
        t.diagnostic(`viewer stats: ${JSON.stringify(st)}`);
        await page.evaluate(() => window.porthole.disconnect()).catch(() => {});
      } finally {
        await browser.close().catch(() => {});
      }

      const wr = await execIn(url1, tok1, 'echo hi > ~/marker');
      assert.equal(wr.exit_code, 0, `exec echo hi > ~/marker: ${JSON.stringify(wr)}`);

      const snap = await w.ok(['machine', 'snapshot', 'm1', '--name', 's1', '--json']);
      assert.equal(snap.name, 's1', `snapshot: ${JSON.stringify(snap)}`);

      const m2 = await w.create(['--name', 'm2', '--from-snapshot', 's1', '--network', mode]);
      assertMachineShape(m2, { name: 'm2' });
      assert.notEqual(m2.agent_url, m1.agent_url);
      let tok2 = await w.token('m2');
      const cat = await execIn(m2.agent_url, tok2, 'cat ~/marker');
      assert.equal(cat.exit_code, 0, `cat ~/marker on m2: ${JSON.stringify(cat)}`);
      assert.equal(cat.stdout.trim(), 'hi', `cat ~/marker on m2: ${JSON.stringify(cat)}`);

      const stopped = await w.ok(['machine', 'stop', 'm2', '--json']);
      assert.equal(stopped.status, 'stopped', `machine stop: ${JSON.stringify(stopped)}`);
      assert.equal((await w.list()).find((m) => m.name === 'm2')?.status, 'stopped');
      await waitFor(async () => !(await agentAnswers(m2.agent_url)),
        { timeout: 20000, message: `m2's agent (${m2.agent_url}) to stop answering after machine stop` });
      assert.equal((await w.list()).find((m) => m.name === 'm1')?.status, 'running', 'stopping m2 touched m1');

      const started = await w.ok(['machine', 'start', 'm2', '--json']);
      assertMachineShape(started, { name: 'm2' });
      assert.ok(await agentAnswers(started.agent_url), `m2 answers after machine start (${started.agent_url})`);
      tok2 = await w.token('m2');
      const cat2 = await execIn(started.agent_url, tok2, 'cat ~/marker');
      assert.equal(cat2.stdout.trim(), 'hi', `marker after restart: ${JSON.stringify(cat2)}`);
      assert.equal((await w.list()).find((m) => m.name === 'm2')?.status, 'running');

      // The process scan sees the sandboxes while they run (so its emptiness below means something).
      const running = procsMentioning(w.home);
      // Each sandbox's supervisor names its machine directory (the sandbox itself names no host path).
      assert.ok(running.some((p) => p.where === 'cmdline') && running.some((p) => /supervise\.sh/.test(p.cmd)),
        `the process scan does not see the running sandboxes: ${JSON.stringify(running)}`);
      t.diagnostic(`processes naming PORTHOLE_HOME while m1, m2 run: ${running.filter((p) => p.where === 'cmdline').length} by cmdline, ${running.filter((p) => p.where === 'environ').length} more by environment`);

      await w.ok(['machine', 'destroy', 'm1']);
      await w.ok(['machine', 'destroy', 'm2']);

      assert.deepEqual(await w.list(), [], 'machine list after destroying both');
      await assertNoProcesses(w, 'after destroying m1 and m2');
      await assertNoNewNamespaces(w, nsBefore, 'after destroying m1 and m2');
      for (const n of ['m1', 'm2']) {
        assert.ok(!existsSync(path.join(w.home, 'machines', n)), `machines/${n} still exists`);
      }
      for (const p of cgPaths) assert.ok(!existsSync(p), `cgroup ${p} left behind`);
      assert.deepEqual(machineDirEntries(w), [], 'machines/ is not empty');
    }));
  }

  // 2 ----------------------------------------------------------------------------------------
  it('2. bad input and faults: non-zero exit, one line naming the problem, nothing left behind',
    { timeout: TEST_TIMEOUT }, worldTest('2', async (w, t) => {
      const nsBefore = await netnsList();
      const failures = [];
      const check = async (what, args, re, { env, keep = [] } = {}) => {
        const r = await w.ph(args, { env });
        t.diagnostic(`${what}: exit ${r.code}, stderr: ${r.stderr.trim().replace(/\n/g, ' ⏎ ')}`);
        try {
          assertOneLineError(r, re, what);
        } catch (e) {
          failures.push(e.message);
        }
        // Nothing left behind, whatever the message.
        const names = (await w.list()).map((m) => m.name).sort();
        assert.deepEqual(names, [...keep].sort(), `${what}: machine list after the failure:\n${fmtRun(r.cmdline, r)}`);
        assert.deepEqual(machineDirEntries(w).sort(), [...keep].sort(), `${what}: machines/ entries after the failure`);
        let keys = [];
        try { keys = readdirSync(path.join(w.home, 'keys')); } catch { /* none */ }
        // Each machine has two tokens: the operator's and the coding agent's.
        assert.deepEqual(keys.sort(), keep.flatMap((k) => [`${k}.agent-token`, `${k}.token`]).sort(), `${what}: keys/ after the failure`);
        if (keep.length === 0) await assertNoProcesses(w, what);
        await assertNoNewNamespaces(w, nsBefore, what);
        return r;
      };

      await check('unknown provider', ['machine', 'create', '--provider', 'foo', '--name', 'a1'], /foo/);
      await check('bad name', ['machine', 'create', '--name', 'bad name!', '--network', 'loopback'], /bad name!/);

      // Duplicate name: the first machine stays as it was.
      const dup = await w.create(['--name', 'dup1', '--network', 'loopback']);
      const dupProcs = procsMentioning(w.home).map((p) => p.pid).sort();
      await check('duplicate name', ['machine', 'create', '--name', 'dup1', '--network', 'loopback'],
        /dup1.*(exists|already|taken)/i, { keep: ['dup1'] });
      const dupAfter = (await w.list()).find((m) => m.name === 'dup1');
      assert.equal(dupAfter.status, 'running', 'the original dup1 must stay running');
      assert.equal(dupAfter.pid, dup.pid, 'the original dup1 must keep its process');
      assert.equal(dupAfter.agent_url, dup.agent_url, 'the original dup1 must keep its address');
      assert.ok(await agentAnswers(dup.agent_url), 'the original dup1 still answers');
      assert.deepEqual(procsMentioning(w.home).map((p) => p.pid).sort(), dupProcs, 'processes changed by the failed duplicate create');
      await w.ok(['machine', 'destroy', 'dup1']);

      await check('remote without --url', ['machine', 'create', '--provider', 'remote', '--name', 'r1'], /--url/);

      const tokenFile = path.join(w.home, 'remote-token');
      writeFileSync(tokenFile, `${randomBytes(24).toString('hex')}\n`, { mode: 0o600 });
      const deadPort = await freePort();
      await check('remote where nothing listens',
        ['machine', 'create', '--provider', 'remote', '--name', 'r2', '--url', `http://127.0.0.1:${deadPort}`, '--token-file', tokenFile],
        /cannot connect|connection refused|could not connect|unreachable/i);

      // Plain http to another host would carry the token in clear: refused before any
      // connection unless --insecure-http says so (then the dead TEST-NET address is tried).
      await check('remote over plain http to another host',
        ['machine', 'create', '--provider', 'remote', '--name', 'r4', '--url', 'http://192.0.2.1:7300', '--token-file', tokenFile],
        /plain http.*--insecure-http/);
      await check('remote over plain http with --insecure-http',
        ['machine', 'create', '--provider', 'remote', '--name', 'r5', '--url', 'http://192.0.2.1:7300', '--token-file', tokenFile, '--insecure-http'],
        /cannot connect|connection refused|could not connect|unreachable|timed out|timeout/i);

      // A real agent (its own Xvfb) and the wrong token.
      const xvfb = await startXvfb({ log: path.join(w.home, 'xvfb-remote.log') });
      w.teardowns.push(() => xvfb.stop());
      const agent = await startAgent({ display: xvfb.display });
      w.teardowns.push(() => agent.stop());
      await check('remote with the wrong token',
        ['machine', 'create', '--provider', 'remote', '--name', 'r3', '--url', agent.url, '--token-file', tokenFile],
        /token|401/i);

      await check('PORTHOLE_AGENT_BIN=/nonexistent', ['machine', 'create', '--name', 'nobin'],
        /\/nonexistent/, { env: { PORTHOLE_AGENT_BIN: '/nonexistent' } });

      const envDir = path.join(w.home, 'repo', '.porthole');
      mkdirSync(envDir, { recursive: true });
      const envFile = path.join(envDir, 'environment.json');
      writeFileSync(envFile, JSON.stringify({ terminals: [{ name: 't', command: 5 }] }));
      await check('invalid --env file', ['machine', 'create', '--name', 'badenv', '--network', 'loopback', '--env', envFile],
        /terminals\[0\]\.command/);

      await check('destroy of an unknown machine', ['machine', 'destroy', 'nosuch'], /nosuch.*porthole machine list/);

      assert.deepEqual(failures, [], `CLI error messages not as expected:\n\n${failures.join('\n\n')}`);
    }));

  // 3 ----------------------------------------------------------------------------------------
  it('3. a machine whose sandbox dies is listed as failed with the reason; destroy works',
    { timeout: TEST_TIMEOUT }, worldTest('3', async (w, t) => {
      const m3 = await w.create(['--name', 'm3', '--network', 'loopback']);
      const listed = (await w.list()).find((m) => m.name === 'm3');
      assert.ok(Number.isInteger(listed?.pid) && listed.pid > 1, `machine list --json has no pid for m3: ${JSON.stringify(listed)}`);
      assert.ok(await agentAnswers(m3.agent_url));

      process.kill(-listed.pid, 'SIGKILL'); // the sandbox's process group

      let seen;
      await waitFor(async () => {
        seen = (await w.list()).find((m) => m.name === 'm3');
        return seen && seen.status === 'failed';
      }, { timeout: 30000, interval: 500, message: 'm3 to be listed as failed' }).catch((e) => {
        throw new Error(`${e.message}; last listing: ${JSON.stringify(seen)}`);
      });
      t.diagnostic(`m3 after kill -9: status ${seen.status}, error: ${seen.error}`);
      assert.equal(typeof seen.error, 'string', `failed machine without an error: ${JSON.stringify(seen)}`);
      assert.ok(seen.error.length > 0, 'empty error');
      assert.match(seen.error, /exit|died|dead|kill|signal|gone/i, `the error does not give the reason: ${seen.error}`);
      // The supervisor is gone first; the agent inside follows by its parent-death signal,
      // which the kernel delivers a moment later (seen once in CI: still answering right
      // after the listing said failed).
      await waitFor(async () => !(await agentAnswers(m3.agent_url)), { timeout: 5000, interval: 100,
        message: 'the agent of a dead sandbox to stop answering' });

      await w.ok(['machine', 'destroy', 'm3']);
      assert.deepEqual(await w.list(), []);
      await assertNoProcesses(w, 'after destroying the dead m3');
      assert.deepEqual(machineDirEntries(w), [], 'machines/ is not empty');

      // Last (so destroy is checked either way). A message for people and the app: no terminal escape sequences or other control characters.
      assert.ok(!/[\x00-\x08\x0b-\x1f\x7f]/.test(seen.error), `the error carries control characters (ANSI colour codes?): ${JSON.stringify(seen.error)}`);
    }));

  // 4 ----------------------------------------------------------------------------------------
  it('4. remote host (an agent in a namespace of our own): add, act, destroy forgets it; teardown leaves nothing',
    { timeout: TEST_TIMEOUT }, worldTest('4', async (w) => {
      const tag = randomBytes(3).toString('hex');
      const ns = `phtest${tag}`;
      const hostIf = `pth${tag}`;
      const nsIf = `ptn${tag}`;
      // A /30 in 10.214.N.0/24 nobody routes yet.
      const routes = (await sh('ip', ['-4', 'route', 'show'])).stdout;
      let n = 1 + Math.floor(Math.random() * 250);
      for (let i = 0; i < 250 && routes.includes(`10.214.${n}.`); i++) n = 1 + (n % 250);
      const hostIp = `10.214.${n}.1`;
      const agentIp = `10.214.${n}.2`;

      let agentChild, xvfbChild;
      let nsMade = false;
      const teardownNs = async () => {
        if (agentChild) await killGroup(agentChild);
        if (xvfbChild) await killGroup(xvfbChild);
        if (nsMade) {
          await sh('ip', ['netns', 'del', ns], { allowFail: true });
          if (await linkExists(hostIf)) await sh('ip', ['link', 'del', hostIf], { allowFail: true });
          nsMade = false;
        }
      };
      w.teardowns.push(teardownNs);

      await sh('ip', ['netns', 'add', ns]);
      nsMade = true;
      await sh('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf]);
      await sh('ip', ['link', 'set', nsIf, 'netns', ns]);
      await sh('ip', ['addr', 'add', `${hostIp}/30`, 'dev', hostIf]);
      await sh('ip', ['link', 'set', hostIf, 'up']);
      await sh('ip', ['-n', ns, 'addr', 'add', `${agentIp}/30`, 'dev', nsIf]);
      await sh('ip', ['-n', ns, 'link', 'set', nsIf, 'up']);
      await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);

      // Xvfb inside the namespace (the socket file is on the shared /tmp).
      let disp = 100 + Math.floor(Math.random() * 800);
      while (existsSync(`/tmp/.X11-unix/X${disp}`) || existsSync(`/tmp/.X${disp}-lock`)) disp++;
      const xlog = path.join(w.home, 'remote-xvfb.log');
      xvfbChild = spawnGroup('ip', ['netns', 'exec', ns, 'Xvfb', `:${disp}`, '-screen', '0', '1280x800x24', '-nolisten', 'tcp'], { log: xlog });
      await waitFor(() => existsSync(`/tmp/.X11-unix/X${disp}`) || xvfbChild.exitInfo,
        { timeout: 20000, message: `Xvfb :${disp} in ${ns}` });
      assert.ok(!xvfbChild.exitInfo, `Xvfb exited: ${tail(xlog)}`);

      const rdir = path.join(w.home, 'remote-host');
      mkdirSync(rdir, { recursive: true });
      const token = randomBytes(24).toString('hex');
      const tokenFile = path.join(rdir, 'token');
      writeFileSync(tokenFile, token, { mode: 0o600 });
      const alog = path.join(rdir, 'agent.log');
      const url = `http://${agentIp}:7400`;
      agentChild = spawnGroup('ip', ['netns', 'exec', ns, AGENT, 'serve', '--display', `:${disp}`,
        '--listen', `${agentIp}:7400`, '--token-file', tokenFile, '--data-dir', path.join(rdir, 'data'), '--no-record'],
      { env: { RUST_LOG: 'info', DISPLAY: `:${disp}` }, unset: ['PORTHOLE_TOKEN'], log: alog });
      await waitFor(async () => {
        if (agentChild.exitInfo) throw new Error(`remote agent exited: ${tail(alog)}`);
        return agentAnswers(url);
      }, { timeout: 30000, message: `the remote agent at ${url}` });

      // Plain http to another address carries the token in clear: refused, unless said.
      const refused = await w.ph(['machine', 'create', '--provider', 'remote', '--name', 'r1', '--url', url, '--token-file', tokenFile, '--json']);
      assert.notEqual(refused.code, 0, `plain http to ${url} was accepted without --insecure-http`);
      assert.match(refused.stderr, /--insecure-http/);
      const r1 = await w.create(['--provider', 'remote', '--name', 'r1', '--url', url, '--token-file', tokenFile, '--insecure-http']);
      assertMachineShape(r1, { name: 'r1', provider: 'remote' });
      assert.equal(r1.agent_url, url);
      assert.equal(r1.spec?.insecure_http, true, `the machine says it is reached in clear: ${JSON.stringify(r1.spec)}`);
      const listed = (await w.list()).find((m) => m.name === 'r1');
      assert.equal(listed?.status, 'running', `machine list: ${JSON.stringify(listed)}`);
      const tok = await w.token('r1');
      assert.equal(tok, token, 'machine token r1 is not the remote agent\'s token');

      await computer(r1.agent_url, tok, { action: 'mouse_move', coordinate: [321, 234] });
      const pos = await computer(r1.agent_url, tok, { action: 'cursor_position' });
      assert.match(String(pos.output), /X=321,\s*Y=234/, `cursor_position: ${JSON.stringify(pos)}`);

      await w.ok(['machine', 'destroy', 'r1']);
      assert.deepEqual(await w.list(), [], 'r1 still listed after destroy');
      assert.ok(await agentAnswers(url), 'destroying a remote machine must not stop its agent (it is not ours)');
      assert.ok(!agentChild.exitInfo, 'the remote agent exited after machine destroy');
      assert.ok(existsSync(tokenFile), 'machine destroy removed the user\'s --token-file');

      // Our own teardown, verified.
      await teardownNs();
      assert.ok(!(await netnsList()).includes(ns), `namespace ${ns} remains`);
      assert.ok(!(await linkExists(hostIf)), `veth ${hostIf} remains`);
      for (const c of [agentChild, xvfbChild]) {
        assert.ok(c.exitInfo, `process ${c.pid} (${c.spawnfile} ${c.spawnargs.slice(3, 5).join(' ')}) still runs after teardown`);
      }
      await assertNoProcesses(w, 'after the remote host teardown');
    }));

  // 4b ---------------------------------------------------------------------------------------
  it('4b. remote host over HTTPS: the pinned fingerprint is required and checked; a bad certificate file stops the agent with its name',
    { timeout: TEST_TIMEOUT }, worldTest('4b', async (w, t) => {
      const dir = path.join(w.home, 'tls');
      mkdirSync(dir, { recursive: true });
      const cert = path.join(dir, 'agent.crt');
      const key = path.join(dir, 'agent.key');
      await sh('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
        '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=porthole-e2e']);
      const fp = (await sh('openssl', ['x509', '-noout', '-fingerprint', '-sha256', '-in', cert])).stdout.trim().split('=')[1];
      assert.match(fp, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/, `fingerprint: ${fp}`);

      const xvfb = await startXvfb({ log: path.join(w.home, 'xvfb-tls.log') });
      w.teardowns.push(() => xvfb.stop());

      // A certificate file that is not PEM: the agent refuses to start and names the flag.
      const junk = path.join(dir, 'junk.crt');
      writeFileSync(junk, 'not a certificate\n');
      const bad = await execOnce(AGENT, ['serve', '--display', xvfb.display, '--listen', '127.0.0.1:1',
        '--tls-cert', junk, '--tls-key', key], { env: { ...process.env, PORTHOLE_TOKEN: 'x'.repeat(32) }, timeout: 20000 });
      assert.notEqual(bad.code, 0, `agent with a junk certificate exited 0: ${bad.stderr}`);
      assert.match(bad.stderr, /--tls-cert .*junk\.crt/, `the error does not name the certificate: ${bad.stderr}`);

      const agent = await startAgent({ display: xvfb.display, args: ['--tls-cert', cert, '--tls-key', key] });
      w.teardowns.push(() => agent.stop());
      assert.match(agent.url, /^https:/);

      // Idle TCP connections that never start a handshake do not keep HTTPS clients out
      // (handshakes used to run one at a time, 10 s each).
      const { port } = new URL(agent.url);
      const idle = await Promise.all(Array.from({ length: 20 }, () => new Promise((resolve, reject) => {
        const c = net.connect(Number(port), '127.0.0.1', () => resolve(c));
        c.on('error', reject);
      })));
      const t0 = Date.now();
      const st = await insecureHttpsStatus(`${agent.url}/v1/health`);
      const waited = Date.now() - t0;
      for (const c of idle) c.destroy();
      assert.equal(st, 200);
      assert.ok(waited < 5000, `a new HTTPS client waited ${waited} ms behind 20 idle connections`);

      const failures = [];
      const expectFail = async (what, args, re) => {
        const r = await w.ph(args);
        try { assertOneLineError(r, re, what); } catch (e) { failures.push(e.message); }
        assert.deepEqual((await w.list()).map((m) => m.name), [], `${what}: a machine was left`);
      };
      const base = ['machine', 'create', '--provider', 'remote', '--url', agent.url, '--token-file', agent.tokenFile];
      await expectFail('https without --fingerprint', [...base, '--name', 'h1'], /fingerprint/i);
      const wrong = fp.split(':').map((b, i) => (i === 0 ? (b === '00' ? '01' : '00') : b)).join(':');
      await expectFail('https with the wrong fingerprint', [...base, '--name', 'h2', '--fingerprint', wrong], /fingerprint/i);
      assert.deepEqual(failures, [], failures.join('\n\n'));

      const m = await w.create([...base.slice(2), '--name', 'h3', '--fingerprint', fp]);
      assertMachineShape(m, { name: 'h3', provider: 'remote' });
      assert.equal(m.agent_url, agent.url);
      // A request through the core's pinned client: a new session on the agent.
      const s1 = await w.ok(['session', 'start', 'h3', '--json']);
      assert.ok(s1.id || s1.session?.id, `session start over HTTPS: ${JSON.stringify(s1)}`);
      const listed = (await w.list()).find((x) => x.name === 'h3');
      assert.equal(listed.status, 'running');
      await w.ok(['machine', 'destroy', 'h3']);
      assert.deepEqual(await w.list(), []);
      t.diagnostic(`pinned ${fp.slice(0, 23)}…`);
    }));

  // 5 ----------------------------------------------------------------------------------------
  it('5. recordings: incremental sync (prefix of the guest file, h264), resume after a network cut, evidence export',
    { timeout: TEST_TIMEOUT }, worldTest('5', async (w, t) => {
      const m = await w.create(['--name', 'rec', '--network', 'loopback']);
      const tok = await w.token('rec');

      await doActions(m.agent_url, tok, [
        { action: 'mouse_move', coordinate: [200, 200] },
        { action: 'left_click', coordinate: [300, 250] },
        { action: 'type', text: 'hello porthole' },
        { action: 'left_click', coordinate: [420, 310] },
        { action: 'key', text: 'Escape' },
      ]);

      const rl = await w.ok(['recordings', 'list', '--machine', 'rec', '--json']);
      assert.ok(Array.isArray(rl.recordings), `recordings list: ${JSON.stringify(rl)}`);
      assert.equal(rl.recordings.length, 1, `expected one recording: ${JSON.stringify(rl)}`);
      const rec = rl.recordings[0];
      assert.equal(rec.state, 'recording', `recording state: ${JSON.stringify(rec)}`);
      const id = rec.id;
      const guestVideo = path.join(w.home, 'machines', 'rec', 'agent', 'recordings', id, 'video-0001.mp4');
      const localVideo = path.join(w.home, 'recordings', id, 'video-0001.mp4');
      const agentEvents = async (url, t, sid = id) => (await agentOk(url, t, `/v1/recordings/${sid}/events?after=0&limit=100000`)).events;
      const localView = async (sid) => {
        const l = await w.ok(['recordings', 'list', '--json']);
        return (l.recordings || []).find((r) => r.id === sid);
      };
      const assertPrefix = (local, guest, when) => {
        const a = readFileSync(local);
        const b = readFileSync(guest);
        assert.ok(a.length > 0, `${when}: synced ${local} is empty`);
        assert.ok(isPrefix(a, b), `${when}: synced ${local} (${a.length} bytes) is not a prefix of the guest's ` +
          `${guest} (${b.length} bytes); first difference at byte ${firstDifference(a, b)}`);
        return a.length;
      };

      const s1 = await w.ok(['recordings', 'sync', 'rec', '--json']);
      assert.ok(s1.events > 0, `first sync: ${JSON.stringify(s1)}`);
      assert.ok(s1.bytes > 0, `first sync: ${JSON.stringify(s1)}`);
      t.diagnostic(`first sync: ${JSON.stringify(s1)}`);
      const size1 = assertPrefix(localVideo, guestVideo, 'after the first sync');
      assert.equal(size1, s1.bytes, 'first sync: bytes reported vs the synced file size');
      const local1 = await localView(id);
      assert.equal(local1?.events, s1.events, `local events after the first sync: ${JSON.stringify(local1)}`);

      const more = [
        { action: 'left_click', coordinate: [500, 400] },
        { action: 'type', text: 'more' },
        { action: 'left_click', coordinate: [640, 420] },
      ];
      await doActions(m.agent_url, tok, more);
      const guestBefore2 = (await agentEvents(m.agent_url, tok)).length;
      const s2 = await w.ok(['recordings', 'sync', 'rec', '--json']);
      const guestAfter2 = (await agentEvents(m.agent_url, tok)).length;
      // Only new events: at least the new actions, at most what the guest had beyond the first
      // sync; never everything again.
      assert.ok(s2.events >= more.length, `second sync added ${s2.events} events; ${more.length} actions were done since`);
      assert.ok(s2.events >= guestBefore2 - s1.events && s2.events <= guestAfter2 - s1.events,
        `second sync reported ${s2.events} events; the guest had ${guestBefore2}..${guestAfter2}, the first sync took ${s1.events}`);
      t.diagnostic(`second sync: ${JSON.stringify(s2)} (guest events ${guestBefore2}..${guestAfter2})`);
      const size2 = assertPrefix(localVideo, guestVideo, 'after the second sync');
      assert.equal(size2 - size1, s2.bytes, `second sync: reported ${s2.bytes} bytes, the file grew by ${size2 - size1}`);
      assert.ok(s2.bytes > 0, 'second sync added no video');
      const local2 = await localView(id);
      assert.equal(local2?.events, s1.events + s2.events, `local events after two syncs: ${JSON.stringify(local2)}`);

      // The host does not take more of a part than its cap (a guest must not fill the host's
      // disk): the sync says which limit, and what is on disk stays a true prefix.
      await sleep(2500);
      const capped = await w.ph(['recordings', 'sync', 'rec', '--json'], { env: { PORTHOLE_SYNC_MAX_PART_MB: '0' } });
      assert.notEqual(capped.code, 0, `a sync over the part cap succeeded: ${capped.stdout}`);
      assert.match(capped.stderr, /PORTHOLE_SYNC_MAX_PART_MB/, capped.stderr);
      assert.equal(assertPrefix(localVideo, guestVideo, 'after the capped sync'), size2, 'the capped sync wrote video');

      const probe = await sh('ffprobe', ['-v', 'error', '-select_streams', 'v:0', '-show_entries', 'stream=codec_name', '-of', 'csv=p=0', localVideo]);
      assert.equal(probe.stdout.trim(), 'h264', `ffprobe ${localVideo}: ${probe.stdout} ${probe.stderr}`);

      // --- resume after a cut (netns machine)
      const mn = await w.create(['--name', 'recn', '--network', 'netns']);
      const idx = mn.spec?.net_index;
      assert.ok(Number.isInteger(idx), `spec.net_index: ${JSON.stringify(mn)}`);
      const tokn = await w.token('recn');
      const idn = (await agentOk(mn.agent_url, tokn, '/v1/sessions/current')).id;
      assert.ok(idn, 'recn has no current session');
      await doActions(mn.agent_url, tokn, [
        { action: 'left_click', coordinate: [100, 100] },
        { action: 'type', text: 'before the cut' },
      ]);
      const n1 = await w.ok(['recordings', 'sync', 'recn', '--json']);
      assert.ok(n1.events > 0 && n1.bytes > 0, `recn first sync: ${JSON.stringify(n1)}`);
      await doActions(mn.agent_url, tokn, [
        { action: 'left_click', coordinate: [150, 150] },
        { action: 'type', text: 'during the cut' },
      ]);

      const hostIf = `phh${idx}`;
      let cut = false;
      const heal = async () => {
        if (!cut) return;
        await sh('ip', ['route', 'del', 'unreachable', `10.213.${idx}.0/30`], { allowFail: true });
        await sh('ip', ['link', 'set', hostIf, 'up'], { allowFail: true });
        cut = false;
      };
      w.teardowns.push(heal);
      await sh('ip', ['link', 'set', hostIf, 'down']);
      // With the link down the connected route goes, and packets for 10.213.N.2 would follow the
      // host's default route to wherever it leads (here, a proxy that answers anything with 404):
      // make the cut a cut.
      await sh('ip', ['route', 'add', 'unreachable', `10.213.${idx}.0/30`]);
      cut = true;
      const failed = await w.ph(['recordings', 'sync', 'recn', '--json']);
      t.diagnostic(`sync during the cut: exit ${failed.code}, stderr: ${failed.stderr.trim()}`);
      assertOneLineError(failed, /cannot connect|unreachable|could not connect/i, 'sync during a network cut');
      await heal();
      await waitFor(() => agentAnswers(mn.agent_url), { timeout: 30000, message: 'recn to answer again after the cut' });

      const guestBeforeN = (await agentEvents(mn.agent_url, tokn, idn)).length;
      const n2 = await w.ok(['recordings', 'sync', 'recn', '--json']);
      const guestAfterN = (await agentEvents(mn.agent_url, tokn, idn)).length;
      const guestN = path.join(w.home, 'machines', 'recn', 'agent', 'recordings', idn, 'video-0001.mp4');
      const localN = path.join(w.home, 'recordings', idn, 'video-0001.mp4');
      t.diagnostic(`recn syncs: before cut ${JSON.stringify(n1)}, resumed ${JSON.stringify(n2)}`);
      assertPrefix(localN, guestN, 'after the resumed sync');
      assert.ok(n2.events >= 2, `the resumed sync added ${n2.events} events; 2 actions were done since the first sync`);
      assert.ok(n2.bytes > 0, `the resumed sync added no video: ${JSON.stringify(n2)}`);
      const viewN = await localView(idn);
      assert.ok(viewN, `the local view has no session ${idn}`);
      // No duplicates: the local table holds exactly what the syncs reported adding, and that is
      // what the agent had (between the counts taken just before and just after the sync).
      assert.equal(viewN.events, n1.events + n2.events,
        `local events (${viewN.events}) vs events the syncs reported adding (${n1.events} + ${n2.events})`);
      assert.ok(viewN.events >= guestBeforeN && viewN.events <= guestAfterN,
        `local events for ${idn}: ${viewN.events}; the agent had ${guestBeforeN} before and ${guestAfterN} after the sync`);

      // --- evidence export of the loopback session (wait for the guest's thumbnails first:
      // they are written just after each action).
      const guestThumbs = path.join(w.home, 'machines', 'rec', 'agent', 'recordings', id, 'thumbs');
      const actionEvents = (await agentEvents(m.agent_url, tok)).filter((e) => e.kind === 'action');
      const clicks = actionEvents.filter((e) => e.data?.action === 'left_click');
      assert.equal(clicks.length, 4, `left_click events on the agent: ${JSON.stringify(clicks)}`);
      await waitFor(() => clicks.every((e) => existsSync(path.join(guestThumbs, `${e.seq}-before.jpg`)) &&
        existsSync(path.join(guestThumbs, `${e.seq}-after.jpg`))), { timeout: 30000, message: 'guest thumbnails of the clicks' });
      await w.ok(['recordings', 'sync', 'rec', '--json']);
      assertPrefix(localVideo, guestVideo, 'after the third sync');

      const out = path.join(w.home, 'evidence');
      const ex = await w.ok(['recordings', 'export', id, '--out', out, '--json']);
      for (const f of ['index.html', 'video.mp4', 'events.json', 'summary.md']) {
        assert.ok(existsSync(path.join(out, f)), `export: ${f} missing (${JSON.stringify(ex)}; dir: ${readdirSync(out).join(', ')})`);
      }
      t.diagnostic(`export: ${JSON.stringify(ex)}`);
      const shots = readdirSync(path.join(out, 'screenshots')).filter((f) => f.endsWith('.jpg'));
      const exEvents = JSON.parse(readFileSync(path.join(out, 'events.json'), 'utf8'));
      assert.ok(Array.isArray(exEvents) && exEvents.length > 0, 'events.json is empty');
      const exClicks = exEvents.filter((e) => e.kind === 'action' && e.data?.action === 'left_click');
      assert.equal(exClicks.length, 4, `events.json clicks: ${JSON.stringify(exClicks)}`);
      for (const e of exClicks) {
        for (const which of ['before', 'after']) {
          assert.ok(shots.includes(`${e.seq}-${which}.jpg`), `screenshots/${e.seq}-${which}.jpg missing (have ${shots.join(', ')})`);
        }
      }
      const actionSeqs = new Set(exEvents.filter((e) => e.kind === 'action').map((e) => String(e.seq)));
      for (const s of shots) {
        assert.ok(actionSeqs.has(s.split('-')[0]), `screenshot ${s} does not belong to an action`);
      }
      const summary = readFileSync(path.join(out, 'summary.md'), 'utf8');
      for (const c of [[300, 250], [420, 310], [500, 400], [640, 420]]) {
        assert.ok(summary.includes(`left_click at (${c[0]}, ${c[1]})`), `summary.md does not mention the click at ${c}:\n${summary}`);
      }
      assert.ok(summary.includes('hello porthole'), `summary.md does not mention the typed text:\n${summary}`);
      const vprobe = await sh('ffprobe', ['-v', 'error', '-select_streams', 'v:0', '-show_entries', 'stream=codec_name', '-of', 'csv=p=0', path.join(out, 'video.mp4')]);
      assert.equal(vprobe.stdout.trim(), 'h264', 'exported video.mp4 is not h264');

      await w.ok(['machine', 'destroy', 'rec']);
      await w.ok(['machine', 'destroy', 'recn']);
      assert.deepEqual(await w.list(), []);
      await assertNoProcesses(w, 'after destroying rec and recn');
    }));

  // 6 ----------------------------------------------------------------------------------------
  it('6. warm pool: fill from a snapshot, claim (session started), background refill, clean up',
    { timeout: TEST_TIMEOUT }, worldTest('6', async (w, t) => {
      const nsBefore = await netnsList();
      await w.create(['--name', 'pm', '--network', 'loopback']);
      await w.ok(['machine', 'snapshot', 'pm', '--name', 's']);

      const fill = await w.ok(['pool', 'fill', '--snapshot', 's', '--size', '1', '--json']);
      const pooled = (await w.list()).filter((m) => m.spec?.pool === 's');
      assert.equal(pooled.length, 1, `pool machines after fill: ${JSON.stringify(pooled)} (fill said ${JSON.stringify(fill)})`);
      const pm = pooled[0];
      assert.equal(pm.status, 'running');
      const idleTok = await w.token(pm.name);
      const idleSession = await agentOk(pm.agent_url, idleTok, '/v1/sessions/current');

      const claimed = await w.ok(['pool', 'claim', '--snapshot', 's', '--name', 'w1', '--json']);
      assertMachineShape(claimed, { name: 'w1' });
      t.diagnostic(`claim: ${claimed.name} claim_ms=${claimed.claim_ms} from ${pm.name}`);
      assert.equal(typeof claimed.claim_ms, 'number', `claim_ms: ${JSON.stringify(claimed)}`);
      assert.ok(claimed.claim_ms >= 0);
      assert.equal(claimed.agent_url, pm.agent_url, 'the claimed machine is the pooled one');
      const tok = await w.token('w1');
      const cur = await agentOk(claimed.agent_url, tok, '/v1/sessions/current');
      assert.ok(cur.id, `no current session: ${JSON.stringify(cur)}`);
      assert.notEqual(cur.id, idleSession.id, 'the claim did not start a new session');
      const evs = (await agentOk(claimed.agent_url, tok, '/v1/events?after=0')).events;
      assert.ok(evs.some((e) => e.kind === 'session' && e.data?.state === 'started'),
        `no session started event: ${JSON.stringify(evs)}`);

      // The background refill: a new pool machine appears and the refill process ends.
      let l = [];
      await waitFor(async () => {
        l = await w.list();
        const refill = l.filter((m) => m.spec?.pool === 's' && m.name !== 'w1');
        const fillers = procsMentioning(w.home).filter((p) => /pool\s+fill/.test(p.cmd));
        return refill.length === 1 && refill[0].status === 'running' && fillers.length === 0;
      }, { timeout: 120000, interval: 500, message: 'the background refill to finish' }).catch((e) => {
        throw new Error(`${e.message}; machines: ${JSON.stringify(l.map((m) => [m.name, m.status, m.spec?.pool]))}`);
      });
      assert.deepEqual(l.map((m) => m.name).filter((n) => !n.startsWith('pool-')).sort(), ['pm', 'w1']);

      for (const m of await w.list()) await w.ok(['machine', 'destroy', m.name]);
      assert.deepEqual(await w.list(), []);
      await assertNoProcesses(w, 'after destroying the pool machines');
      await assertNoNewNamespaces(w, nsBefore, 'after destroying the pool machines');
      assert.deepEqual(machineDirEntries(w), [], 'machines/ is not empty');
    }));

  // 7 ----------------------------------------------------------------------------------------
  // QEMU under TCG here (PVM-backed /dev/kvm cannot boot a stock kernel). One VM at a time on
  // these 2-core machines: the source is stopped before its snapshot is restored.
  it('7. qemu: image cached by its recipe, boot, frame, action, memory snapshot → clone with a fresh ' +
    'identity, disk snapshot → cold clone, stop, destroy; bad input; nothing left',
  { timeout: 30 * 60 * 1000 }, worldTest('7', async (w, t) => {
    const images = process.env.PORTHOLE_IMAGE_DIR || path.join(os.homedir(), '.cache', 'porthole', 'images');
    const env = { PORTHOLE_IMAGE_DIR: images };
    const recipe = createHash('sha256').update(readFileSync(new URL('../../packaging/guest-image/build.sh', import.meta.url))).digest('hex');
    const create = async (args) => {
      const r = await w.ph(['machine', 'create', '--provider', 'qemu', ...args, '--json'], { env, timeout: 20 * 60 * 1000 });
      assert.equal(r.code, 0, `expected exit 0:\n${fmtRun(r.cmdline, r)}`);
      return JSON.parse(r.stdout);
    };
    const qemuProcs = () => procsMentioning(w.home).filter((p) => /qemu-system/.test(p.cmd));

    // Bad input first (cheap): no QEMU on PATH, a damaged cached image.
    let r = await w.ph(['machine', 'create', '--provider', 'qemu', '--name', 'noq'], { env: { ...env, PATH: '/nonexistent' } });
    assertOneLineError(r, /qemu-system-x86_64 is not installed/, 'qemu missing');
    const badImages = path.join(w.home, 'bad-images');
    mkdirSync(path.join(badImages, recipe), { recursive: true });
    for (const f of ['vmlinuz', 'initrd.img']) writeFileSync(path.join(badImages, recipe, f), 'x');
    writeFileSync(path.join(badImages, recipe, 'recipe.sha256'), `${recipe}\n`);
    writeFileSync(path.join(badImages, recipe, 'rootfs.qcow2'), 'truncated');
    r = await w.ph(['machine', 'create', '--provider', 'qemu', '--name', 'badimg'], { env: { PORTHOLE_IMAGE_DIR: badImages } });
    assertOneLineError(r, /damaged.*rootfs\.qcow2/, 'damaged image');
    assert.deepEqual(await w.list(), [], 'failed creates left machines');
    assert.deepEqual(machineDirEntries(w), [], 'failed creates left machine dirs');

    // Cold boot (builds the image first when this recipe has none cached).
    let t0 = Date.now();
    const q1 = await create(['--name', 'q1']);
    t.diagnostic(`q1 cold create ${Date.now() - t0} ms, accel ${q1.spec.accel} (${q1.spec.accel_reason})`);
    assertMachineShape(q1, { name: 'q1', provider: 'qemu' });
    // As root: a tap device, the agent at 10.215.N.2 (browsers on this host can reach WebRTC).
    assert.equal(q1.spec.network, 'tap', JSON.stringify(q1.spec));
    assert.match(q1.agent_url, new RegExp(`^http://10\\.215\\.${q1.spec.tap_index}\\.2:7300$`));
    assert.ok(existsSync(`/sys/class/net/phq${q1.spec.tap_index}`), 'no tap device for q1');
    assert.ok(['tcg', 'kvm'].includes(q1.spec.accel), `accel: ${JSON.stringify(q1.spec)}`);
    assert.equal(readFileSync(path.join(images, recipe, 'recipe.sha256'), 'utf8').trim(), recipe,
      'the cached image is not stamped with the hash of packaging/guest-image/build.sh');
    const tok1 = await w.token('q1');
    assert.equal((await agentApi(q1.agent_url, null, '/v1/control')).status, 401);
    assert.equal(q1.spec.isolated, true, JSON.stringify(q1.spec));
    await assertVmOffTheHost(t, q1, tok1, 'q1 (tap)');

    await computer(q1.agent_url, tok1, { action: 'mouse_move', coordinate: [321, 123] });
    const pos = await computer(q1.agent_url, tok1, { action: 'cursor_position' });
    assert.match(String(pos.output), /X=321,\s*Y=123/, `cursor_position: ${JSON.stringify(pos)}`);

    // A frame over WebRTC through the forwarded UDP port.
    const browser = await launchChromium();
    try {
      const page = await openViewer(browser, { url: q1.agent_url, token: tok1 });
      let st;
      await waitFor(async () => { st = await viewerStats(page); return st.framesDecoded > 0; },
        { timeout: 90000, interval: 250, message: 'framesDecoded > 0 from the VM' })
        .catch((e) => { throw new Error(`${e.message}; stats ${JSON.stringify(st)}\n${page.logLines.slice(-20).join('\n')}`); });
      t.diagnostic(`q1 viewer: ${JSON.stringify(st)}`);
      await page.evaluate(() => window.porthole.disconnect()).catch(() => {});
    } finally {
      await browser.close().catch(() => {});
    }

    const id1 = await execIn(q1.agent_url, tok1, 'echo hi > /root/marker; hostname; cat /etc/machine-id; pgrep -x Xvnc || pgrep -x Xvfb');
    assert.equal(id1.exit_code, 0, JSON.stringify(id1));
    const [host1, mid1, xvfb1] = id1.stdout.trim().split('\n');
    assert.equal(host1, 'q1');

    // Two principals in a VM too: the agent token reaches exec and is refused the operator's
    // endpoints; inside, neither token file is left and the guest's commands hold only it.
    const atok1 = (await w.ok(['machine', 'token', 'q1', '--agent'])).trim();
    assert.notEqual(atok1, tok1);
    assert.equal((await agentApi(q1.agent_url, atok1, '/v1/recordings')).status, 403, 'the agent token reads recordings');
    const inVm = await execIn(q1.agent_url, atok1, 'echo "T=$PORTHOLE_TOKEN"; ls /run/porthole/');
    const seen = /T=(\S*)/.exec(inVm.stdout)[1];
    assert.ok(seen === '' || seen === atok1, `PORTHOLE_TOKEN inside is neither unset nor the agent token: ${inVm.stdout}`);
    assert.ok(!inVm.stdout.includes(tok1), 'the operator token is readable inside the VM');
    assert.doesNotMatch(inVm.stdout, /^(token|agent-token)$/m, inVm.stdout);

    const session1 = await agentOk(q1.agent_url, tok1, '/v1/sessions/current');
    assert.ok(session1.id, JSON.stringify(session1));
    t0 = Date.now();
    const snap = await w.ok(['machine', 'snapshot', 'q1', '--name', 'warm', '--json'], { env });
    t.diagnostic(`memory snapshot ${Date.now() - t0} ms`);
    assert.equal(snap.spec.kind, 'memory', JSON.stringify(snap));
    assert.ok(await agentAnswers(q1.agent_url), 'q1 keeps running after its snapshot');
    const stopped = await w.ok(['machine', 'stop', 'q1', '--json'], { env });
    assert.equal(stopped.status, 'stopped');
    await waitFor(async () => qemuProcs().length === 0, { timeout: 30000, message: 'q1 QEMU to exit after stop' });

    t0 = Date.now();
    const q2 = await create(['--name', 'q2', '--from-snapshot', 'warm']);
    t.diagnostic(`q2 from memory snapshot ${Date.now() - t0} ms`);
    assertMachineShape(q2, { name: 'q2', provider: 'qemu' });
    const tok2 = await w.token('q2');
    assert.notEqual(tok2, tok1, 'a clone must get its own token');
    assert.equal((await agentApi(q2.agent_url, tok1, '/v1/control')).status, 401, "the clone accepts its source's token");
    const id2 = await execIn(q2.agent_url, tok2, 'cat /root/marker; hostname; cat /etc/machine-id; pgrep -x Xvnc || pgrep -x Xvfb');
    const [marker2, host2, mid2, xvfb2] = id2.stdout.trim().split('\n');
    assert.equal(marker2, 'hi', `marker on the clone: ${JSON.stringify(id2)}`);
    assert.equal(host2, 'q2', 'the clone keeps its source hostname');
    assert.notEqual(mid2, mid1, 'the clone keeps its source machine-id');
    assert.equal(xvfb2, xvfb1, 'the desktop was not resumed warm (a new X server process)');
    // The clone resumed a running guest: it is confined before it runs again.
    await assertVmOffTheHost(t, q2, tok2, 'q2 (memory clone)');
    const rec = await agentOk(q2.agent_url, tok2, '/v1/recordings');
    assert.ok(!rec.recordings.some((x) => x.id === session1.id),
      `the clone shows its source's recording ${session1.id}: ${JSON.stringify(rec)}`);

    // Disk snapshot → a cold boot on an overlay chain.
    await w.ok(['machine', 'snapshot', 'q2', '--name', 'disk', '--disk-only', '--json'], { env });
    await w.ok(['machine', 'destroy', 'q2'], { env });

    // The warm pool with VMs: fill from the memory snapshot, claim (its session starts).
    await w.ok(['pool', 'fill', '--snapshot', 'warm', '--size', '1', '--json'], { env, timeout: 10 * 60 * 1000 });
    const pooled = (await w.list()).filter((m) => m.spec?.pool === 'warm');
    assert.equal(pooled.length, 1, JSON.stringify(pooled));
    const claimed = await w.ok(['pool', 'claim', '--snapshot', 'warm', '--name', 'qp', '--json'], { env });
    t.diagnostic(`qemu pool claim ${claimed.claim_ms} ms`);
    assertMachineShape(claimed, { name: 'qp', provider: 'qemu' });
    const tokp = await w.token('qp');
    const cur = await agentOk(claimed.agent_url, tokp, '/v1/sessions/current');
    assert.ok(cur.id, JSON.stringify(cur));
    // The background refill would boot another VM: stop it and remove what it made.
    await waitFor(async () => procsMentioning(w.home).filter((p) => /pool\s+fill/.test(p.cmd)).length === 0,
      { timeout: 120000, interval: 500, message: 'the background refill to finish' });
    for (const m of (await w.list()).filter((x) => x.name !== 'q1')) await w.ok(['machine', 'destroy', m.name], { env });
    t0 = Date.now();
    // Unprivileged mode: QEMU's user network, the agent on a forwarded loopback port.
    // With a shared workspace whose name would add QEMU options if its commas were not escaped.
    const ws = path.join(w.home, 'ws,readonly=on,security_model=passthrough');
    mkdirSync(ws);
    writeFileSync(path.join(ws, 'from-host'), 'host\n');
    const q3 = await create(['--name', 'q3', '--from-snapshot', 'disk', '--network', 'loopback', '--workspace', ws]);
    assert.match(q3.agent_url, /^http:\/\/127\.0\.0\.1:\d+$/, JSON.stringify(q3));
    t.diagnostic(`q3 from disk snapshot ${Date.now() - t0} ms`);
    const tok3 = await w.token('q3');
    const id3 = await execIn(q3.agent_url, tok3, 'cat /root/marker; pgrep -x Xvnc || pgrep -x Xvfb');
    assert.equal(id3.stdout.trim().split('\n')[0], 'hi', JSON.stringify(id3));
    await assertVmOffTheHost(t, q3, tok3, 'q3 (loopback)');
    // The share: the whole path (commas and all), writable, and nothing the guest makes in it
    // means anything on the host (mapped-xattr): no setuid bit, device node or symlink.
    const wsr = await execIn(q3.agent_url, tok3, [
      'cd /workspace && cat from-host && echo guest > from-guest',
      'cp /bin/true suid && chown 0:0 suid && chmod 4755 suid',
      'mknod blk b 8 0; mkfifo fifo; ln -s /etc/shadow link',
      'stat -c "%n %F %a" suid blk link 2>&1',
    ].join('; '));
    t.diagnostic(`q3 workspace from the guest: ${JSON.stringify(wsr)}`);
    assert.match(wsr.stdout, /^host\n/, JSON.stringify(wsr));
    // As root in the guest (exec's user there), it sees what it asked for in its own view ...
    if ((await execIn(q3.agent_url, tok3, 'id -u')).stdout.trim() === '0') {
      assert.match(wsr.stdout, /^suid regular file 4755$/m, JSON.stringify(wsr));
      assert.match(wsr.stdout, /^blk block special file/m, JSON.stringify(wsr));
      assert.match(wsr.stdout, /^link symbolic link/m, JSON.stringify(wsr));
    }
    // ... and the host has only plain files.
    assert.equal(readFileSync(path.join(ws, 'from-guest'), 'utf8'), 'guest\n');
    for (const f of ['suid', 'blk', 'fifo', 'link']) {
      let st;
      try { st = lstatSync(path.join(ws, f)); } catch { continue; }
      assert.ok(st.isFile(), `${f}: the guest made a ${st.mode.toString(8)} on the host, not a plain file`);
      assert.equal(st.mode & 0o7000, 0, `${f}: mode ${st.mode.toString(8)} on the host`);
    }
    assert.ok(existsSync(path.join(ws, 'suid')), 'the guest could not create files in the workspace');

    // A VM whose QEMU dies is listed as failed, with the reason.
    process.kill(q3.pid, 'SIGKILL');
    await waitFor(async () => (await w.list()).find((m) => m.name === 'q3')?.status === 'failed',
      { timeout: 20000, message: 'q3 to be listed as failed after its QEMU was killed' });
    const dead = (await w.list()).find((m) => m.name === 'q3');
    assert.match(dead.error || '', /QEMU exited/, JSON.stringify(dead));

    for (const m of await w.list()) await w.ok(['machine', 'destroy', m.name], { env });
    assert.deepEqual(await w.list(), []);
    await waitFor(async () => qemuProcs().length === 0, { timeout: 20000, message: 'no QEMU left' });
    await assertNoProcesses(w, 'after destroying the qemu machines');
    for (const m of [q1, q2]) assert.ok(!existsSync(`/sys/class/net/phq${m.spec.tap_index}`), `tap phq${m.spec.tap_index} left behind`);
    assert.deepEqual(machineDirEntries(w), [], 'machines/ is not empty');

    // An ordinary user's VM (a uid of its own, no root, no nftables of the host's): QEMU in
    // namespaces of its own behind slirp4netns, and the same attacks on the host fail.
    const uid = 3000 + (process.pid % 5000);
    const uhome = tmpDir('porthole-e2e-qemu-user-');
    let uph;
    try {
      const uimg = path.join(uhome, 'images', recipe);
      mkdirSync(uimg, { recursive: true });
      for (const f of ['vmlinuz', 'initrd.img', 'rootfs.qcow2', 'recipe.sha256']) {
        try { linkSync(path.join(images, recipe, f), path.join(uimg, f)); } catch { copyFileSync(path.join(images, recipe, f), path.join(uimg, f)); }
      }
      mkdirSync(path.join(uhome, 'bin'));
      const ucli = path.join(uhome, 'bin', 'porthole');
      const uagent = path.join(uhome, 'bin', 'porthole-agent');
      copyFileSync(CLI, ucli);
      copyFileSync(AGENT, uagent);
      for (const d of [uhome, path.join(uhome, 'images'), uimg, path.join(uhome, 'bin'), ucli, uagent]) chownSync(d, uid, uid);
      uph = (args) => execOnce('setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', 'env', '-i',
        `PATH=${process.env.PATH}`, `HOME=${uhome}`, `PORTHOLE_HOME=${uhome}/state`, `PORTHOLE_IMAGE_DIR=${uhome}/images`,
        `PORTHOLE_AGENT_BIN=${uagent}`, 'PORTHOLE_KEYCHAIN=0', ucli, ...args], { timeout: 10 * 60 * 1000 });
      r = await uph(['machine', 'create', '--provider', 'qemu', '--name', 'u1', '--json']);
      assert.equal(r.code, 0, `create as uid ${uid}: ${r.stderr}\n${tail(path.join(uhome, 'state/machines/u1/logs/qemu.log'))}`);
      const u1 = JSON.parse(r.stdout);
      assert.equal(u1.spec.user_netns, true, JSON.stringify(u1.spec));
      assert.equal(u1.isolated, true, JSON.stringify(u1));
      assert.match(u1.agent_url, /^http:\/\/127\.0\.0\.1:\d+$/, JSON.stringify(u1));
      const toku = (await uph(['machine', 'token', 'u1'])).stdout.trim();
      await assertVmOffTheHost(t, u1, toku, 'u1 (ordinary user)');
      r = await uph(['machine', 'destroy', 'u1']);
      assert.equal(r.code, 0, r.stderr);
      await waitFor(async () => procsMentioning(uhome).length === 0,
        { timeout: 20000, message: "the ordinary user's QEMU and slirp4netns to exit" });
    } finally {
      await uph?.(['machine', 'destroy', 'u1']).catch(() => {});
      if (!KEEP) rmSync(uhome, { recursive: true, force: true });
    }
  }));
});
