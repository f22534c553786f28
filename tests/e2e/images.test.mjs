// Environments from a Dockerfile or an image (Cursor's `build` and `image`), end to end with
// real podman and the real CLI: a base image made here from a root filesystem the test builds
// (busybox, nothing else: no registry is reachable, and an image without tmux, bash or glibc
// shows that Porthole's parts do not come from the image), a Dockerfile `FROM` it whose `RUN`
// installs a tool, and a repository whose `.cursor/environment.json` names that Dockerfile.
//
// Checked: the tool from the image works in `exec`, the install step and a terminal; the root
// the coding agent sees is the image's, the workspace is mounted and was not copied in; a
// second create runs no build step; a failing `RUN` fails create with its step and log; the
// same for `dockerfileContents` and `image`; a snapshot of an image machine boots without a
// build; computer use and the live stream work on an image-booted machine.
//
// As root (CI), podman builds in Porthole's own user namespace (RUN steps as an unprivileged
// host uid range); the last test makes an ordinary user (`useradd`, which gives it a
// subordinate uid range) and builds and boots the same through its rootless podman.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, copyFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { agentBin, tmpDir, tail, waitFor, launchChromium, openViewer, viewerStats } from './harness.mjs';

const TARGET = process.env.CARGO_TARGET_DIR || '/work/target';
const CLI = process.env.PORTHOLE_CLI_BIN || path.join(TARGET, 'debug', 'porthole');
const AGENT = agentBin();
const KEEP = process.env.PORTHOLE_E2E_KEEP === '1';
const IS_ROOT = process.getuid() === 0;
const BASE = `localhost/porthole-e2e-base:${process.pid}`;
const BUSYBOX = '/bin/busybox';

function run(cmd, args, { env = process.env, timeout = 300000, input, cwd } = {}) {
  return new Promise((resolve) => {
    const c = execFile(cmd, args, { env, timeout, cwd, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout: String(stdout), stderr: String(stderr) });
    });
    if (input !== undefined) c.stdin.end(input);
  });
}

const home = IS_ROOT ? tmpDir('porthole-e2e-img-') : null;
const machines = [];

function ph(args) {
  // PORTHOLE_PROGRESS=1: the build's steps on stderr, as a terminal would get them.
  return run(CLI, args, { env: { PATH: process.env.PATH, HOME: process.env.HOME, PORTHOLE_HOME: home, PORTHOLE_AGENT_BIN: AGENT, PORTHOLE_PROGRESS: '1' } });
}

function logs(name) {
  const dir = path.join(home, 'machines', name, 'logs');
  return ['sandbox.log', 'agent.log', 'xserver.log'].map((f) => path.join(dir, f)).filter(existsSync)
    .map((f) => `--- ${f}\n${tail(f, 25)}`).join('\n');
}

async function create(name, extra) {
  const r = await ph(['machine', 'create', '--name', name, '--json', ...extra]);
  if (r.code === 0) machines.push(name);
  return r;
}

async function createOk(name, extra) {
  const r = await create(name, extra);
  assert.equal(r.code, 0, `create ${name} failed:\n${r.stderr}\n${logs(name)}`);
  const m = JSON.parse(r.stdout);
  m.agentToken = (await ph(['machine', 'token', name, '--agent'])).stdout.trim();
  m.operatorToken = (await ph(['machine', 'token', name])).stdout.trim();
  m.stderr = r.stderr;
  return m;
}

/** One request on a connection of its own: a destroyed machine's address is the next one's
 *  (its network index is reused), and a pooled keep-alive socket to it would be reset. */
function api(m, method, p, { token = m.agentToken, body } = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(`${m.agent_url}${p}`, {
      method,
      agent: false,
      headers: { Authorization: `Bearer ${token}`, ...(data !== undefined ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } : {}) },
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        let json = null;
        try { json = JSON.parse(text); } catch { /* not JSON */ }
        resolve({ status: res.statusCode, json, text, headers: res.headers });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(data);
  });
}

