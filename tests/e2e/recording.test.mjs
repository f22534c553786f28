// Recording survives a crash: the agent records a session (busy screen, agent actions), is
// killed with SIGKILL, and the fragmented MP4 it left plays (ffprobe) up to within 2 s of the
// kill, with keyframes at most 2 s apart, and events.jsonl holds every event up to then.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { agentBin, freePort, sleep, startBusyScreen, startXvfb, tmpDir, waitFor } from './harness.mjs';

const ffprobe = (...args) => new Promise((resolve, reject) => {
  execFile('ffprobe', ['-v', 'error', ...args], (err, stdout, stderr) => (err ? reject(new Error(stderr || err.message)) : resolve(stdout)));
});

test('a recording survives kill -9: playable to within 2 s of the kill, events intact', { timeout: 120000 }, async () => {
  const dir = tmpDir('porthole-e2e-rec-');
  const xvfb = await startXvfb({ width: 1280, height: 800, log: path.join(dir, 'xvfb.log') });
  const busy = await startBusyScreen(xvfb.display, { log: path.join(dir, 'busy.log') });
  const token = 'rec-test-token';
  writeFileSync(path.join(dir, 'token'), token, { mode: 0o600 });
  const port = await freePort();
  const data = path.join(dir, 'data');
  const agent = spawn(agentBin(), ['serve', '--display', xvfb.display, '--listen', `127.0.0.1:${port}`, '--token-file', path.join(dir, 'token'), '--data-dir', data], { stdio: 'ignore', detached: true });
  const url = `http://127.0.0.1:${port}`;
  const auth = { Authorization: `Bearer ${token}` };
  try {
    await waitFor(async () => (await fetch(`${url}/v1/health`)).ok, { timeout: 30000, message: 'agent health' });
    const rec = await waitFor(async () => {
      const r = await (await fetch(`${url}/v1/recordings`, { headers: auth })).json();
      return r.recordings.find((x) => x.state === 'recording' && x.parts >= 1);
    }, { timeout: 30000, message: 'a recording in progress' });
    for (let i = 0; i < 3; i++) {
      const r = await fetch(`${url}/v1/computer`, { method: 'POST', headers: auth, body: JSON.stringify({ action: 'mouse_move', coordinate: [100 + i * 50, 200] }) });
      assert.equal(r.status, 200);
      await sleep(700);
    }
    await sleep(3000);
    // The recording's own clock at the kill: the session's t_ms now.
    const cur = await (await fetch(`${url}/v1/sessions/current`, { headers: auth })).json();
    const eventsBefore = (await (await fetch(`${url}/v1/events?after=0`, { headers: auth })).json()).events;
    process.kill(agent.pid, 'SIGKILL');
    await sleep(300);

    const recDir = path.join(data, 'recordings', rec.id);
    const video = path.join(recDir, 'video-0001.mp4');
    const info = JSON.parse(await ffprobe('-print_format', 'json', '-show_streams', '-show_format', video));
    assert.equal(info.streams[0].codec_name, 'h264');
    const keyTimes = (await ffprobe('-select_streams', 'v', '-skip_frame', 'nokey', '-show_entries', 'frame=pts_time', '-of', 'csv=p=0', video))
      .trim().split('\n').map(Number).filter((t) => !Number.isNaN(t));
    const lastFrame = Number((await ffprobe('-select_streams', 'v', '-show_entries', 'frame=pts_time', '-of', 'csv=p=0', video)).trim().split('\n').pop());
    const killedAt = cur.t_ms / 1000;
    assert.ok(lastFrame >= killedAt - 2, `playable to ${lastFrame.toFixed(2)} s; killed at ${killedAt.toFixed(2)} s (at most 2 s lost)`);
    for (let i = 1; i < keyTimes.length; i++) {
      assert.ok(keyTimes[i] - keyTimes[i - 1] <= 2.2, `keyframes ${keyTimes[i - 1]} → ${keyTimes[i]} more than 2 s apart`);
    }
    const lines = readFileSync(path.join(recDir, 'events.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(lines.map((e) => e.seq), eventsBefore.map((e) => e.seq), 'events.jsonl has every event emitted before the kill');
    assert.equal(lines.filter((e) => e.kind === 'action').length, 3);
    assert.ok(readdirSync(path.join(recDir, 'thumbs')).length >= 2, 'thumbnails were kept');
  } finally {
    try { process.kill(-agent.pid, 'SIGKILL'); } catch { /* already gone */ }
    await busy.stop().catch(() => {});
    await xvfb.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
