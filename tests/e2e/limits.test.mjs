// Limits on what callers may hold at once, each attacked past its bound on a real agent: the
// answer is a clear 429/503 naming the flag, and the resource works again once one is given
// back. (`--max-exec`, `--max-sse`, `--max-viewers`, `--max-pipelines`; defaults 32, 256, 16, 4.)

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { rmSync } from 'node:fs';
import { startXvfb, startAgent, launchChromium, tmpDir, withAgentLog } from './harness.mjs';

let dir, xvfb, agent, browser;

before(async () => {
  dir = tmpDir('porthole-e2e-limits-');
  xvfb = await startXvfb({ log: path.join(dir, 'xvfb.log') });
  agent = await startAgent({
    display: xvfb.display,
    args: ['--max-exec', '2', '--max-sse', '2', '--max-viewers', '2', '--max-pipelines', '1'],
  });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await agent?.stop();
  await xvfb?.stop();
  if (dir && !process.env.PORTHOLE_E2E_KEEP) rmSync(dir, { recursive: true, force: true });
});

const post = (p, body, headers = {}) => fetch(`${agent.url}${p}`, {
  method: 'POST', headers: { ...agent.auth(), ...headers }, body,
});

async function assertRefused(r, status, code, flag) {
  const text = await r.text();
  assert.equal(r.status, status, text);
  const j = JSON.parse(text);
  assert.equal(j.error.code, code, text);
  assert.ok(j.error.message.includes(flag), `the message names ${flag}: ${j.error.message}`);
}

describe('limits', { timeout: 5 * 60 * 1000 }, () => {
  it('exec: two run at once, the third is 429 naming --max-exec, then one runs again', withAgentLog(() => agent, async () => {
    const slow = () => post('/v1/exec', JSON.stringify({ command: 'sleep 2; echo done' }), { 'content-type': 'application/json' });
    const running = [slow(), slow()];
    await new Promise((r) => setTimeout(r, 500));
    await assertRefused(await post('/v1/exec', JSON.stringify({ command: 'true' }), { 'content-type': 'application/json' }),
      429, 'too_many_execs', '--max-exec');
    for (const r of await Promise.all(running)) assert.equal(r.status, 200);
    const again = await post('/v1/exec', JSON.stringify({ command: 'echo again' }), { 'content-type': 'application/json' });
    assert.equal(again.status, 200);
    assert.equal((await again.json()).stdout.trim(), 'again');
  }));

  it('event streams: two open, the third is 503 naming --max-sse, closing one frees it', withAgentLog(() => agent, async () => {
    const open = () => {
      const ac = new AbortController();
      return fetch(`${agent.url}/v1/events/stream`, { headers: agent.auth(), signal: ac.signal }).then((r) => ({ r, ac }));
    };
    const a = await open();
    const b = await open();
    assert.equal(a.r.status, 200);
    assert.equal(b.r.status, 200);
    const c = await open();
    await assertRefused(c.r, 503, 'too_many_subscribers', '--max-sse');
    a.ac.abort();
    // The slot comes back once the agent sees the stream closed (its next write fails).
    let d;
    for (let i = 0; i < 100; i++) {
      await post('/v1/computer', JSON.stringify({ action: 'mouse_move', coordinate: [10 + i, 10] }), { 'content-type': 'application/json' });
      d = await open();
      if (d.r.status === 200) break;
      await d.r.text();
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(d.r.status, 200, 'a stream after one was closed');
    b.ac.abort();
    d.ac.abort();
  }));

  it('WHEP: one encode (--max-pipelines 1), two viewers (--max-viewers 2)', withAgentLog(() => agent, async () => {
    const page = await browser.newPage();
    try {
      await page.goto('about:blank');
      const offer = () => page.evaluate(async () => {
        const pc = new RTCPeerConnection();
        pc.addTransceiver('video', { direction: 'recvonly' });
        pc.createDataChannel('porthole');
        const o = await pc.createOffer();
        await pc.setLocalDescription(o);
        (window.pcs ||= []).push(pc);
        return o.sdp;
      });
      const whep = async (q = '') => post(`/v1/whep${q}`, await offer(), { 'content-type': 'application/sdp' });
      const first = await whep();
      assert.equal(first.status, 201, await first.text());
      // Another rate would be a second encode.
      await assertRefused(await whep('?max_fps=5'), 503, 'too_many_pipelines', '--max-pipelines');
      const second = await whep();
      assert.equal(second.status, 201, await second.text());
      await assertRefused(await whep(), 503, 'too_many_viewers', '--max-viewers');
      // Giving one back (DELETE) makes room.
      const loc = first.headers.get('location');
      const del = await fetch(new URL(loc, agent.url), { method: 'DELETE', headers: agent.auth() });
      assert.ok([200, 204].includes(del.status), `DELETE ${loc}: ${del.status}`);
      const third = await whep();
      assert.equal(third.status, 201, await third.text());
    } finally {
      await page.close();
    }
  }));
});