async function inside(m, command) {
  let r;
  try {
    r = await api(m, 'POST', '/v1/exec', { body: { command, timeout_ms: 20000 } });
  } catch (e) {
    throw new Error(`exec on ${m.name} at ${m.agent_url}: ${e.message} (${e.code ?? ''})\n${logs(m.name)}`);
  }
  assert.equal(r.status, 200, `exec ${command}: ${r.status} ${r.text}`);
  return r.json;
}

async function events(m) {
  const r = await api(m, 'GET', '/v1/events?after=0&limit=100000');
  assert.equal(r.status, 200, r.text);
  return Array.isArray(r.json) ? r.json : r.json.events;
}

/** A repository whose `.cursor/environment.json` is `env`, with `files` beside it. */
function repo(label, env, files = {}) {
  const dir = path.join(home, `repo-${label}`);
  mkdirSync(path.join(dir, '.cursor'), { recursive: true });
  writeFileSync(path.join(dir, '.cursor', 'environment.json'), JSON.stringify(env, null, 2));
  for (const [p, text] of Object.entries(files)) writeFileSync(path.join(dir, p), text);
  // What only the workspace holds: it must appear under /workspace, never inside the image.
  writeFileSync(path.join(dir, 'WORKSPACE_ONLY.txt'), `marker-${label}\n`);
  return dir;
}

const TOOL_DOCKERFILE = `FROM ${BASE}
RUN mkdir -p /usr/local/bin && printf '#!/bin/sh\\necho hello-from-image "$@"\\n' > /usr/local/bin/imgtool && chmod +x /usr/local/bin/imgtool
ENV IMAGE_GREETING=set-by-dockerfile
`;

const TOOL_ENV = {
  build: { dockerfile: 'Dockerfile', context: '.' },
  install: 'imgtool install > install-out.txt',
  terminals: [{ name: 'tool', command: 'imgtool terminal; sleep 600' }],
};

