// ICE across networks. An agent that advertises an address viewers cannot reach (a TEST-NET
// --public-ip with one --udp-port, as a misconfigured cloud VM would) makes the viewer's
// connection fail, and the viewer page then shows the agent's diagnosis naming that address
// and port and the fix (the same text is the `stream` failed event on the timeline). The same
// unreachable agent given a TURN server (coturn, long-term credentials) connects through it.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startXvfb, startAgent, launchChromium, openViewer, waitFor, tmpDir, freePort, viewerStats,
} from './harness.mjs';

describe('ICE failure diagnosis', { timeout: 5 * 60 * 1000 }, () => {
  it('an unreachable --public-ip/--udp-port: the viewer fails and shows what to open', async (t) => {
    const dir = tmpDir('porthole-e2e-ice-');
    const xvfb = await startXvfb({ log: path.join(dir, 'xvfb.log') });
    const udp = await freePort();
    const agent = await startAgent({ display: xvfb.display, args: ['--public-ip', '192.0.2.123', '--udp-port', String(udp)] });
    const browser = await launchChromium();
    try {
      const page = await openViewer(browser, agent, { wait: false });
      let st;
      await waitFor(async () => {
        st = await page.evaluate(() => ({ state: window.porthole.state, err: window.porthole.lastError }));
        return st.state === 'failed' && /UDP 192\.0\.2\.123/.test(st.err?.message || '');
      }, { timeout: 120000, interval: 500, message: 'the viewer to fail with the diagnosis' })
        .catch((e) => { throw new Error(`${e.message}; last ${JSON.stringify(st)}\n${agent.logTail(20)}`); });
      t.diagnostic(st.err.message);
      assert.equal(st.err.code, 'ice_failed');
      assert.match(st.err.message, new RegExp(`allow inbound UDP ${udp}`));
      const r = await fetch(`${agent.url}/v1/events?after=0`, { headers: agent.auth() });
      const evs = (await r.json()).events;
      const failed = evs.find((e) => e.kind === 'stream' && e.data?.state === 'failed');
      assert.ok(failed, `no stream failed event: ${JSON.stringify(evs.map((e) => [e.kind, e.data?.state]))}`);
      assert.equal(failed.data.diagnosis, st.err.message.replace('The connection to the agent failed: ', ''));
    } finally {
      await browser.close().catch(() => {});
      await agent.stop();
      await xvfb.stop();
    }
  });

  it('the same unreachable agent with a TURN server (coturn) connects through the relay', async (t) => {
    const hostIp = Object.values(os.networkInterfaces()).flat().find((i) => i.family === 'IPv4' && !i.internal)?.address;
    assert.ok(hostIp, 'this host has a non-loopback IPv4 address');
    const dir = tmpDir('porthole-e2e-turn-');
    const port = await freePort();
    const password = 'p' + Math.random().toString(16).slice(2);
    const credFile = path.join(dir, 'turn-credential');
    writeFileSync(credFile, `${password}\n`, { mode: 0o600 });
    // Relayed traffic must not be loopback-sourced (Linux drops 127.0.0.1 → real address).
    const turn = spawn('turnserver', ['-n', `--listening-ip=${hostIp}`, `--relay-ip=${hostIp}`, `--listening-port=${port}`,
      '--min-port=49160', '--max-port=49400', '--lt-cred-mech', `--user=porthole:${password}`, '--realm=porthole',
      '--no-tls', '--no-dtls', '--no-cli', '--log-file=stdout', '--simple-log', `--pidfile=${path.join(dir, 'turn.pid')}`],
    { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let turnLog = '';
    turn.stdout.on('data', (d) => { turnLog += d; });
    turn.stderr.on('data', (d) => { turnLog += d; });
    const xvfb = await startXvfb({ log: path.join(dir, 'xvfb.log') });
    const agent = await startAgent({
      display: xvfb.display,
      args: ['--public-ip', '192.0.2.123', '--udp-port', String(await freePort()),
        '--ice-server', `turn:${hostIp}:${port}`, '--ice-username', 'porthole', '--ice-credential-file', credFile],
    });
    // The TURN password came from a file: no other local user reads it in the agent's argv.
    const argv = readFileSync(`/proc/${agent.child.pid}/cmdline`, 'utf8');
    assert.ok(!argv.includes(password), `the TURN password is on the agent's command line: ${argv}`);
    const browser = await launchChromium();
    try {
      const page = await openViewer(browser, agent, { wait: false });
      let st;
      await waitFor(async () => { st = await viewerStats(page); return st.framesDecoded > 0; },
        { timeout: 60000, interval: 250, message: 'frames through the TURN relay' })
        .catch((e) => { throw new Error(`${e.message}; ${JSON.stringify(st)}\n${agent.logTail(20)}\n--- turnserver ---\n${turnLog.slice(-2000)}`); });
      const pair = await page.evaluate(async () => {
        const stats = [...(await window.porthole.pc.getStats()).values()];
        const p = stats.find((s) => s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated);
        const remote = p && stats.find((s) => s.id === p.remoteCandidateId);
        return { remoteType: remote?.candidateType, remote: remote && `${remote.address}:${remote.port}` };
      });
      t.diagnostic(`selected pair: remote ${pair.remote} (${pair.remoteType})`);
      assert.equal(pair.remoteType, 'relay', `the connection goes through the relay: ${JSON.stringify(pair)}`);
      assert.match(turnLog, /porthole/, 'coturn saw the agent authenticate');
    } finally {
      await browser.close().catch(() => {});
      await agent.stop();
      await xvfb.stop();
      try { process.kill(-turn.pid, 'SIGKILL'); } catch { /* gone */ }
    }
  });
});
