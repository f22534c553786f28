// The vault key in the OS keychain: a real Secret Service (gnome-keyring in its own D-Bus
// session) holds it, no key file is written, and a process that cannot reach that keychain
// is refused with the reason instead of starting a second key. Without a keychain the
// encrypted-file fallback is used and labelled.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { tmpDir } from './harness.mjs';

const TARGET = process.env.CARGO_TARGET_DIR || '/work/target';
const CLI = process.env.PORTHOLE_CLI_BIN || path.join(TARGET, 'debug', 'porthole');

function run(cmd, args, { env = {}, input } = {}) {
  return new Promise((resolve) => {
    const c = execFile(cmd, args, { env: { ...process.env, ...env }, timeout: 60000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout: String(stdout), stderr: String(stderr) });
    });
    c.stdin.end(input ?? '');
  });
}

/** Runs a shell script inside a fresh D-Bus session with an unlocked gnome-keyring. */
function inKeyring(home, script, env) {
  const wrapped = `printf pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1 && ${script}`;
  return run('dbus-run-session', ['--', 'bash', '-c', wrapped], { env: { HOME: path.join(home, 'home'), ...env } });
}

describe('vault key in the OS keychain', { timeout: 120000 }, () => {
  it('the key is in the Secret Service, not in a file; without it the CLI says why', async () => {
    const home = tmpDir('porthole-e2e-keychain-');
    mkdirSync(path.join(home, 'home'), { recursive: true });
    const env = { PORTHOLE_HOME: home, PORTHOLE_KEYCHAIN: '' };
    try {
      const r = await inKeyring(home, `echo s3cret-value | ${CLI} secrets set API_KEY && ${CLI} secrets list --json && secret-tool lookup service porthole username "vault-key:${home}"`, env);
      assert.equal(r.code, 0, r.stderr);
      const [listJson, key] = [r.stdout.slice(0, r.stdout.lastIndexOf(']') + 1), r.stdout.slice(r.stdout.lastIndexOf(']') + 1).trim()];
      const list = JSON.parse(listJson);
      assert.deepEqual(list.map((s) => [s.name, s.readable]), [['API_KEY', true]]);
      assert.match(key, /^[0-9a-f]{64}$/, `the keyring holds the vault key: ${JSON.stringify(key)}`);
      assert.ok(!existsSync(path.join(home, 'keys', 'vault.key')), 'a key file was written although the keychain works');
      assert.ok(existsSync(path.join(home, 'keys', 'vault.keychain')));
      assert.ok(!r.stdout.includes('s3cret-value') && !r.stderr.includes('s3cret-value'));

      // No session bus: refused with the reason, and no second key appears.
      const out = await run(CLI, ['secrets', 'list'], { env: { ...env, DBUS_SESSION_BUS_ADDRESS: '' } });
      assert.notEqual(out.code, 0);
      assert.match(out.stderr, /vault key is in the OS keychain, which is not reachable here/);
      assert.ok(!existsSync(path.join(home, 'keys', 'vault.key')), 'a second (file) key was created');
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it('no keychain: the encrypted-file fallback, and secrets stay readable', async () => {
    const home = tmpDir('porthole-e2e-keyfile-');
    const env = { PORTHOLE_HOME: home, PORTHOLE_KEYCHAIN: '0' };
    try {
      assert.equal((await run(CLI, ['secrets', 'set', 'API_KEY'], { env, input: 'v\n' })).code, 0);
      assert.ok(existsSync(path.join(home, 'keys', 'vault.key')));
      const l = JSON.parse((await run(CLI, ['secrets', 'list', '--json'], { env })).stdout);
      assert.deepEqual(l.map((s) => [s.name, s.readable]), [['API_KEY', true]]);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