describe('environments from a Dockerfile or an image (podman)', { skip: IS_ROOT ? false : 'makes its base image and an ordinary user as root' }, () => {
  before(async () => {
    const pm = await run('podman', ['--version']);
    assert.equal(pm.code, 0, `podman is not installed (bash packaging/install-deps.sh): ${pm.stderr}`);
    assert.ok(existsSync(BUSYBOX), `${BUSYBOX} missing (apt-get install busybox-static)`);
    // The base image: a root filesystem of busybox alone, imported (nothing can be pulled).
    const root = path.join(home, 'base-root');
    for (const d of ['bin', 'etc', 'tmp', 'usr/local/bin', 'root']) mkdirSync(path.join(root, d), { recursive: true });
    copyFileSync(BUSYBOX, path.join(root, 'bin', 'busybox'));
    const applets = (await run(BUSYBOX, ['--list'])).stdout.split('\n').filter(Boolean);
    for (const a of applets) if (a !== 'busybox') symlinkSync('busybox', path.join(root, 'bin', a));
    writeFileSync(path.join(root, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    const tar = await run('tar', ['-C', root, '-cf', path.join(home, 'base.tar'), '.']);
    assert.equal(tar.code, 0, tar.stderr);
    const imp = await run('podman', ['import', path.join(home, 'base.tar'), BASE]);
    assert.equal(imp.code, 0, `podman import: ${imp.stderr}`);
  });

  after(async () => {
    for (const n of machines) await ph(['machine', 'destroy', n]);
    // Images this test made (its base and what was built from it), by tag.
    const ls = await run('podman', ['images', '--format', '{{.Repository}}:{{.Tag}} {{.ID}}']);
    await run('podman', ['rmi', '-f', BASE]);
    for (const line of ls.stdout.split('\n')) {
      const [ref] = line.split(' ');
      if (ref && ref.startsWith('localhost/porthole-env:')) {
        const hist = await run('podman', ['image', 'tree', ref]);
        if (hist.code !== 0 || hist.stdout.includes(String(process.pid))) await run('podman', ['rmi', '-f', ref]);
      }
    }
    if (!KEEP && home) rmSync(home, { recursive: true, force: true });
  });

  let m1;
  let ws1;

  it('builds the Dockerfile and boots the machine from the image: tool in exec, install and a terminal; workspace mounted, not copied', async (t) => {
    ws1 = repo('tool', TOOL_ENV, { '.cursor/Dockerfile': TOOL_DOCKERFILE });
    const started = Date.now();
    m1 = await createOk('img1', ['--workspace', ws1]);
    t.diagnostic(`cold build + boot: ${Date.now() - started} ms`);
    // The build streamed its steps to the CLI.
    assert.match(m1.stderr, /build step 2\/3: RUN mkdir -p \/usr\/local\/bin/, m1.stderr);

    const tool = await inside(m1, 'imgtool exec; echo "greeting=$IMAGE_GREETING"');
    assert.equal(tool.exit_code, 0, JSON.stringify(tool));
    assert.match(tool.stdout, /hello-from-image exec/);
    assert.match(tool.stdout, /greeting=set-by-dockerfile/, 'the image\'s ENV reaches its programs');
    // The root is the image's: busybox's sh, no host Python, no bash; the workspace is there.
    const root = await inside(m1, 'readlink /bin/sh; test -e /usr/bin/python3 && echo host-python || echo no-python; test -e /bin/bash && echo bash || echo no-bash; cat /workspace/WORKSPACE_ONLY.txt; pwd');
    assert.match(root.stdout, /^busybox$/m, root.stdout);
    assert.match(root.stdout, /no-python/);
    assert.match(root.stdout, /no-bash/);
    assert.match(root.stdout, /marker-tool/);
    assert.match(root.stdout, /^\/workspace$/m);

    // The install step ran in the image, in the workspace.
    await waitFor(() => existsSync(path.join(ws1, 'install-out.txt')), { timeout: 30000, message: 'install-out.txt' });
    assert.match(readFileSync(path.join(ws1, 'install-out.txt'), 'utf8'), /hello-from-image install/);

    // The terminal (tmux, from Porthole's side: the image has none) ran the image's tool.
    let evs = [];
    await waitFor(async () => {
      evs = await events(m1);
      return evs.some((e) => e.kind === 'terminal' && e.data.name === 'tool' && /hello-from-image terminal/.test(e.data.text));
    }, { timeout: 30000, message: 'terminal output from the image tool' });
    const build = evs.find((e) => e.kind === 'step' && e.data.step === 'build');
    assert.ok(build, `no build step event: ${JSON.stringify(evs.filter((e) => e.kind === 'step'))}`);
    assert.equal(build.data.state, 'done', JSON.stringify(build));
    assert.match(build.data.image, /^localhost\/porthole-env:/);

    // The workspace was not copied into the image: the unpacked root has no trace of it.
    const oci = path.join(home, 'images', 'oci');
    for (const id of readdirSync(oci).filter((d) => !d.includes('.'))) {
      const r = await run('grep', ['-rl', 'marker-tool', path.join(oci, id, 'rootfs')]);
      assert.notEqual(r.code, 0, `the workspace is in the image ${id}: ${r.stdout}`);
    }
  });

  it('computer use and the live stream work on the image-booted machine', async (t) => {
    const shot = await api(m1, 'POST', '/v1/computer', { body: { action: 'screenshot' } });
    assert.equal(shot.status, 200, shot.text);
    assert.ok(String(shot.json.base64_image || '').length > 1000, 'a screenshot');
    const mv = await api(m1, 'POST', '/v1/computer', { body: { action: 'mouse_move', coordinate: [123, 77] } });
    assert.equal(mv.status, 200, mv.text);
    const pos = await api(m1, 'POST', '/v1/computer', { body: { action: 'cursor_position' } });
    assert.match(String(pos.json.output), /X=123,\s*Y=77/, pos.text);
    const browser = await launchChromium();
    try {
      const page = await openViewer(browser, { url: m1.agent_url, token: m1.operatorToken });
      let st;
      await waitFor(async () => { st = await viewerStats(page); return st.framesDecoded > 0; },
        { timeout: 60000, interval: 250, message: 'framesDecoded > 0' });
      t.diagnostic(`viewer: ${JSON.stringify(st)}`);
    } finally {
      await browser.close().catch(() => {});
    }
  });

  it('a second create from the unchanged Dockerfile runs no build step', async (t) => {
    const started = Date.now();
    const m = await createOk('img2', ['--workspace', repo('tool2', TOOL_ENV, { '.cursor/Dockerfile': TOOL_DOCKERFILE })]);
    t.diagnostic(`cached create: ${Date.now() - started} ms`);
    assert.doesNotMatch(m.stderr, /build step/, m.stderr);
    assert.match(m.stderr, /no build/, m.stderr);
    assert.match((await inside(m, 'imgtool again')).stdout, /hello-from-image again/);
    let build;
    await waitFor(async () => {
      build = (await events(m)).find((e) => e.kind === 'step' && e.data.step === 'build');
      return build;
    }, { timeout: 20000, message: 'build step event' });
    assert.equal(build.data.steps_run, 0, JSON.stringify(build));
    await ph(['machine', 'destroy', 'img2']);
  });

  it('a snapshot of an image machine keeps its root and boots without a build', async (t) => {
    const w = await inside(m1, 'echo kept > /usr/local/bin/written-after-boot');
    assert.equal(w.exit_code, 0, JSON.stringify(w));
    const snap = await ph(['machine', 'snapshot', 'img1', '--name', 'imgsnap', '--json']);
    assert.equal(snap.code, 0, snap.stderr);
    const started = Date.now();
    const m = await createOk('img3', ['--workspace', ws1, '--from-snapshot', 'imgsnap']);
    t.diagnostic(`create from snapshot: ${Date.now() - started} ms`);
    assert.doesNotMatch(m.stderr, /build step/, m.stderr);
    const r = await inside(m, 'cat /usr/local/bin/written-after-boot; imgtool snap');
    assert.match(r.stdout, /kept/);
    assert.match(r.stdout, /hello-from-image snap/);
    await ph(['machine', 'destroy', 'img3']);
  });

  it('a failing RUN fails create with its step, command and log', async () => {
    const ws = repo('fail', {
      build: { dockerfileContents: `FROM ${BASE}\nRUN echo preparing-things\nRUN echo boom-before-failing && exit 3\n` },
    });
    const r = await create('imgfail', ['--workspace', ws]);
    assert.notEqual(r.code, 0, `create succeeded: ${r.stdout}`);
    assert.match(r.stderr, /failed at step 3\/3/, r.stderr);
    assert.match(r.stderr, /RUN echo boom-before-failing && exit 3/, r.stderr);
    assert.match(r.stderr, /boom-before-failing/, r.stderr);
    const ls = await ph(['machine', 'list', '--json']);
    assert.ok(!JSON.parse(ls.stdout).some((m) => m.name === 'imgfail' && m.status === 'running'), ls.stdout);
  });

  it('dockerfileContents builds, and copying the repository in is warned about', async () => {
    const ws = repo('inline', {
      build: { dockerfileContents: `FROM ${BASE}\nCOPY . /src\nRUN echo inline-built > /etc/inline-marker\n`, context: '..' },
    });
    const m = await createOk('imginline', ['--workspace', ws]);
    assert.match(m.stderr, /warning: Dockerfile line 2: `COPY \. \/src` copies the whole repository/, m.stderr);
    assert.match((await inside(m, 'cat /etc/inline-marker')).stdout, /inline-built/);
    await ph(['machine', 'destroy', 'imginline']);
  });

  it('image names a local image; a missing one and a missing context are named errors', async () => {
    const m = await createOk('imgnamed', ['--workspace', repo('named', { image: BASE, install: 'echo named > named-out.txt' })]);
    const r = await inside(m, 'readlink /bin/sh');
    assert.match(r.stdout, /busybox/);
    await waitFor(() => existsSync(path.join(home, 'repo-named', 'named-out.txt')), { timeout: 20000, message: 'install in the named image' });
    await ph(['machine', 'destroy', 'imgnamed']);

    const missing = await create('imgmissing', ['--workspace', repo('missing', { image: 'localhost/no-such-image:1' })]);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /image: 'localhost\/no-such-image:1' is not in podman's local storage/, missing.stderr);

    const noctx = await create('imgnoctx', ['--workspace', repo('noctx', { build: { dockerfile: 'Dockerfile', context: 'nope' } }, { '.cursor/Dockerfile': TOOL_DOCKERFILE })]);
    assert.notEqual(noctx.code, 0);
    assert.match(noctx.stderr, /build\.context: .*nope is not a directory/, noctx.stderr);
  });

  it('as an ordinary user: rootless podman (the user\'s subuid range) builds and boots the same', async () => {
    const USER = 'phimg';
    if ((await run('id', [USER])).code !== 0) {
      const u = await run('useradd', ['-m', '-s', '/bin/sh', USER]);
      assert.equal(u.code, 0, u.stderr);
    }
    const sub = readFileSync('/etc/subuid', 'utf8');
    assert.match(sub, new RegExp(`^${USER}:`, 'm'), 'useradd gives a new user a subordinate uid range on Debian');
    // Copies the user can read: root's build directory and the test's home are closed to it.
    const dir = path.join('/tmp', `porthole-e2e-img-user-${process.pid}`);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(path.join(dir, 'bin'), { recursive: true });
    for (const [src, name] of [[CLI, 'porthole'], [AGENT, 'porthole-agent']]) copyFileSync(src, path.join(dir, 'bin', name));
    copyFileSync(path.join(home, 'base.tar'), path.join(dir, 'base.tar'));
    const ws = path.join(dir, 'repo');
    mkdirSync(path.join(ws, '.cursor'), { recursive: true });
    writeFileSync(path.join(ws, '.cursor', 'environment.json'), JSON.stringify({ build: { dockerfile: 'Dockerfile' }, install: 'imgtool user > user-out.txt' }));
    writeFileSync(path.join(ws, '.cursor', 'Dockerfile'), TOOL_DOCKERFILE.replace(BASE, `localhost/porthole-e2e-userbase:${process.pid}`));
    mkdirSync(path.join(dir, 'state'));
    await run('chmod', ['-R', 'a+rX', dir]);
    await run('chmod', ['755', path.join(dir, 'bin', 'porthole'), path.join(dir, 'bin', 'porthole-agent')]);
    await run('chown', ['-R', USER, ws, path.join(dir, 'state')]);
    // From a directory the user may enter (the test runner's may be closed to it).
    const as = (args) => run('runuser', ['-u', USER, '--', 'env', '-i', 'PATH=/usr/bin:/bin', `HOME=/home/${USER}`, `USER=${USER}`,
      'PORTHOLE_PROGRESS=1', `PORTHOLE_HOME=${path.join(dir, 'state')}`, `PORTHOLE_AGENT_BIN=${path.join(dir, 'bin', 'porthole-agent')}`, ...args], { cwd: dir });
    try {
      const imp = await as(['podman', 'import', path.join(dir, 'base.tar'), `localhost/porthole-e2e-userbase:${process.pid}`]);
      assert.equal(imp.code, 0, imp.stderr);
      const cli = path.join(dir, 'bin', 'porthole');
      const c = await as([cli, 'machine', 'create', '--name', 'imguser', '--workspace', ws, '--json']);
      assert.equal(c.code, 0, `create as ${USER}: ${c.stderr}`);
      assert.match(c.stderr, /build step 2\/3: RUN/, c.stderr);
      const m = JSON.parse(c.stdout);
      m.agentToken = (await as([cli, 'machine', 'token', 'imguser', '--agent'])).stdout.trim();
      const r = await inside(m, 'imgtool as-user; readlink /bin/sh');
      assert.match(r.stdout, /hello-from-image as-user/);
      assert.match(r.stdout, /busybox/);
      await waitFor(() => existsSync(path.join(ws, 'user-out.txt')), { timeout: 20000, message: 'install as the user' });
      await as([cli, 'machine', 'destroy', 'imguser']);
    } finally {
      await as(['podman', 'rmi', '-af']);
      if (!KEEP) rmSync(dir, { recursive: true, force: true });
    }
  });
});
