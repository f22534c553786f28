// The trust boundary, attacked from inside. Every test here plays the coding agent: it holds
// only the machine's agent token and runs commands through `POST /v1/exec` inside a real local
// sandbox made by the real `porthole` CLI, and asserts that what it tries fails. Python from
// the host's read-only /usr makes the raw syscalls (mount, keyctl, bpf, TIOCSTI, connect).
//
// As root (CI) the default network is `netns`; a second part creates an ordinary user with
// `useradd` and runs the same attacks on its machine (network `slirp`).
//
// PORTHOLE_E2E_KEEP=1 keeps the temp dirs.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { agentBin, tmpDir, tail, waitFor, sleep } from './harness.mjs';

const TARGET = process.env.CARGO_TARGET_DIR || '/work/target';
const CLI = process.env.PORTHOLE_CLI_BIN || path.join(TARGET, 'debug', 'porthole');
const AGENT = agentBin();
const KEEP = process.env.PORTHOLE_E2E_KEEP === '1';
const IS_ROOT = process.getuid() === 0;
const MARKER = `porthole-marker-${process.pid}-${Date.now()}`;

function run(cmd, args, { env = process.env, timeout = 120000, input } = {}) {
  return new Promise((resolve) => {
    const c = execFile(cmd, args, { env, timeout, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout: String(stdout), stderr: String(stderr) });
    });
    if (input !== undefined) c.stdin.end(input);
  });
}

/** A PORTHOLE_HOME with the CLI bound to it; `user`: run the CLI as that user (via runuser). */
function world(label, { user } = {}) {
  const home = tmpDir(`porthole-e2e-iso-${label}-`);
  let cli = CLI;
  let agent = AGENT;
  if (user) {
    // The user cannot walk into root's build directory: give it copies.
    chmodSync(home, 0o777);
    mkdirSync(path.join(home, 'bin'), { mode: 0o755 });
    cli = path.join(home, 'bin', 'porthole');
    agent = path.join(home, 'bin', 'porthole-agent');
    writeFileSync(cli, readFileSync(CLI), { mode: 0o755 });
    writeFileSync(agent, readFileSync(AGENT), { mode: 0o755 });
  }
  const machines = [];
  const w = {
    home,
    async ph(args, extraEnv = {}) {
      // The marker stands for the caller's cloud credentials and API keys.
      const env = { PATH: process.env.PATH, HOME: user ? `/home/${user}` : process.env.HOME, PORTHOLE_HOME: home, PORTHOLE_AGENT_BIN: agent, AWS_SECRET_ACCESS_KEY: MARKER, GITHUB_TOKEN: MARKER, ...extraEnv };
      if (!user) return run(cli, args, { env });
      const envArgs = Object.entries(env).map(([k, v]) => `${k}=${v}`);
      return run('runuser', ['-u', user, '--', 'env', '-i', ...envArgs, cli, ...args], { env });
    },
    async create(name, extra = []) {
      const r = await w.ph(['machine', 'create', '--name', name, '--json', ...extra]);
      assert.equal(r.code, 0, `create ${name} failed:\n${r.stderr}\n${w.logs(name)}`);
      machines.push(name);
      const m = JSON.parse(r.stdout);
      const tok = await w.ph(['machine', 'token', name]);
      const atok = await w.ph(['machine', 'token', name, '--agent']);
      assert.equal(tok.code, 0, tok.stderr);
      assert.equal(atok.code, 0, atok.stderr);
      m.operatorToken = tok.stdout.trim();
      m.agentToken = atok.stdout.trim();
      assert.notEqual(m.operatorToken, m.agentToken, 'two different tokens');
      return m;
    },
    logs(name) {
      const dir = path.join(home, 'machines', name, 'logs');
      return ['sandbox.log', 'agent.log', 'slirp.log', 'xserver.log']
        .map((f) => path.join(dir, f)).filter(existsSync)
        .map((f) => `--- ${f}\n${tail(f, 20)}`).join('\n');
    },
    async cleanup() {
      for (const n of machines) await w.ph(['machine', 'destroy', n]);
      if (!KEEP) rmSync(home, { recursive: true, force: true });
    },
  };
  return w;
}

