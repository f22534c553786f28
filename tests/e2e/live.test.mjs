// The live path end to end: the real porthole-agent on an Xvfb display, viewed by Debian's
// Chromium through the agent's own /viewer page (browser RTCPeerConnection, WHEP, data channel).
//
// Count-based with generous timeouts: nothing here asserts wall-clock speed.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import {
  requireAgentBin, startXvfb, startOpenbox, startBusyScreen, startCatTerminal, startAgent,
  launchChromium, openViewer, viewerStats, viewerEvents, mouseLocation, waitFor, sleep,
  withAgentLog, tmpDir,
} from './harness.mjs';

const WIDTH = 1280;
const HEIGHT = 800;
const WITH_OPENBOX = process.env.PORTHOLE_E2E_OPENBOX === '1';

describe('porthole-agent live stream and viewer input', { timeout: 15 * 60 * 1000 }, () => {
  let work, xvfb, wm, busy, agent, browser;
  const pages = new Set();

  const pageLogs = () => [...pages]
    .filter((p) => p.logLines && p.logLines.length)
    .map((p, i) => `--- viewer page ${i + 1} console ---\n${p.logLines.slice(-15).join('\n')}`)
    .join('\n');
  const test = (name, fn, opts = {}) =>
    it(name, { timeout: 180000, ...opts }, withAgentLog(() => agent, fn, pageLogs));

  async function newViewer(opts) {
    const page = await openViewer(browser, agent, opts);
    pages.add(page);
    return page;
  }
  async function closeViewer(page) {
    pages.delete(page);
    await page.evaluate(() => window.porthole.disconnect()).catch(() => {});
    await page.close().catch(() => {});
  }
  const api = (p, init = {}) => fetch(`${agent.url}${p}`, {
    ...init, headers: { ...agent.auth(), ...(init.headers || {}) },
  });
  const control = async () => (await api('/v1/control')).json();

  before(async () => {
    requireAgentBin(); // fails (never skips) with a message naming `cargo build -p porthole-agent`
    work = tmpDir();
    xvfb = await startXvfb({ width: WIDTH, height: HEIGHT, log: path.join(work, 'xvfb.log') });
    if (WITH_OPENBOX) wm = startOpenbox(xvfb.display, { log: path.join(work, 'openbox.log') });
    busy = await startBusyScreen(xvfb.display, { log: path.join(work, 'busy.log') });
    agent = await startAgent({ display: xvfb.display });
    browser = await launchChromium();
  });

  after(async () => {
    for (const p of pages) await p.close().catch(() => {});
    if (browser) await browser.close().catch(() => {});
    if (agent) await agent.stop();
    if (busy) await busy.stop();
    if (wm) await wm.stop();
    if (xvfb) await xvfb.stop();
    if (work && !process.env.PORTHOLE_E2E_KEEP) rmSync(work, { recursive: true, force: true });
  });

  test('e. HTTP errors are JSON {error:{code,message}}; health needs no token', async () => {
    const isErrorBody = (j) => j && typeof j.error === 'object' && j.error !== null &&
      typeof j.error.code === 'string' && j.error.code.length > 0 &&
      typeof j.error.message === 'string' && j.error.message.length > 0;

    let res = await fetch(`${agent.url}/v1/whep`, {
      method: 'POST', headers: { ...agent.auth(), 'Content-Type': 'application/sdp' }, body: 'not sdp',
    });
    let text = await res.text();
    assert.equal(res.status, 400, `POST /v1/whep with body "not sdp" and the token: expected 400, got ${res.status}: ${text}`);
    let body;
    assert.doesNotThrow(() => { body = JSON.parse(text); }, `400 body is not JSON: ${text}`);
    assert.ok(isErrorBody(body), `400 body is not {"error":{"code","message"}}: ${text}`);

    res = await fetch(`${agent.url}/v1/whep`, {
      method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: 'not sdp',
    });
    text = await res.text();
    assert.equal(res.status, 401, `POST /v1/whep without a token: expected 401, got ${res.status}: ${text}`);
    assert.doesNotThrow(() => { body = JSON.parse(text); }, `401 body is not JSON: ${text}`);
    assert.ok(isErrorBody(body), `401 body is not {"error":{"code","message"}}: ${text}`);

    res = await fetch(`${agent.url}/v1/whep`, {
      method: 'POST', headers: { Authorization: 'Bearer wrong-token', 'Content-Type': 'application/sdp' }, body: 'v=0',
    });
    text = await res.text();
    assert.equal(res.status, 401, `POST /v1/whep with a wrong token: expected 401, got ${res.status}: ${text}`);
    assert.ok(isErrorBody(JSON.parse(text)), `401 (wrong token) body is not {"error":{"code","message"}}: ${text}`);

    res = await fetch(`${agent.url}/v1/health`);
    text = await res.text();
    assert.equal(res.status, 200, `GET /v1/health without a token: expected 200, got ${res.status}: ${text}`);
    const health = JSON.parse(text);
    assert.ok(['ok', 'degraded'].includes(health.status), `health.status should be "ok" or "degraded": ${text}`);
    assert.equal(typeof health.version, 'string', `health.version should be a string: ${text}`);
    assert.ok(health.version.length > 0, `health.version should not be empty: ${text}`);
    assert.ok(Array.isArray(health.problems), `health.problems should be an array: ${text}`);

    res = await fetch(`${agent.url}/viewer`);
    text = await res.text();
    assert.equal(res.status, 200, `GET /viewer without a token: expected 200, got ${res.status}`);
    assert.match(res.headers.get('content-type') || '', /text\/html/, 'GET /viewer should be text/html');
    assert.match(text, /window\.porthole/, 'GET /viewer should serve guest-agent/static/viewer.html');
  });

  test('f. a WHEP resource can be DELETEd once; the second DELETE is 404', async () => {
    const page = await browser.newPage();
    pages.add(page);
    try {
      await page.goto(`${agent.url}/viewer`); // same origin; no token, so the page only shows its form
      const offer = await page.evaluate(async () => {
        const pc = new RTCPeerConnection();
        window.__rawPc = pc;
        pc.addTransceiver('video', { direction: 'recvonly' });
        pc.createDataChannel('porthole');
        await pc.setLocalDescription(await pc.createOffer());
        await new Promise((r) => {
          if (pc.iceGatheringState === 'complete') return r();
          pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && r());
          setTimeout(r, 2000);
        });
        return pc.localDescription.sdp;
      });
      const res = await fetch(`${agent.url}/v1/whep`, {
        method: 'POST', headers: { ...agent.auth(), 'Content-Type': 'application/sdp' }, body: offer,
      });
      const answer = await res.text();
      assert.equal(res.status, 201, `POST /v1/whep with a real offer: expected 201, got ${res.status}: ${answer}`);
      assert.match(res.headers.get('content-type') || '', /^application\/sdp/, 'the answer should be application/sdp');
      const loc = res.headers.get('location');
      assert.ok(loc, 'POST /v1/whep 201 should carry a Location header');
      const url = new URL(loc, `${agent.url}/v1/whep`);
      assert.match(url.pathname, /^\/v1\/whep\/[^/]+$/, `Location should be /v1/whep/{id}, got ${loc}`);
      assert.match(answer, /^v=0/, 'the answer should be an SDP');
      await page.evaluate((sdp) => window.__rawPc.setRemoteDescription({ type: 'answer', sdp }), answer);

      let del = await fetch(url, { method: 'DELETE' });
      assert.equal(del.status, 401, `DELETE ${loc} without a token: expected 401, got ${del.status}`);
      del = await fetch(url, { method: 'DELETE', headers: agent.auth() });
      assert.ok([200, 204].includes(del.status), `first DELETE ${loc}: expected 200 or 204, got ${del.status}: ${await del.text()}`);
      del = await fetch(url, { method: 'DELETE', headers: agent.auth() });
      const text = await del.text();
      assert.equal(del.status, 404, `second DELETE ${loc}: expected 404, got ${del.status}: ${text}`);
      const body = JSON.parse(text);
      assert.ok(body.error && typeof body.error.code === 'string' && typeof body.error.message === 'string',
        `404 body is not {"error":{"code","message"}}: ${text}`);
    } finally {
      await page.evaluate(() => window.__rawPc && window.__rawPc.close()).catch(() => {});
      pages.delete(page);
      await page.close().catch(() => {});
    }
  });

  test('a. the viewer page decodes >= 100 H.264 frames at 1280x800 from a busy screen', async () => {
    const page = await newViewer();
    try {
      const s = await waitFor(async () => {
        const st = await viewerStats(page);
        return st.framesDecoded >= 100 && st;
      }, { timeout: 90000, interval: 500, message: 'framesDecoded >= 100 in the viewer page' });
      assert.match(String(s.codec), /^H264$/i, `codec should be H264, got ${s.codec}`);
      assert.equal(s.frameWidth, WIDTH, `frameWidth should be ${WIDTH} (unscaled stream), got ${s.frameWidth}`);
      assert.equal(s.frameHeight, HEIGHT, `frameHeight should be ${HEIGHT} (unscaled stream), got ${s.frameHeight}`);
      assert.equal(await page.evaluate(() => window.porthole.state), 'connected', 'viewer state should be "connected"');
      const v = await page.evaluate(() => ({ w: document.getElementById('video').videoWidth, h: document.getElementById('video').videoHeight }));
      assert.deepEqual(v, { w: WIDTH, h: HEIGHT }, 'the <video> element should show the 1280x800 stream');
      const msgs = await page.evaluate(() => window.porthole.events.map((m) => m && m.type));
      assert.ok(msgs.includes('clock'), `the agent should send "clock" messages at least once a second; got types ${JSON.stringify([...new Set(msgs)])}`);
    } finally {
      await closeViewer(page);
    }
  });

  test('b. two viewers decode at once; closing one leaves the other decoding', async () => {
    const p1 = await newViewer();
    const p2 = await newViewer();
    try {
      for (const [name, p] of [['viewer 1', p1], ['viewer 2', p2]]) {
        await waitFor(async () => (await viewerStats(p)).framesDecoded >= 20,
          { timeout: 90000, interval: 500, message: `${name} framesDecoded >= 20 while both are connected` });
      }
      await p1.evaluate(() => window.porthole.disconnect());
      assert.equal(await p1.evaluate(() => window.porthole.state), 'closed', 'viewer 1 state after disconnect()');
      await sleep(500);
      const before = (await viewerStats(p2)).framesDecoded;
      const after = await waitFor(async () => {
        const n = (await viewerStats(p2)).framesDecoded;
        return n >= before + 30 && n;
      }, { timeout: 60000, interval: 500, message: `viewer 2 framesDecoded to grow by 30 from ${before} after viewer 1 disconnected` });
      assert.ok(after >= before + 30, `viewer 2 kept decoding: ${before} -> ${after}`);
      assert.equal(await p2.evaluate(() => window.porthole.state), 'connected', 'viewer 2 should still be connected');
    } finally {
      await closeViewer(p1);
      await closeViewer(p2);
    }
  });

  test('d. before take, viewer input is refused: the X pointer stays and a refused event arrives', async () => {
    const page = await newViewer();
    try {
      const ctl = await control();
      assert.equal(ctl.holder, 'agent', `by default the agent holds control; GET /v1/control said ${JSON.stringify(ctl)}`);
      const start = await mouseLocation(xvfb.display);
      const target = { x: start.x === 777 ? 555 : 777, y: start.y === 333 ? 222 : 333 };
      await page.evaluate((t) => window.porthole.send({ type: 'pointer', x: t.x, y: t.y, buttons: 0 }), target);
      const refused = await waitFor(async () => (await viewerEvents(page)).find((e) => e.kind === 'refused'),
        { timeout: 15000, message: 'a "refused" event on the data channel after a pointer message sent before take' });
      assert.equal(typeof refused.seq, 'number', `the refused event should carry seq: ${JSON.stringify(refused)}`);
      await sleep(1000);
      const now = await mouseLocation(xvfb.display);
      assert.deepEqual(now, start, `the X pointer must not move before take (sent ${JSON.stringify(target)})`);
    } finally {
      await closeViewer(page);
    }
  });

  test('c. after take, pointer/text/key messages move the X pointer and type into an X client', async () => {
    const out = path.join(work, 'typed.txt');
    const term = await startCatTerminal(xvfb.display, out, { log: path.join(work, 'cat-xterm.log') });
    const page = await newViewer();
    try {
      assert.ok(await page.evaluate(() => window.porthole.send({ type: 'control', action: 'take' })), 'sending take');
      await waitFor(async () => (await control()).holder === 'human',
        { timeout: 10000, message: 'GET /v1/control holder "human" after the viewer sent take' });

      // Unscaled 1280x800 stream: stream pixels are X pixels.
      const target = { x: 300, y: 150 }; // inside the 80x10 xterm at +100+100
      await page.evaluate((t) => window.porthole.send({ type: 'pointer', x: t.x, y: t.y, buttons: 0 }), target);
      await waitFor(async () => {
        const p = await mouseLocation(xvfb.display);
        return p.x === target.x && p.y === target.y;
      }, { timeout: 10000, message: `xdotool getmouselocation to read ${target.x},${target.y} after a pointer message` });

      // A click focuses the terminal under a window manager and is harmless without one.
      await page.evaluate((t) => {
        window.porthole.send({ type: 'pointer', x: t.x, y: t.y, buttons: 1 });
        window.porthole.send({ type: 'pointer', x: t.x, y: t.y, buttons: 0 });
      }, target);
      await sleep(300);

      await page.evaluate(() => {
        window.porthole.send({ type: 'text', text: 'hello porthole' });
        window.porthole.send({ type: 'key', code: 'Enter', key: 'Enter', down: true });
        window.porthole.send({ type: 'key', code: 'Enter', key: 'Enter', down: false });
      });
      await waitFor(() => readFileSync(out, 'utf8').includes('hello porthole'), {
        timeout: 15000,
        message: `${out} (cat in an xterm) to contain "hello porthole"; it has ${JSON.stringify(readFileSync(out, 'utf8'))}`,
      }).catch((e) => {
        throw new Error(`${e.message}; file now: ${JSON.stringify(readFileSync(out, 'utf8'))}`);
      });

      const inputs = (await viewerEvents(page)).filter((e) => e.kind === 'refused');
      assert.equal(inputs.length, 0, `no input should be refused after take: ${JSON.stringify(inputs)}`);
    } finally {
      await page.evaluate(() => window.porthole.send({ type: 'control', action: 'release' })).catch(() => {});
      await closeViewer(page);
      await term.stop();
    }
  });

  test('c2. after Take in the page UI, DOM pointer and key events reach X through the letterboxed <video>', async () => {
    const out = path.join(work, 'typed-dom.txt');
    const term = await startCatTerminal(xvfb.display, out, { log: path.join(work, 'cat-xterm-2.log') });
    // 960 wide: the 1280x800 stream is scaled by 0.75 and letterboxed vertically.
    const page = await newViewer({ viewport: { width: 960, height: 760 } });
    try {
      await waitFor(async () => (await page.evaluate(() => document.getElementById('video').videoWidth)) === WIDTH,
        { timeout: 60000, message: 'the <video> to have its first frame (videoWidth 1280)' });
      await page.click('#takeBtn');
      await waitFor(async () => (await control()).holder === 'human',
        { timeout: 10000, message: 'GET /v1/control holder "human" after clicking "Take control"' });
      assert.equal(await page.evaluate(() => window.porthole.taken), true, 'porthole.taken after clicking Take');

      const target = { x: 400, y: 160 }; // stream pixels, inside the xterm at +100+100
      const client = await page.evaluate((t) => {
        const v = document.getElementById('video');
        const r = v.getBoundingClientRect();
        const s = Math.min(r.width / v.videoWidth, r.height / v.videoHeight);
        const left = r.left + (r.width - v.videoWidth * s) / 2;
        const top = r.top + (r.height - v.videoHeight * s) / 2;
        return { x: left + (t.x + 0.5) * s, y: top + (t.y + 0.5) * s, scale: s };
      }, target);
      assert.ok(client.scale < 1, `the stream should be scaled down in a 960px window (scale ${client.scale})`);
      await page.mouse.move(client.x - 40, client.y - 20);
      await page.mouse.move(client.x, client.y, { steps: 4 });
      await waitFor(async () => {
        const p = await mouseLocation(xvfb.display);
        return p.x === target.x && p.y === target.y;
      }, { timeout: 10000, message: `the X pointer at ${target.x},${target.y} after moving the browser mouse over the video` });

      await page.mouse.down();
      await page.mouse.up();
      await sleep(300);
      await page.keyboard.type('via keys 42');
      await page.keyboard.press('Enter');
      await waitFor(() => readFileSync(out, 'utf8').includes('via keys 42'), {
        timeout: 15000, message: `${out} to contain "via keys 42" typed through DOM key events`,
      }).catch((e) => {
        throw new Error(`${e.message}; file now: ${JSON.stringify(readFileSync(out, 'utf8'))}`);
      });

      await page.click('#takeBtn'); // release
      await waitFor(async () => (await control()).holder !== 'human',
        { timeout: 10000, message: 'GET /v1/control holder to leave "human" after clicking "Release control"' });
    } finally {
      await closeViewer(page);
      await term.stop();
    }
  });

  test('g. clipboard text flows both ways only while this viewer holds control', async () => {
    const env = { ...process.env, DISPLAY: xvfb.display };
    const xclipOut = () => new Promise((resolve) => execFile('xclip', ['-o', '-selection', 'clipboard'], { env, timeout: 5000 },
      (err, stdout) => resolve(err ? null : String(stdout))));
    // xclip -i stays in the background owning the selection, like a real app after a copy.
    const guestCopy = (text) => new Promise((resolve, reject) => {
      const c = execFile('xclip', ['-i', '-selection', 'clipboard'], { env, timeout: 5000 }, (err) => (err ? reject(err) : resolve()));
      c.stdin.end(text);
    });
    const page = await newViewer();
    try {
      await page.evaluate(() => window.porthole.setGuestClipboard('not yet'));
      await waitFor(async () => (await viewerEvents(page)).some((e) => e.kind === 'refused' && e.data?.input === 'clipboard'),
        { timeout: 10000, message: 'a refused clipboard event before take' });
      assert.notEqual(await xclipOut(), 'not yet', 'the guest clipboard changed without control');

      await page.evaluate(() => window.porthole.send({ type: 'control', action: 'take' }));
      await waitFor(async () => (await control()).holder === 'human', { timeout: 10000, message: 'holder human' });
      const host = 'from the host, ünïcode ✓';
      await page.evaluate((t) => window.porthole.setGuestClipboard(t), host);
      await waitFor(async () => (await xclipOut()) === host, { timeout: 10000, message: 'xclip -o to read the host text in the guest' });
      assert.ok((await viewerEvents(page)).some((e) => e.kind === 'input' && e.data?.device === 'clipboard' && e.data.chars === [...host].length),
        'the clipboard input is on the timeline, attributed');

      await guestCopy('copied in the guest');
      await waitFor(async () => (await page.evaluate(() => window.porthole.guestClipboard)) === 'copied in the guest',
        { timeout: 10000, message: 'the guest copy to reach the viewer' });

      await page.evaluate(() => window.porthole.send({ type: 'control', action: 'release' }));
      await waitFor(async () => (await control()).holder !== 'human', { timeout: 10000, message: 'released' });
      await guestCopy('after release');
      await waitFor(async () => (await xclipOut()) === 'after release', { timeout: 10000, message: 'the guest copy after release' });
      // A negative: give the agent the time a delivery took above, then check nothing arrived.
      await sleep(1500);
      assert.equal(await page.evaluate(() => window.porthole.guestClipboard), 'copied in the guest',
        'guest clipboard reached a viewer that no longer holds control');
    } finally {
      await page.evaluate(() => window.porthole.send({ type: 'control', action: 'release' })).catch(() => {});
      await closeViewer(page);
      await new Promise((r) => execFile('pkill', ['-f', 'xclip -i -selection clipboard'], () => r()));
    }
  });

  test('h. a viewer asking max_fps=5 gets a capped stream of its own while another stays at full rate', async () => {
    const bad = await api('/v1/whep?max_fps=0', { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: 'v=0\r\n' });
    assert.equal(bad.status, 400);
    assert.match((await bad.json()).error.message, /max_fps=0/);

    const full = await newViewer();
    const slow = await newViewer({ query: 'max_fps=5' });
    try {
      const frames = async () => Promise.all([full, slow].map(async (p) => (await viewerStats(p)).framesDecoded || 0));
      await sleep(1000); // past the first keyframe burst
      const [f0, s0] = await frames();
      const t0 = Date.now();
      await sleep(5000); // a rate needs a window; the assertions are on the ratio and the cap
      const [f1, s1] = await frames();
      const secs = (Date.now() - t0) / 1000;
      const [fullFps, slowFps] = [(f1 - f0) / secs, (s1 - s0) / secs];
      assert.ok(slowFps > 0.5, `the capped viewer decodes frames (${slowFps.toFixed(1)} fps)`);
      assert.ok(slowFps <= 6.5, `the capped viewer is held to ~5 fps (${slowFps.toFixed(1)} fps)`);
      assert.ok(fullFps > 2 * slowFps, `the other viewer keeps its rate (${fullFps.toFixed(1)} vs ${slowFps.toFixed(1)} fps)`);
      const offered = (await viewerEvents(full)).filter((e) => e.kind === 'stream' && e.data?.state === 'offered');
      assert.ok(offered.some((e) => e.data.fps === 5), `a stream offered at fps 5: ${JSON.stringify(offered.map((e) => e.data))}`);
    } finally {
      await closeViewer(full);
      await closeViewer(slow);
    }
  });
});
