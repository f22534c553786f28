// The guest screen following a viewer's window: the real agent on TigerVNC's Xvnc (the local
// sandbox's X server; its RandR can add modes), Debian's Chromium as the viewer. The viewer that
// holds control sends {type:"display"}, the X screen changes size, the stream's frames arrive at
// the new size, and releasing control puts the old size back. On Xvfb (fixed screen) the agent
// says so and names the fix.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import path from 'node:path';
import {
  requireAgentBin, startXvfb, startBusyScreen, startAgent, launchChromium, openViewer,
  viewerStats, viewerEvents, waitFor, sleep, withAgentLog, tmpDir,
} from './harness.mjs';

/** The X screen's size as the X server itself reports it (xdpyinfo, not the agent). */
function xSize(display) {
  return new Promise((resolve, reject) => execFile('xdpyinfo', ['-display', display], { timeout: 10000 }, (err, out) => {
    if (err) return reject(err);
    const m = /dimensions:\s+(\d+)x(\d+) pixels/.exec(out);
    return m ? resolve({ width: Number(m[1]), height: Number(m[2]) }) : reject(new Error(`no dimensions in xdpyinfo: ${out.slice(0, 300)}`));
  }));
}

describe('the guest display follows the viewer window', { timeout: 10 * 60 * 1000 }, () => {
  let work, xvnc, busy, agent, browser, page;
  const test = (name, fn) => it(name, { timeout: 180000 }, withAgentLog(() => agent, fn,
    () => (page?.logLines || []).slice(-15).join('\n')));
  const api = (p, init = {}) => fetch(`${agent.url}${p}`, {
    ...init, headers: { ...agent.auth(), 'Content-Type': 'application/json', ...(init.headers || {}) },
  });
  const send = (m) => page.evaluate((msg) => window.porthole.send(msg), m);
  const frameSize = async () => {
    const s = await viewerStats(page);
    return `${s.frameWidth}x${s.frameHeight}`;
  };

  before(async () => {
    requireAgentBin();
    work = tmpDir();
    xvnc = await startXvfb({ server: 'Xvnc', width: 1280, height: 800, log: path.join(work, 'xvnc.log') });
    busy = await startBusyScreen(xvnc.display, { log: path.join(work, 'busy.log') });
    agent = await startAgent({ display: xvnc.display });
    browser = await launchChromium();
    page = await openViewer(browser, agent);
  });

  after(async () => {
    if (page) await page.close().catch(() => {});
    if (browser) await browser.close().catch(() => {});
    if (agent) await agent.stop();
    if (busy) await busy.stop();
    if (xvnc) await xvnc.stop();
    if (work && !process.env.PORTHOLE_E2E_KEEP) rmSync(work, { recursive: true, force: true });
  });

  test('a. only the holder resizes; frames follow; release restores the size before', async () => {
    const d0 = await (await api('/v1/display')).json();
    assert.deepEqual(d0, { width: 1280, height: 800, resizable: true });
    await waitFor(async () => (await frameSize()) === '1280x800', { timeout: 20000, message: 'frames at 1280x800' });

    await send({ type: 'display', width: 1000, height: 700 });
    await waitFor(async () => (await viewerEvents(page)).some((e) => e.kind === 'refused' && e.data?.input === 'display'),
      { timeout: 10000, message: 'a refused display message before take' });
    assert.deepEqual(await xSize(xvnc.display), { width: 1280, height: 800 }, 'resized without control');

    await send({ type: 'control', action: 'take' });
    await waitFor(async () => (await (await api('/v1/control')).json()).holder === 'human', { timeout: 10000, message: 'holder human' });
    // Odd sizes round down to even ones (4:2:0 video needs them).
    await send({ type: 'display', width: 1001, height: 701 });
    await waitFor(async () => {
      const s = await xSize(xvnc.display);
      return s.width === 1000 && s.height === 700;
    }, { timeout: 10000, message: 'the X screen to become 1000x700' });
    await waitFor(async () => (await frameSize()) === '1000x700', { timeout: 20000, message: 'decoded frames at 1000x700' });
    const ev = (await viewerEvents(page)).find((e) => e.kind === 'display');
    assert.ok(ev, 'a display event on the timeline');
    assert.equal(ev.actor, 'human');
    assert.deepEqual([ev.data.width, ev.data.height, ev.data.from], [1000, 700, { width: 1280, height: 800 }]);

    // The agent's API may not change the screen under the human's hands.
    const r = await api('/v1/display', { method: 'POST', body: JSON.stringify({ width: 800, height: 600 }) });
    assert.equal(r.status, 409);
    assert.equal((await r.json()).error.code, 'control_refused');

    // A second resize during the same hold: release still goes back to the size before the first.
    await send({ type: 'display', width: 1440, height: 900 });
    await waitFor(async () => (await xSize(xvnc.display)).width === 1440, { timeout: 10000, message: '1440 wide' });
    await send({ type: 'control', action: 'release' });
    await waitFor(async () => {
      const s = await xSize(xvnc.display);
      return s.width === 1280 && s.height === 800;
    }, { timeout: 10000, message: 'the size before the takeover to come back on release' });
    await waitFor(async () => (await frameSize()) === '1280x800', { timeout: 20000, message: 'frames at 1280x800 again' });
    const restore = (await viewerEvents(page)).filter((e) => e.kind === 'display').at(-1);
    assert.equal(restore.data.by, 'restore');
  });

  test('b. the API resizes while the agent holds control; bad sizes are 400 naming the range', async () => {
    const r = await api('/v1/display', { method: 'POST', body: JSON.stringify({ width: 1600, height: 900 }) });
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { width: 1600, height: 900, resizable: true });
    assert.deepEqual(await xSize(xvnc.display), { width: 1600, height: 900 });
    for (const [body, re] of [
      [{ width: 100, height: 100 }, /100x100 is out of range: width 320\.\.=3840, height 240\.\.=2160/],
      [{ width: 5000, height: 900 }, /5000x900 is out of range/],
      [{ width: 'wide', height: 900 }, /width: expected a whole number of pixels/],
      [{ height: 900 }, /width: expected/],
    ]) {
      const b = await api('/v1/display', { method: 'POST', body: JSON.stringify(body) });
      assert.equal(b.status, 400, JSON.stringify(body));
      assert.match((await b.json()).error.message, re);
    }
    assert.deepEqual(await xSize(xvnc.display), { width: 1600, height: 900 }, 'a refused request changed the screen');
    const back = await api('/v1/display', { method: 'POST', body: JSON.stringify({ width: 1280, height: 800 }) });
    assert.equal(back.status, 200);
  });

  test('c. on Xvfb the screen is fixed: GET says why, POST is 409 naming Xvnc', async () => {
    const fixed = await startXvfb({ width: 1024, height: 768, log: path.join(work, 'xvfb.log') });
    const other = await startAgent({ display: fixed.display });
    try {
      const h = { ...other.auth(), 'Content-Type': 'application/json' };
      const d = await (await fetch(`${other.url}/v1/display`, { headers: h })).json();
      assert.equal(d.resizable, false);
      assert.deepEqual([d.width, d.height], [1024, 768]);
      assert.match(d.reason, /fixed 1024x768 screen.*Xvnc/);
      const r = await fetch(`${other.url}/v1/display`, { method: 'POST', headers: h, body: JSON.stringify({ width: 800, height: 600 }) });
      assert.equal(r.status, 409);
      const e = (await r.json()).error;
      assert.equal(e.code, 'display_fixed');
      assert.match(e.message, /tigervnc-standalone-server/);
      await sleep(200);
      assert.deepEqual(await xSize(fixed.display), { width: 1024, height: 768 });
    } finally {
      await other.stop();
      await fixed.stop();
    }
  });
});