async function api(m, method, p, { token = m.agentToken, body, headers = {} } = {}) {
  const res = await fetch(`${m.agent_url}${p}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body !== undefined && typeof body !== 'string' ? { 'Content-Type': 'application/json' } : {}), ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text };
}

/** Runs a shell command inside the machine as the coding agent (agent token). */
async function inside(m, command, timeout_ms = 20000) {
  const r = await api(m, 'POST', '/v1/exec', { body: { command, timeout_ms } });
  assert.equal(r.status, 200, `exec ${command}: ${r.status} ${r.text}`);
  return r.json;
}

/** Python inside the machine; prints what it printed, `ERR <errno name>` on OSError. */
async function py(m, code) {
  const script = `import ctypes, os, socket, errno, sys\nlibc = ctypes.CDLL(None, use_errno=True)\ndef sc(*a):\n    r = libc.syscall(*a)\n    return 'OK' if r >= 0 else 'ERR ' + errno.errorcode[ctypes.get_errno()]\n${code}\n`;
  const b64 = Buffer.from(script).toString('base64');
  const r = await inside(m, `echo ${b64} | base64 -d > /tmp/p.py && python3 /tmp/p.py 2>&1`);
  return r.stdout.trim();
}

function listen(host, port = 0) {
  return new Promise((resolve, reject) => {
    const s = net.createServer((c) => { c.end('HOST-SERVICE\n'); });
    s.on('error', reject);
    s.listen(port, host, () => resolve(s));
  });
}

function hostAddresses() {
  return Object.values(os.networkInterfaces()).flat()
    .filter((i) => i.family === 'IPv4' && !i.internal).map((i) => i.address);
}

/** What `connect()` from inside gives: `OK` or `ERR ...`, 2 s timeout (drops time out). */
function connectCode(host, port) {
  return `s = socket.socket(); s.settimeout(2)\ntry:\n    s.connect((${JSON.stringify(host)}, ${port})); print('OK', s.recv(64))\nexcept Exception as e:\n    print('ERR', type(e).__name__, e)`;
}

/** Two web servers in a network namespace of the test's own (10.214.7.2 and .3, reached
 *  through a veth from the host, as the internet would be): the egress allowlist's targets. */
async function egressServers() {
  const ns = `phiso-eg-${process.pid}`;
  const sh = (c) => run('sh', ['-c', c]);
  await sh(`ip netns add ${ns} && ip link add phegv0 type veth peer name phegv1 && ip link set phegv1 netns ${ns} && ip addr add 10.214.7.1/24 dev phegv0 && ip link set phegv0 up && ip -n ${ns} addr add 10.214.7.2/24 dev phegv1 && ip -n ${ns} addr add 10.214.7.3/24 dev phegv1 && ip -n ${ns} link set phegv1 up && ip -n ${ns} link set lo up && ip -n ${ns} route add default via 10.214.7.1`);
  const server = spawn('ip', ['netns', 'exec', ns, 'python3', '-m', 'http.server', '8080', '--bind', '0.0.0.0'], { stdio: 'ignore' });
  // A UDP echo on port 53, as a DNS tunnel's far end would be.
  const echo = spawn('ip', ['netns', 'exec', ns, 'python3', '-c', "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 53))\nwhile True:\n    d, a = s.recvfrom(512); s.sendto(d, a)"], { stdio: 'ignore' });
  await waitFor(async () => (await run('curl', ['-s', '-m', '1', '-o', '/dev/null', 'http://10.214.7.3:8080/'])).code === 0, { timeout: 10000, message: 'the egress test servers' });
  return async () => { server.kill('SIGKILL'); echo.kill('SIGKILL'); await sh(`ip netns del ${ns}; ip link del phegv0 2>/dev/null; true`); };
}

function attacks(label, opts) {
  describe(`isolation (${label})`, { timeout: 10 * 60 * 1000 }, () => {
    let w;
    let m;
    let m2;
    const servers = [];
    before(async () => {
      w = world(label, opts);
      m = await w.create(`iso1-${label}`, opts.createArgs ?? []);
    });
    after(async () => {
      for (const s of servers) s.close();
      if (w) await w.cleanup();
    });

    it('a. the machine is isolated and says so; two tokens', async () => {
      assert.equal(m.isolated, true, JSON.stringify(m));
      assert.match(m.spec.network, opts.network);
      const list = JSON.parse((await w.ph(['machine', 'list', '--json'])).stdout);
      assert.equal(list.find((x) => x.name === m.name).isolated, true);
    });

    it('b. no root, no capabilities, no remounts, no writes outside what the machine owns', async () => {
      const st = (await inside(m, 'id -u; grep -E "^Cap(Eff|Prm|Bnd)" /proc/self/status')).stdout;
      assert.match(st, /^1000\n/, st);
      assert.match(st, /CapEff:\s+0000000000000000/, st);
      assert.match(st, /CapPrm:\s+0000000000000000/, st);
      for (const cmd of [
        'mount -o remount,rw /usr', 'touch /usr/porthole-escape', 'touch /etc/porthole-escape',
        'echo 1 > /proc/sys/kernel/sysrq', 'echo h > /proc/sysrq-trigger',
        'mknod /tmp/mem c 1 1', 'unshare -U true', 'unshare -r true', 'chroot / true',
      ]) {
        const r = await inside(m, `${cmd} 2>&1; echo "exit=$?"`);
        assert.doesNotMatch(r.stdout, /exit=0/, `${cmd} must fail: ${r.stdout}`);
      }
      assert.ok(!existsSync('/usr/porthole-escape') && !existsSync('/etc/porthole-escape'));
    });

    it('c. seccomp refuses mount, keyrings, bpf, perf, modules, ptrace, new user namespaces, TIOCSTI', async () => {
      const out = await py(m, [
        "print('mount', sc(165, b'none', b'/tmp', b'tmpfs', 0, 0))",
        "print('keyctl', sc(250, 0, 0, 0, 0, 0))",
        "print('add_key', sc(248, b'user', b'k', b'v', 1, 0xfffffffd))",
        "print('bpf', sc(321, 0, 0, 0))",
        "print('perf', sc(298, 0, 0, -1, -1, 0))",
        "print('init_module', sc(175, 0, 0, b''))",
        "print('kexec', sc(246, 0, 0, 0, 0))",
        "print('ptrace', sc(101, 16, 1, 0, 0))",
        "print('unshare', sc(272, 0x10000000))",
        "print('setns', sc(308, 0, 0))",
        "import fcntl, termios\ntry:\n    fd = os.open('/dev/tty', os.O_RDWR); print('tty OK')\nexcept OSError as e:\n    print('tty ERR', errno.errorcode[e.errno])",
        "print('tiocsti', sc(16, 1, 0x5412, ctypes.c_char_p(b'x')))",
      ].join('\n'));
      const got = Object.fromEntries(out.split('\n').map((l) => { const [k, ...v] = l.split(' '); return [k, v.join(' ')]; }));
      for (const k of ['mount', 'keyctl', 'add_key', 'bpf', 'perf', 'init_module', 'kexec', 'ptrace', 'unshare', 'setns', 'tiocsti']) {
        assert.equal(got[k], 'ERR EPERM', `${k}: ${out}`);
      }
      // --new-session: no controlling terminal to type into, whatever started the CLI.
      assert.match(got.tty, /ERR/, out);
    });

    it('d. nothing of the caller\'s environment inside, not even in /proc/1/environ', async () => {
      const r = await inside(m, 'env; cat /proc/1/environ | tr "\\0" "\\n"; for p in /proc/[0-9]*; do cat $p/environ 2>/dev/null | tr "\\0" "\\n"; done');
      assert.ok(!r.stdout.includes(MARKER), 'the caller\'s secrets reached the machine');
      assert.doesNotMatch(r.stdout, /AWS_SECRET_ACCESS_KEY|GITHUB_TOKEN=/);
    });

    it('e. the agent token is all the machine holds: no operator token inside, 403 on operator endpoints', async () => {
      const r = await inside(m, 'echo "T=$PORTHOLE_TOKEN"; ls /run/porthole/; cat /run/porthole/token /run/porthole/agent-token 2>&1; cat /proc/*/environ 2>/dev/null | tr "\\0" "\\n" | grep -c PORTHOLE_TOKEN');
      assert.ok(!r.stdout.includes(m.operatorToken), 'the operator token is readable inside');
      assert.match(r.stdout, /No such file/);
      // The agent's own memory and environment are closed to the machine's processes.
      const mem = await inside(m, 'for p in $(pgrep -x porthole-agent); do cat /proc/$p/environ >/dev/null 2>&1 && echo READ-ENV; head -c1 /proc/$p/mem >/dev/null 2>&1 && echo READ-MEM; done; echo done');
      assert.doesNotMatch(mem.stdout, /READ-/, mem.stdout);
      for (const [method, p, body] of [
        ['POST', '/v1/control', { action: 'take' }], ['POST', '/v1/control', { action: 'release' }],
        ['POST', '/v1/control', { action: 'resume_agent' }], ['POST', '/v1/whep', 'v=0'],
        ['DELETE', '/v1/whep/x', undefined], ['GET', '/v1/recordings', undefined],
        ['POST', '/v1/environment', { environment: {}, secrets: { X: 'y' } }],
        ['POST', '/v1/sessions', {}], ['POST', '/v1/display', { width: 800, height: 600 }],
      ]) {
        const res = await api(m, method, p, { body });
        assert.equal(res.status, 403, `${method} ${p} with the agent token: ${res.status} ${res.text}`);
        assert.equal(res.json?.error?.code, 'wrong_scope');
      }
      for (const [method, p] of [['GET', '/v1/control'], ['GET', '/v1/events?after=0'], ['GET', '/v1/screenshot']]) {
        assert.equal((await api(m, method, p)).status, 200, `${method} ${p} with the agent token`);
      }
      assert.equal((await api(m, 'GET', '/v1/recordings', { token: m.operatorToken })).status, 200);
    });

    it('f. X: a cookie per machine, and another machine cannot reach this one\'s display', async () => {
      const d = m.spec.display;
      const ok = await inside(m, `xdpyinfo -display :${d} >/dev/null 2>&1 && echo WITH-COOKIE`);
      assert.match(ok.stdout, /WITH-COOKIE/);
      const no = await inside(m, `XAUTHORITY=/dev/null xdpyinfo -display :${d} 2>&1; echo "exit=$?"`);
      assert.doesNotMatch(no.stdout, /exit=0/, `no cookie must be refused: ${no.stdout}`);
      m2 = await w.create(`iso2-${label}`, opts.createArgs ?? []);
      const out = await py(m2, `for a in ['\\0/tmp/.X11-unix/X${d}', '/tmp/.X11-unix/X${d}']:\n    s = socket.socket(socket.AF_UNIX)\n    try:\n        s.connect(a); print('REACHED')\n    except OSError as e:\n        print('ERR', errno.errorcode[e.errno])`);
      assert.doesNotMatch(out, /REACHED/, out);
      const x = await inside(m2, `xdpyinfo -display :${d} 2>&1; echo "exit=$?"`);
      assert.doesNotMatch(x.stdout, /exit=0/, x.stdout);
    });

    it('g. host services are unreachable from inside (loopback, every host address, link-local); the agent is not', async () => {
      const lo = await listen('127.0.0.1');
      servers.push(lo);
      const targets = [['127.0.0.1', lo.address().port], ['10.0.2.2', lo.address().port]];
      for (const a of hostAddresses()) {
        const s = await listen(a);
        servers.push(s);
        targets.push([a, s.address().port]);
      }
      if (m.spec.net_index) targets.push([`10.213.${m.spec.net_index}.1`, servers[1]?.address().port ?? lo.address().port]);
      targets.push(['169.254.169.254', 80]);
      for (const [h, p] of targets) {
        const out = await py(m, connectCode(h, p));
        assert.doesNotMatch(out, /^OK/, `${h}:${p} reached from inside: ${out}`);
      }
      // The host still reaches the agent.
      assert.equal((await api(m, 'GET', '/v1/health')).status, 200);
    });

    it('i. egress: an allowlist lets through what it names and refuses the rest, each on the timeline', { skip: !IS_ROOT && 'the test servers need a network namespace (root)' }, async () => {
      const stop = await egressServers();
      try {
        const ws = path.join(w.home, `egress-ws-${label}`);
        mkdirSync(path.join(ws, '.porthole'), { recursive: true, mode: 0o755 });
        writeFileSync(path.join(ws, '.porthole', 'environment.json'), JSON.stringify({ name: 'egress', egressMode: 'allowlist', egressAllowlist: ['10.214.7.2', '*.example.com'] }), { mode: 0o644 });
        if (opts.user) await run('chown', ['-R', opts.user, ws]);
        const e = await w.create(`iso3-${label}`, [...(opts.createArgs ?? []), '--workspace', ws]);
        const code = async (url) => (await inside(e, `curl -s -m 5 -o /dev/null -w "%{http_code}" ${url}; true`)).stdout.trim();
        assert.equal(await code('http://10.214.7.2:8080/'), '200', 'the allowlisted address is reached');
        assert.equal(await code('http://10.214.7.3:8080/'), '000', 'an address the list does not name is refused');
        // A forged Host header naming an allowed domain does not open another address.
        assert.equal(await code('-H "Host: www.example.com" http://10.214.7.3:8080/'), '000');
        // Not TCP: refused too (nothing answers, the packet never leaves).
        const udp = await py(e, "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)\ntry:\n    s.sendto(b'x', ('10.214.7.3', 8080)); s.recvfrom(10); print('ANSWER')\nexcept Exception as ex:\n    print('ERR', type(ex).__name__)");
        assert.doesNotMatch(udp, /ANSWER/, udp);
        // Port 53 goes to the machine's resolvers only: to anything else it is no tunnel.
        const dns = await py(e, "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)\ntry:\n    s.sendto(b'tunnel', ('10.214.7.3', 53)); print('ANSWER', s.recvfrom(10)[0])\nexcept Exception as ex:\n    print('ERR', type(ex).__name__)");
        assert.doesNotMatch(dns, /ANSWER/, dns);
        // The far end does answer, from the host: the refusal above is the rules'.
        const fromHost = await run('python3', ['-c', "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\ns.sendto(b'tunnel', ('10.214.7.3', 53)); print('ANSWER', s.recvfrom(10)[0])"]);
        assert.match(fromHost.stdout, /ANSWER b'tunnel'/, `${fromHost.stdout}${fromHost.stderr}`);
        let egress = [];
        await waitFor(async () => {
          const ev = await api(e, 'GET', '/v1/events?after=0&limit=100000', { token: e.operatorToken });
          egress = ev.json.events.filter((x) => x.kind === 'egress').map((x) => x.data);
          return egress.some((d) => d.allowed === false && d.host === 'www.example.com');
        }, { timeout: 10000, message: 'the egress events' });
        assert.ok(egress.some((d) => d.host === '10.214.7.2' && d.port === 8080 && d.allowed === true), JSON.stringify(egress));
        assert.ok(egress.some((d) => d.host === '10.214.7.3' && d.port === 8080 && d.allowed === false), JSON.stringify(egress));
        // The agent token sees them too (they are the machine's own record, no payload).
        const mine = await api(e, 'GET', '/v1/events?after=0&limit=100000');
        assert.ok(mine.json.events.some((x) => x.kind === 'egress'));
        // The filter is out of the machine's reach: no process of it inside, and the rules
        // cannot be changed from inside.
        const ps = (await inside(e, 'ps -e -o args=; nft flush ruleset 2>&1; echo "nft=$?"')).stdout;
        assert.doesNotMatch(ps, /egress-proxy/, ps);
        assert.doesNotMatch(ps, /nft=0/, ps);
        assert.equal(await code('http://10.214.7.3:8080/'), '000', 'still refused after the attempt');
      } finally {
        await stop();
      }
    });

    it('h. evidence: the coding agent cannot see, signal or replace porthole-agent, nor reach its data', async () => {
      // porthole-agent, the X server and the recorder are not among its processes: no pid to
      // signal, no /proc/<pid> to open.
      const ps = (await inside(m, 'ps -e -o comm=')).stdout;
      assert.doesNotMatch(ps, /^(Xvfb|Xvnc|openbox)$/m, ps);
      assert.equal(ps.split('\n').filter((l) => l === 'porthole-agent').length, 1, `only the workload's own pid 1: ${ps}`);
      // The data directory (events, the video, meta.json, the token files) is not there.
      const look = await inside(m, 'ls -A /run/porthole/agent; find / -xdev \\( -name events.jsonl -o -name meta.json -o -name "*.mp4" \\) 2>/dev/null; echo end');
      assert.equal(look.stdout.trim(), 'terminals\nend', look.stdout);
      // Everything it can signal, stopped and killed (itself included), and pid 1 from inside.
      await api(m, 'POST', '/v1/exec', { body: { command: 'kill -STOP 1; kill -KILL 1; kill -STOP -1; kill -KILL -1', timeout_ms: 5000 } });
      const health = await api(m, 'GET', '/v1/health', { token: m.operatorToken });
      assert.equal(health.status, 200, health.text);
      // The agent still serves and still records, and the attack is on its timeline.
      const after = await inside(m, 'echo still-here');
      assert.equal(after.stdout.trim(), 'still-here');
      const ev = await api(m, 'GET', '/v1/events?after=0', { token: m.operatorToken });
      const execs = (ev.json?.events ?? ev.json ?? []).filter((e) => e.kind === 'exec').map((e) => e.data.command);
      assert.ok(execs.some((c) => c.includes('kill -KILL -1')), `the attack is recorded: ${JSON.stringify(execs)}`);
      // Nor can it take the agent's port to catch the operator's token from the next request.
      const port = Number(String(m.spec.listen ?? new URL(m.agent_url).host).split(':').pop());
      const bind = await py(m, `s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\ntry:\n    s.bind(('0.0.0.0', ${port})); s.listen(); print('BOUND')\nexcept OSError as e:\n    print('ERR', errno.errorcode[e.errno])`);
      assert.equal(bind, 'ERR EADDRINUSE', bind);
      // Nor read or rewrite the frames between capture and encode: the capture's buffer is a
      // memfd only porthole-agent and the X server hold, not a SysV segment any process of
      // the uid could attach (the workload shares the IPC namespace for X's MIT-SHM). Every
      // segment made outside the workload's PID namespace (cpid 0 as it reads them):
      const shm = await py(m, `libc.shmat.restype = ctypes.c_void_p\nrows = [l.split() for l in open('/proc/sysvipc/shm').read().split('\\n')[1:] if l.strip()]\noutside = [int(f[1]) for f in rows if f[4] == '0']\nok = [i for i in outside if libc.shmat(i, None, 0o10000) not in (None, ctypes.c_void_p(-1).value)]\nprint('segments', len(rows), 'outside', len(outside), 'attached', len(ok))`);
      assert.match(shm, /attached 0$/, shm);
    });
  });
}

attacks(IS_ROOT ? 'root' : 'user', { network: IS_ROOT ? /^netns$/ : /^slirp$/ });

if (IS_ROOT) {
  const USER = 'phiso';
  before(async () => {
    const r = await run('id', [USER]);
    if (r.code !== 0) {
      const u = await run('useradd', ['-m', '-s', '/bin/bash', USER]);
      assert.equal(u.code, 0, u.stderr);
    }
  });
  // The same attacks on an ordinary user's machine (bubblewrap's own namespaces, slirp4netns).
  attacks('user', { user: USER, network: /^slirp$/ });
}
