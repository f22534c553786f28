// Agent runs end to end: `porthole run start` on a local repository with the scripted demo
// agent (it opens the repository's web app in the machine's browser, clicks through it with
// /v1/computer, edits NOTES.md, writes tasks.json and commits). Two runs on one repository in
// parallel must each come back with their own commit and nothing else; the transcript, file
// changes and task progress are on the timeline; an idle agent produces `stalled`; bad input is
// refused before anything is created.
//
// The coding agent is hostile: a run's workspace is a clone of its own (the repository's `.git`
// is never bound in), its branch comes back without anything the agent planted in the clone
// (hooks, core.fsmonitor, core.hooksPath, aliases, ...) running on the host, and the repository's
// config and hooks are untouched. A run gets only the secrets its environment declares, never on
// a command line, and the agent token (never the operator's) in its environment and MCP config.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { agentBin, tmpDir, waitFor } from './harness.mjs';

const TARGET = process.env.CARGO_TARGET_DIR || '/work/target';
const CLI = process.env.PORTHOLE_CLI_BIN || path.join(TARGET, 'debug', 'porthole');
const DEMO = fileURLToPath(new URL('../../packaging/demo/', import.meta.url));

function run(cmd, args, { env = {}, cwd } = {}) {
  return new Promise((resolve) => {
    execFile(cmd, args, { env: { ...process.env, ...env }, cwd, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

/**
 * A git smart-HTTP server (Git's own `git http-backend` as CGI) that demands Basic auth, like a
 * forge with a token: clone and push go through it for real.
 */
function gitHttpServer(root, { user, password }) {
  const want = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
  return http.createServer((req, res) => {
    if (req.headers.authorization !== want) {
      res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="git"' });
      res.end('authentication required\n');
      return;
    }
    const u = new URL(req.url, 'http://git');
    const cgi = spawn('git', ['http-backend'], {
      env: {
        ...process.env, GIT_PROJECT_ROOT: root, GIT_HTTP_EXPORT_ALL: '1', PATH_INFO: u.pathname,
        QUERY_STRING: u.search.slice(1), REQUEST_METHOD: req.method, CONTENT_TYPE: req.headers['content-type'] || '',
        HTTP_CONTENT_ENCODING: req.headers['content-encoding'] || '', REMOTE_USER: user, REMOTE_ADDR: '127.0.0.1',
      },
    });
    req.pipe(cgi.stdin);
    let buf = Buffer.alloc(0);
    let started = false;
    cgi.stdout.on('data', (d) => {
      if (started) { res.write(d); return; }
      buf = Buffer.concat([buf, d]);
      let i = buf.indexOf('\r\n\r\n'); let skip = 4;
      if (i < 0) { i = buf.indexOf('\n\n'); skip = 2; }
      if (i < 0) return;
      let status = 200;
      const headers = {};
      for (const line of buf.subarray(0, i).toString().split(/\r?\n/)) {
        const k = line.slice(0, line.indexOf(':')); const v = line.slice(line.indexOf(':') + 1).trim();
        if (k.toLowerCase() === 'status') status = parseInt(v, 10); else headers[k] = v;
      }
      res.writeHead(status, headers);
      res.write(buf.subarray(i + skip));
      started = true;
    });
    cgi.stdout.on('end', () => res.end());
  });
}

const DECLARED = `declared-${randomBytes(8).toString('hex')}`;
const UNDECLARED = `undeclared-${randomBytes(8).toString('hex')}`;
const sha256 = (s) => createHash('sha256').update(s).digest('hex');

// The hostile agent: commits, then plants in its clone's .git everything that would execute
// when git runs with that clone as its repository, each touching a marker in $1 (a host path);
// it runs no git command after planting (the machine's own git would set them off inside).
const EVIL_AGENT = `#!/bin/sh
M="$1"
cd /workspace || exit 1
printf 'token=%s\n' "$(printf %s "$PORTHOLE_TOKEN" | sha256sum | cut -d' ' -f1)"
printf 'declared=%s\n' "$(printf %s "$RUN_DECLARED" | sha256sum | cut -d' ' -f1)"
printf 'undeclared=[%s]\n' "$RUN_UNDECLARED"
echo "evil note" > EVIL.md
git add EVIL.md && git commit -q -m "evil agent" || exit 1
mkdir -p .git/hooks .git/evil-hooks
for h in post-checkout reference-transaction pre-push post-merge post-rewrite fsmonitor-watchman pre-auto-gc post-index-change; do
  printf '#!/bin/sh\ntouch "%s/hook-%s"\n' "$M" "$h" > .git/hooks/$h
  printf '#!/bin/sh\ntouch "%s/hookspath-%s"\n' "$M" "$h" > .git/evil-hooks/$h
  chmod +x .git/hooks/$h .git/evil-hooks/$h
done
cat >> .git/config <<EOF
[core]
\tfsmonitor = "touch $M/fsmonitor #"
\thooksPath = .git/evil-hooks
\tsshCommand = "touch $M/sshcommand #"
\talternateRefsCommand = "touch $M/alternaterefs #"
[uploadpack]
\tpackObjectsHook = "touch $M/packobjectshook #"
[alias]
\tst = "!touch $M/alias"
[gpg]
\tprogram = "touch $M/gpg #"
[log]
\tshowSignature = true
[diff]
\texternal = "touch $M/diffexternal #"
[remote "origin"]
\turl = "ext::sh -c touch% $M/ext"
[protocol "ext"]
\tallow = always
EOF
echo planted
sleep 600
`;

describe('agent runs', { timeout: 15 * 60 * 1000 }, () => {
  let home, repo;
  const env = () => ({ PORTHOLE_HOME: home, PORTHOLE_AGENT_BIN: agentBin(), PORTHOLE_STALL_AFTER: '4' });
  const porthole = (...args) => run(CLI, args, { env: env() });
  const git = (...args) => run('git', ['-C', repo, ...args]);
  const json = async (...args) => {
    const r = await porthole(...args, '--json');
    assert.equal(r.code, 0, `porthole ${args.join(' ')} failed: ${r.stderr}`);
    return JSON.parse(r.stdout);
  };
  const setSecret = (name, value) => new Promise((resolve) => {
    const c = execFile(CLI, ['secrets', 'set', name], { env: { ...process.env, ...env() } }, (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stderr }));
    c.stdin.end(`${value}\n`);
  });
  /** The run's branch as `run show` brings it back: its commits. */
  const runCommits = async (id) => (await json('run', 'show', id)).commits;
  const agentEvents = async (machine) => {
    const list = await json('machine', 'list');
    const m = list.find((x) => x.name === machine);
    const token = (await porthole('machine', 'token', machine)).stdout.trim();
    const res = await fetch(`${m.agent_url}/v1/events?after=0&limit=10000`, { headers: { Authorization: `Bearer ${token}` } });
    return (await res.json()).events;
  };

  before(async () => {
    home = tmpDir('porthole-e2e-runs-');
    repo = path.join(home, 'repo');
    mkdirSync(path.join(repo, '.porthole'), { recursive: true });
    cpSync(path.join(DEMO, 'webapp'), path.join(repo, 'webapp'), { recursive: true });
    cpSync(path.join(DEMO, 'demo-agent.py'), path.join(repo, 'demo-agent.py'));
    writeFileSync(path.join(repo, 'README.md'), '# app under test\n');
    writeFileSync(path.join(repo, 'evil-agent.sh'), EVIL_AGENT);
    writeFileSync(path.join(repo, '.porthole', 'environment.json'), JSON.stringify({
      name: 'runs-test',
      secrets: ['RUN_DECLARED'],
      start: 'python3 -m http.server 8080 --bind 127.0.0.1 --directory webapp',
      ports: [{ port: 8080, name: 'web' }],
    }, null, 2));
    for (const args of [['init', '-q', '-b', 'main'], ['add', '-A'], ['-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '-m', 'base']]) {
      const r = await git(...args);
      assert.equal(r.code, 0, r.stderr);
    }
    // One secret the environment declares, one global secret it does not.
    assert.equal((await setSecret('RUN_DECLARED', DECLARED)).code, 0);
    assert.equal((await setSecret('RUN_UNDECLARED', UNDECLARED)).code, 0);
  });

  after(async () => {
    const list = await porthole('machine', 'list', '--json');
    for (const m of JSON.parse(list.stdout || '[]')) await porthole('machine', 'destroy', m.name);
    await git('worktree', 'prune');
    if (!process.env.PORTHOLE_E2E_KEEP) rmSync(home, { recursive: true, force: true });
  });

  test('bad input is refused before anything is created', async () => {
    const cases = [
      [['--repo', path.join(home, 'nope'), '--task', 't', '--agent', 'python3 demo-agent.py'], /not found/],
      [['--repo', repo, '--branch', 'no-such-branch', '--task', 't', '--agent', 'python3 demo-agent.py'], /base branch 'no-such-branch' does not exist/],
      [['--repo', repo, '--task', 't', '--agent', 'no-such-agent-binary --go'], /agent command 'no-such-agent-binary' was not found/],
      [['--repo', repo, '--task', '', '--agent', 'python3 demo-agent.py'], /--task must not be empty/],
    ];
    for (const [args, re] of cases) {
      const r = await porthole('run', 'start', ...args);
      assert.notEqual(r.code, 0, `expected failure for ${args.join(' ')}`);
      assert.match(r.stderr, re);
    }
    writeFileSync(path.join(repo, 'README.md'), '# dirty\n');
    const dirty = await porthole('run', 'start', '--repo', repo, '--task', 't', '--agent', 'python3 demo-agent.py');
    assert.notEqual(dirty.code, 0);
    assert.match(dirty.stderr, /uncommitted changes/);
    await git('checkout', 'README.md');
    assert.deepEqual(await json('run', 'list'), [], 'no run was recorded');
    assert.deepEqual(await json('machine', 'list'), [], 'no machine was left');
    const branches = (await git('branch', '--list', 'porthole/*')).stdout.trim();
    assert.equal(branches, '', 'no branch was created');
  });

  test('two runs on one repository in parallel: each branch gets its own commit and nothing else', async () => {
    const tasks = ['add the first note', 'add the second note'];
    const runs = await Promise.all(tasks.map((t) => json('run', 'start', '--repo', repo, '--task', t, '--agent', 'python3 demo-agent.py')));
    for (const r of runs) {
      assert.match(r.id, /^r[0-9a-f]{8}$/);
      assert.equal(r.branch, `porthole/${r.id}`);
      assert.equal(r.status, 'running');
    }
    assert.notEqual(runs[0].machine, runs[1].machine);
    for (const [i, r] of runs.entries()) {
      await waitFor(async () => (await runCommits(r.id)).length > 0,
        { timeout: 180000, interval: 1000, message: `a commit on ${r.branch} (run show)` });
      const files = (await git('diff', '--name-only', `main...${r.branch}`)).stdout.trim().split('\n');
      assert.deepEqual(files, ['NOTES.md'], `${r.branch} changes only NOTES.md`);
      const notes = (await git('show', `${r.branch}:NOTES.md`)).stdout;
      assert.ok(notes.includes(tasks[i]) && !notes.includes(tasks[1 - i]), `${r.branch} has its own note: ${notes}`);

      const evs = await waitFor(async () => {
        const e = await agentEvents(r.machine);
        return e.some((x) => x.kind === 'tasks') && e.some((x) => x.kind === 'commit') ? e : null;
      }, { timeout: 30000, interval: 1000, message: `tasks and commit events on ${r.machine}` });
      const transcript = evs.filter((e) => e.kind === 'terminal' && e.data.name === 'agent').map((e) => e.data.text).join('');
      assert.match(transcript, new RegExp(`task: ${tasks[i]}`), 'the transcript is on the timeline');
      assert.ok(evs.some((e) => e.kind === 'action' && e.actor === 'agent' && e.data.action === 'left_click'), 'the agent clicked through the page');
      assert.ok(evs.some((e) => e.kind === 'files' && e.data.changed.some((c) => c.includes('NOTES.md'))), 'file changes are on the timeline');
      const t = evs.filter((e) => e.kind === 'tasks').pop();
      assert.equal(t.data.total, 2);
      assert.equal(t.data.done, 1);
      for (let k = 1; k < evs.length; k++) assert.ok(evs[k].t_ms >= evs[k - 1].t_ms && evs[k].seq === evs[k - 1].seq + 1);

      const c = await json('run', 'collect', r.id);
      assert.equal(c.branch, r.branch);
      assert.equal(c.commits, 1);
      assert.ok(existsSync(c.patch) && readFileSync(c.patch, 'utf8').includes('NOTES.md'), 'a patch file is the fallback');
      assert.match(readFileSync(c.summary, 'utf8'), new RegExp(tasks[i]));
      assert.ok(c.evidence && existsSync(c.evidence), `collect attaches the evidence bundle: ${JSON.stringify(c)}`);
      assert.match(readFileSync(c.evidence, 'utf8'), /left_click/, 'the evidence timeline lists the agent\'s clicks');
      assert.match(readFileSync(c.summary, 'utf8'), /### Evidence/);
    }
    for (const r of runs) {
      const s = await json('run', 'stop', r.id);
      assert.equal(s.status, 'stopped');
    }
    const after = await json('machine', 'list');
    assert.deepEqual(after.filter((m) => m.name.startsWith('run-')), [], 'stopped runs leave no machine');
    for (const r of runs) assert.equal((await git('rev-parse', '--verify', '--quiet', r.branch)).code, 0, 'the branch survives the machine');
  });

  test('an idle agent produces a stalled event', async () => {
    const r = await json('run', 'start', '--repo', repo, '--task', 'think forever', '--agent', 'env DEMO_IDLE=1 python3 demo-agent.py');
    const evs = await waitFor(async () => {
      const e = await agentEvents(r.machine);
      return e.some((x) => x.kind === 'stalled' && x.data.state === 'stalled') ? e : null;
    }, { timeout: 60000, interval: 1000, message: 'a stalled event (PORTHOLE_STALL_AFTER=4)' });
    const s = evs.find((x) => x.kind === 'stalled');
    assert.ok(s.data.idle_ms >= 4000, `idle_ms ${s.data.idle_ms}`);
    await json('run', 'stop', r.id);
  });

  test('a hostile agent: nothing it plants in its clone runs on the host; declared secrets only, never on a command line; the agent token', async () => {
    const markers = path.join(home, 'markers');
    mkdirSync(markers, { recursive: true });
    const gitDir = path.join(repo, '.git');
    const snap = () => Object.fromEntries(['config', 'HEAD', 'index', 'hooks', 'info'].flatMap((n) => {
      const p = path.join(gitDir, n);
      if (!existsSync(p)) return [];
      if (statSync(p).isDirectory()) return readdirSync(p).map((f) => [`${n}/${f}`, readFileSync(path.join(p, f), 'utf8')]);
      return [[n, readFileSync(p).toString('base64')]];
    }));
    const before = snap();
    const r = await json('run', 'start', '--repo', repo, '--task', 'plant everything', '--agent', `sh evil-agent.sh ${markers}`);
    assert.ok(!existsSync(path.join(repo, '.git', 'worktrees')) || readdirSync(path.join(repo, '.git', 'worktrees')).length === 0,
      'no git worktree of the repository was made for the run');
    assert.ok(existsSync(path.join(r.worktree, '.git')) && statSync(path.join(r.worktree, '.git')).isDirectory(), 'the run has a clone of its own');
    const evs = await waitFor(async () => {
      const e = await agentEvents(r.machine);
      const t = e.filter((x) => x.kind === 'terminal' && x.data.name === 'agent').map((x) => x.data.text).join('');
      return t.includes('planted') ? t : null;
    }, { timeout: 120000, interval: 1000, message: 'the hostile agent planted its hooks and config' });

    // Secrets: the declared one reached the agent's terminal, the undeclared one did not; the
    // terminal's PORTHOLE_TOKEN is the agent token, not the operator's.
    const agentToken = (await porthole('machine', 'token', r.machine, '--agent')).stdout.trim();
    const operatorToken = (await porthole('machine', 'token', r.machine)).stdout.trim();
    assert.ok(agentToken && agentToken !== operatorToken, 'two tokens');
    assert.match(evs, new RegExp(`token=${sha256(agentToken)}`), `the agent terminal's PORTHOLE_TOKEN is the agent token: ${evs}`);
    assert.match(evs, new RegExp(`declared=${sha256(DECLARED)}`), 'the declared secret reached the run');
    assert.match(evs, /undeclared=\[\]/, 'an undeclared global secret did not');
    // No process anywhere has a secret or a token on its command line.
    const hits = [];
    for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
      let cmd;
      try { cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8'); } catch { continue; }
      for (const [what, v] of [['declared secret', DECLARED], ['undeclared secret', UNDECLARED], ['agent token', agentToken], ['operator token', operatorToken]]) {
        if (cmd.includes(v)) hits.push(`${what} in /proc/${pid}/cmdline: ${cmd.replace(/\0/g, ' ').slice(0, 300)}`);
      }
    }
    assert.deepEqual(hits, [], 'secrets on command lines');
    // The MCP config holds the agent token, 0600.
    const mcp = path.join(home, 'machines', r.machine, 'home', '.porthole', 'mcp.json');
    assert.equal(statSync(mcp).mode & 0o777, 0o600, 'mcp.json is 0600');
    const mcpText = readFileSync(mcp, 'utf8');
    assert.ok(mcpText.includes(agentToken) && !mcpText.includes(operatorToken), 'mcp.json carries the agent token only');

    const c = await json('run', 'collect', r.id);
    assert.equal(c.commits, 1, JSON.stringify(c));
    await json('run', 'stop', r.id);
    assert.deepEqual(readdirSync(markers), [], 'something the agent planted ran on the host');
    assert.deepEqual(snap(), before, "the repository's config, HEAD, index, hooks or info changed");
    assert.equal((await git('show', `${r.branch}:EVIL.md`)).stdout, 'evil note\n', 'the branch came back');
    assert.equal((await git('status', '--porcelain')).stdout, '', 'the working tree is untouched');
    assert.equal((await git('symbolic-ref', 'HEAD')).stdout.trim(), 'refs/heads/main');
  });

  test('a URL repository: cloned with the vault token (none or a wrong one is refused first), the branch pushed back', async () => {
    const root = path.join(home, 'served');
    mkdirSync(root, { recursive: true });
    assert.equal((await run('git', ['clone', '-q', '--bare', repo, path.join(root, 'app.git')])).code, 0);
    const password = randomBytes(12).toString('hex');
    const server = gitHttpServer(root, { user: 'x-access-token', password });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${server.address().port}/app.git`;
    const bare = (...args) => run('git', ['-C', path.join(root, 'app.git'), ...args]);
    const nothingLeft = async (what) => {
      assert.ok((await json('run', 'list')).every((r) => r.repo !== url), `${what}: a run was recorded`);
      assert.deepEqual((await json('machine', 'list')).filter((m) => m.name.startsWith('run-')), [], `${what}: a machine was left`);
      const runsDir = path.join(home, 'runs');
      const left = existsSync(runsDir) ? readdirSync(runsDir).filter((d) => !existingRuns.has(d)) : [];
      assert.deepEqual(left, [], `${what}: run directories left`);
    };
    const existingRuns = new Set(existsSync(path.join(home, 'runs')) ? readdirSync(path.join(home, 'runs')) : []);
    try {
      // Earlier tests' runs are stopped; the list must be empty of running ones for nothingLeft.
      for (const r of await json('run', 'list')) await porthole('run', 'stop', r.id);
      const before = (await json('run', 'list')).length;
      const start = () => porthole('run', 'start', '--repo', url, '--task', 'note from a clone', '--agent', 'python3 demo-agent.py');

      let r = await start();
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /wants credentials.*porthole secrets set GIT_TOKEN/);
      assert.equal((await json('run', 'list')).length, before);
      await nothingLeft('no credentials');

      const wrong = randomBytes(12).toString('hex');
      assert.equal((await setSecret('GIT_TOKEN', wrong)).code, 0);
      r = await start();
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /rejected the credentials \(vault secret GIT_TOKEN\)/);
      assert.ok(!r.stderr.includes(wrong), 'the token appears in the error');
      assert.equal((await json('run', 'list')).length, before);
      await nothingLeft('wrong token');
      const listed = await json('secrets', 'list');
      assert.deepEqual(listed.map((x) => x.name).sort(), ['GIT_TOKEN', 'RUN_DECLARED', 'RUN_UNDECLARED']);
      assert.ok(!JSON.stringify(listed).includes(wrong), 'secrets list shows the value');

      assert.equal((await setSecret('GIT_TOKEN', password)).code, 0);
      const started = await json('run', 'start', '--repo', url, '--task', 'note from a clone', '--agent', 'python3 demo-agent.py');
      assert.equal(started.repo, url);
      assert.equal(started.branch, `porthole/${started.id}`);
      await waitFor(async () => (await runCommits(started.id)).length > 0,
        { timeout: 180000, interval: 1000, message: `a commit on ${started.branch} (run show)` });
      const c = await json('run', 'collect', started.id);
      assert.equal(c.pushed, true, `collect: ${JSON.stringify(c)}`);
      assert.equal(c.commits, 1);
      const files = (await bare('diff', '--name-only', `main...${started.branch}`)).stdout.trim();
      assert.equal(files, 'NOTES.md', 'the served repository has the run branch with its one change');
      assert.match(readFileSync(c.summary, 'utf8'), /pushed to http:\/\/127\.0\.0\.1/);
      await json('run', 'stop', started.id);
    } finally {
      server.close();
    }
  });
});
