// Computer use end to end: the real porthole-agent drives a REAL web page in a non-headless
// Chromium window (kiosk, 1280x800) on the Xvfb display it captures, through POST /v1/computer
// only. playwright-core attaches over CDP just to READ page state (window.state, selection,
// element rectangles); every input comes from the agent (xdotool is used once, to calibrate the
// page's offset on the screen independently of the agent).
//
// The whole set runs at two declared display sizes (--display-size 1280x800 and 1024x768) on a
// 1280x800 screen, so clicks land only if the agent maps coordinates.
//
// Count-based / condition-polling with generous timeouts: nothing here asserts wall-clock speed.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { rmSync } from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import {
  requireAgentBin, startXvfb, startAgent, spawnGroup, killGroup, freePort, waitFor, sleep,
  withAgentLog, tmpDir, xdotool, mouseLocation, tail, CHROMIUM,
} from './harness.mjs';

const SCREEN = { w: 1280, h: 800 };
const SIZES = [[1280, 800], [1024, 768]];

// ---------------------------------------------------------------------------------------------
// The page under test

const PAGE_HTML = `<!doctype html>
<html><head><meta charset="utf-8"><title>porthole computer-use test page</title>
<style>
  html, body { margin: 0; padding: 0; background: #fff; font: 20px sans-serif; }
  #top { position: relative; height: 780px; }
  #btn { position: absolute; left: 40px; top: 40px; width: 220px; height: 60px; font-size: 20px; }
  #count { position: absolute; left: 300px; top: 56px; }
  #inp { position: absolute; left: 40px; top: 140px; width: 420px; height: 40px; font-size: 20px; }
  #para { position: absolute; left: 40px; top: 220px; width: 900px; margin: 0; font-size: 28px; }
  #box { position: absolute; left: 600px; top: 420px; width: 120px; height: 120px;
         background: #cc3333; user-select: none; touch-action: none; cursor: move; }
  #list li { height: 40px; }
</style></head>
<body>
<div id="top">
  <button id="btn">Increment</button><span id="count">0</span>
  <input id="inp" type="text" autocomplete="off" spellcheck="false">
  <p id="para">alpha bravo charlie delta echo</p>
  <div id="box"></div>
</div>
<ol id="list"></ol>
<script>
  window.state = { count: 0, clicks: [], box: null, drags: 0, mouse: null, keys: [] };
  const btn = document.getElementById('btn');
  btn.addEventListener('click', (e) => {
    state.count++;
    state.clicks.push({ clientX: e.clientX, clientY: e.clientY });
    document.getElementById('count').textContent = String(state.count);
  });
  const box = document.getElementById('box');
  state.box = { x: box.offsetLeft, y: box.offsetTop };
  let drag = null;
  box.addEventListener('pointerdown', (e) => {
    drag = { sx: e.clientX, sy: e.clientY, bx: box.offsetLeft, by: box.offsetTop };
    box.setPointerCapture(e.pointerId);
    e.preventDefault();
  });
  const follow = (e) => {
    if (!drag) return;
    box.style.left = (drag.bx + e.clientX - drag.sx) + 'px';
    box.style.top = (drag.by + e.clientY - drag.sy) + 'px';
    state.box = { x: box.offsetLeft, y: box.offsetTop };
  };
  box.addEventListener('pointermove', follow);
  box.addEventListener('pointerup', (e) => { follow(e); drag = null; state.drags++; });
  document.addEventListener('mousemove', (e) => {
    state.mouse = { clientX: e.clientX, clientY: e.clientY, screenX: e.screenX, screenY: e.screenY };
  }, true);
  document.addEventListener('keydown', (e) => { state.keys.push(e.key); }, true);
  const list = document.getElementById('list');
  for (let i = 1; i <= 200; i++) {
    const li = document.createElement('li');
    li.textContent = 'list item ' + i;
    list.appendChild(li);
  }
  state.ready = true;
</script>
</body></html>`;

function servePage() {
  return new Promise((resolve) => {
    const srv = http.createServer((req, res) => {
      if (req.url === '/' || req.url.startsWith('/?')) {
        res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
        res.end(PAGE_HTML);
      } else {
        res.writeHead(404);
        res.end();
      }
    });
    srv.listen(0, '127.0.0.1', () => resolve({ srv, url: `http://127.0.0.1:${srv.address().port}/` }));
  });
}

// ---------------------------------------------------------------------------------------------
// Images

/** Decodes an 8-bit, non-interlaced PNG (grey, grey+alpha, RGB, RGBA). */
function decodePng(buf) {
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  assert.ok(buf.length > 33 && buf.subarray(0, 8).equals(sig), 'not a PNG (bad signature)');
  let off = 8;
  let ihdr;
  const idat = [];
  while (off + 8 <= buf.length) {
    const len = buf.readUInt32BE(off);
    const type = buf.toString('latin1', off + 4, off + 8);
    const data = buf.subarray(off + 8, off + 8 + len);
    if (type === 'IHDR') {
      ihdr = {
        width: data.readUInt32BE(0), height: data.readUInt32BE(4), bitDepth: data[8],
        colorType: data[9], interlace: data[12],
      };
    } else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') break;
    off += 12 + len;
  }
  assert.ok(ihdr, 'PNG without IHDR');
  const { width, height, bitDepth, colorType, interlace } = ihdr;
  const channels = { 0: 1, 2: 3, 4: 2, 6: 4 }[colorType];
  if (bitDepth !== 8 || !channels || interlace !== 0) {
    return { width, height, channels: 0, data: null, ihdr };
  }
  const raw = zlib.inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const out = Buffer.alloc(stride * height);
  const bpp = channels;
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)];
    const src = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const row = out.subarray(y * stride, (y + 1) * stride);
    const prev = y > 0 ? out.subarray((y - 1) * stride, y * stride) : null;
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? row[x - bpp] : 0;
      const b = prev ? prev[x] : 0;
      const c = prev && x >= bpp ? prev[x - bpp] : 0;
      let v = src[x];
      switch (f) {
        case 0: break;
        case 1: v += a; break;
        case 2: v += b; break;
        case 3: v += (a + b) >> 1; break;
        case 4: {
          const p = a + b - c;
          const pa = Math.abs(p - a); const pb = Math.abs(p - b); const pc = Math.abs(p - c);
          v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
          break;
        }
        default: throw new Error(`PNG filter ${f} on row ${y}`);
      }
      row[x] = v & 0xff;
    }
  }
  return { width, height, channels, data: out, ihdr };
}

function rgbAt(img, x, y) {
  const i = (y * img.width + x) * img.channels;
  if (img.channels >= 3) return [img.data[i], img.data[i + 1], img.data[i + 2]];
  return [img.data[i], img.data[i], img.data[i]];
}

const isBoxRed = ([r, g, b]) => r > 170 && r < 235 && g < 90 && b < 90;

/** Bounding box of the test page's red box in a decoded screenshot. */
function findRed(img) {
  let x1 = Infinity, y1 = Infinity, x2 = -1, y2 = -1, n = 0;
  for (let y = 0; y < img.height; y++) {
    for (let x = 0; x < img.width; x++) {
      if (isBoxRed(rgbAt(img, x, y))) {
        n++;
        if (x < x1) x1 = x;
        if (y < y1) y1 = y;
        if (x > x2) x2 = x;
        if (y > y2) y2 = y;
      }
    }
  }
  return n ? { x1, y1, x2: x2 + 1, y2: y2 + 1, n } : null;
}

/** Width and height from a JPEG's SOFn segment. */
function jpegSize(buf) {
  assert.ok(buf[0] === 0xff && buf[1] === 0xd8, 'not a JPEG (no SOI)');
  let off = 2;
  while (off + 9 < buf.length) {
    if (buf[off] !== 0xff) { off++; continue; }
    const marker = buf[off + 1];
    if (marker === 0xd8 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) { off += 2; continue; }
    const len = buf.readUInt16BE(off + 2);
    if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
      return { height: buf.readUInt16BE(off + 5), width: buf.readUInt16BE(off + 7) };
    }
    off += 2 + len;
  }
  throw new Error('JPEG without SOF');
}

// ---------------------------------------------------------------------------------------------
// Coordinate spaces: CSS px (viewport) -> screen px (X) -> declared px (computer use).

/** The agent's documented mapping (pixel centres), to check events' `data.screen`. */
function agentToScreen([x, y], [dw, dh]) {
  const sx = Math.floor((x + 0.5) * SCREEN.w / dw);
  const sy = Math.floor((y + 0.5) * SCREEN.h / dh);
  return [Math.min(sx, SCREEN.w - 1), Math.min(sy, SCREEN.h - 1)];
}

const isErrorBody = (j) => j && typeof j.error === 'object' && j.error !== null &&
  typeof j.error.code === 'string' && j.error.code.length > 0 &&
  typeof j.error.message === 'string' && j.error.message.length > 0;

// ---------------------------------------------------------------------------------------------

for (const [DW, DH] of SIZES) {
  describe(`computer use at --display-size ${DW}x${DH} (screen ${SCREEN.w}x${SCREEN.h})`, { timeout: 15 * 60 * 1000 }, () => {
    let work, xvfb, agent, chrome, chromeLog, browser, page, pageSrv, pageUrl;
    let offset = { x: 0, y: 0 }; // screen px of the viewport's (0, 0)
    const DECL = [DW, DH];

    const extra = () => (chromeLog ? `--- chromium log tail ---\n${tail(chromeLog, 15)}` : '');
    const test = (name, fn, opts = {}) => it(name, { timeout: 240000, ...opts }, withAgentLog(() => agent, fn, extra));

    const api = (p, init = {}) => fetch(`${agent.url}${p}`, {
      ...init, headers: { ...agent.auth(), ...(init.headers || {}) }, signal: AbortSignal.timeout(60000),
    });

    async function computer(body) {
      const res = await api('/v1/computer', {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
      });
      const text = await res.text();
      let json;
      try { json = JSON.parse(text); } catch { /* reported by callers */ }
      return { status: res.status, json, text };
    }
    const short = (s) => (s.length > 600 ? `${s.slice(0, 600)}...(${s.length} chars)` : s);
    async function act(body) {
      const r = await computer(body);
      assert.equal(r.status, 200, `POST /v1/computer ${JSON.stringify(body)} -> ${r.status}: ${short(r.text)}`);
      assert.ok(r.json && 'output' in r.json && 'error' in r.json && 'base64_image' in r.json,
        `POST /v1/computer ${JSON.stringify(body)}: body is not {output, error, base64_image}: ${short(r.text)}`);
      assert.equal(r.json.error, null, `POST /v1/computer ${JSON.stringify(body)}: error should be null`);
      return r.json;
    }

    const state = () => page.evaluate(() => JSON.parse(JSON.stringify(window.state)));
    const rectOf = (sel) => page.evaluate((s) => {
      const r = document.querySelector(s).getBoundingClientRect();
      return { x: r.left, y: r.top, w: r.width, h: r.height };
    }, sel);
    /** CSS px in the viewport -> declared px the agent expects. */
    const toDeclared = (cx, cy) => [
      Math.floor((cx + offset.x) * DW / SCREEN.w),
      Math.floor((cy + offset.y) * DH / SCREEN.h),
    ];
    const centerOf = async (sel) => {
      const r = await rectOf(sel);
      return toDeclared(r.x + r.w / 2, r.y + r.h / 2);
    };

    before(async () => {
      requireAgentBin();
      work = tmpDir('porthole-e2e-computer-');
      ({ srv: pageSrv, url: pageUrl } = await servePage());
      xvfb = await startXvfb({ width: SCREEN.w, height: SCREEN.h, log: path.join(work, 'xvfb.log') });
      agent = await startAgent({ display: xvfb.display, args: ['--display-size', `${DW}x${DH}`] });

      const cdpPort = await freePort();
      chromeLog = path.join(work, 'chromium.log');
      chrome = spawnGroup(CHROMIUM, [
        '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--kiosk', '--window-position=0,0',
        '--window-size=1280,800', `--user-data-dir=${path.join(work, 'chrome-profile')}`,
        `--remote-debugging-port=${cdpPort}`, pageUrl,
      ], { env: { DISPLAY: xvfb.display }, log: chromeLog });
      await waitFor(async () => {
        if (chrome.exitInfo) throw new Error(`chromium exited: ${JSON.stringify(chrome.exitInfo)}\n${tail(chromeLog, 20)}`);
        const r = await fetch(`http://127.0.0.1:${cdpPort}/json/version`, { signal: AbortSignal.timeout(2000) });
        return r.ok;
      }, { timeout: 60000, interval: 300, message: `Chromium's DevTools endpoint on port ${cdpPort}` });
      const { chromium } = await import('playwright-core');
      browser = await chromium.connectOverCDP(`http://127.0.0.1:${cdpPort}`, { timeout: 60000 });
      page = await waitFor(async () => {
        for (const ctx of browser.contexts()) {
          for (const p of ctx.pages()) {
            if (p.url().startsWith(pageUrl) && await p.evaluate(() => window.state && window.state.ready).catch(() => false)) return p;
          }
        }
        return null;
      }, { timeout: 60000, interval: 300, message: `the test page ${pageUrl} loaded in Chromium` });

      // Calibrate the viewport's position on the screen without the agent: move the X pointer
      // with xdotool and read the page's mousemove coordinates.
      const vp = await page.evaluate(() => ({
        w: window.innerWidth, h: window.innerHeight, dpr: window.devicePixelRatio,
      }));
      assert.equal(vp.dpr, 1, `devicePixelRatio should be 1 under Xvfb, got ${vp.dpr}`);
      await waitFor(async () => {
        await xdotool(xvfb.display, 'mousemove', '500', '300');
        await sleep(100);
        await xdotool(xvfb.display, 'mousemove', '501', '301');
        const s = await state();
        if (!s.mouse) return false;
        offset = { x: 501 - s.mouse.clientX, y: 301 - s.mouse.clientY };
        return s.mouse;
      }, { timeout: 30000, interval: 300, message: 'the page to see an xdotool pointer move (calibration)' });
      // The brief's setup: kiosk at (0, 0), so CSS px == screen px. (Without a window manager
      // Chromium's kiosk viewport has been seen at 1279x799; the page only needs ~1000x700.)
      // Without a window manager the kiosk window sometimes lands at (1, 1): the calibrated
      // offset is applied by toDeclared(), so only a real misplacement fails.
      assert.ok(Math.abs(offset.x) <= 2 && Math.abs(offset.y) <= 2, `the kiosk Chromium viewport should start at about screen (0, 0), got ${JSON.stringify(offset)} (viewport ${vp.w}x${vp.h})`);
      assert.ok(vp.w >= SCREEN.w - 10 && vp.h >= SCREEN.h - 10, `the kiosk viewport should be about the screen size, got ${vp.w}x${vp.h}`);
    });

    after(async () => {
      if (browser) await browser.close().catch(() => {}); // CDP: disconnects only
      if (chrome) await killGroup(chrome);
      if (agent) await agent.stop();
      if (xvfb) await xvfb.stop();
      if (pageSrv) await new Promise((r) => pageSrv.close(r));
      if (work && !process.env.PORTHOLE_E2E_KEEP) rmSync(work, { recursive: true, force: true });
    });

    test('screenshot: a base64 PNG of the declared size that shows the page where CDP says it is', async () => {
      const out = await act({ action: 'screenshot' });
      assert.equal(typeof out.base64_image, 'string', 'screenshot: base64_image should be a string');
      const png = Buffer.from(out.base64_image, 'base64');
      const img = decodePng(png);
      assert.deepEqual([img.width, img.height], DECL,
        `screenshot PNG IHDR says ${img.width}x${img.height}; the declared display is ${DW}x${DH}`);
      assert.ok(img.data, `screenshot PNG has an unsupported layout ${JSON.stringify(img.ihdr)}`);
      const red = findRed(img);
      assert.ok(red, 'the red box of the test page should be visible in the screenshot');
      const r = await rectOf('#box');
      const [ex1, ey1] = toDeclared(r.x, r.y);
      const [ex2, ey2] = toDeclared(r.x + r.w, r.y + r.h);
      const tol = 3;
      for (const [k, got, want] of [['x1', red.x1, ex1], ['y1', red.y1, ey1], ['x2', red.x2, ex2], ['y2', red.y2, ey2]]) {
        assert.ok(Math.abs(got - want) <= tol,
          `red box ${k} in the screenshot is ${got}, expected ${want} ±${tol} (declared px; box ${JSON.stringify(red)}, CSS rect ${JSON.stringify(r)})`);
      }
    });

    test('left_click on the button (CDP rect mapped to declared px) increments the counter', async () => {
      const before = (await state()).count;
      const at = await centerOf('#btn');
      await act({ action: 'left_click', coordinate: at });
      await waitFor(async () => (await state()).count === before + 1,
        { timeout: 20000, message: `counter ${before} -> ${before + 1} after left_click at ${JSON.stringify(at)}` });
      // A second click 6 px inside the button's left edge: at 1024x768 the same numbers taken as
      // screen px (no mapping) would land left of the button.
      const r = await rectOf('#btn');
      const at2 = toDeclared(r.x + 6, r.y + r.h / 2);
      if (DW !== SCREEN.w) assert.ok(at2[0] < r.x + offset.x, 'self-check: unmapped, this click would miss');
      await act({ action: 'left_click', coordinate: at2 });
      await waitFor(async () => (await state()).count === before + 2,
        { timeout: 20000, message: `counter ${before + 1} -> ${before + 2} after left_click at ${JSON.stringify(at2)}` });
      await sleep(300);
      assert.equal((await state()).count, before + 2, 'each left_click should increment exactly once');
    });

    test('left_click the input, type, key chords (ctrl+a, BackSpace, several chords)', async () => {
      const value = () => page.evaluate(() => document.getElementById('inp').value);
      const waitValue = async (want, what) => {
        try {
          await waitFor(async () => (await value()) === want, { timeout: 20000, message: what });
        } catch (e) {
          const keys = (await state()).keys.slice(-40);
          throw new Error(`${e.message}: input value is ${JSON.stringify(await value())}, want ${JSON.stringify(want)}; ` +
            `last keydown keys seen by the page: ${JSON.stringify(keys)}`);
        }
      };
      await act({ action: 'left_click', coordinate: await centerOf('#inp') });
      await waitFor(() => page.evaluate(() => document.activeElement && document.activeElement.id === 'inp'),
        { timeout: 20000, message: 'the input to have focus after left_click' });

      await act({ action: 'type', text: 'hello porthole' });
      await waitValue('hello porthole', 'input value "hello porthole" after type');

      await act({ action: 'key', text: 'ctrl+a' });
      await waitFor(() => page.evaluate(() => {
        const i = document.getElementById('inp');
        return i.selectionStart === 0 && i.selectionEnd === i.value.length;
      }), { timeout: 20000, message: 'ctrl+a to select the whole input' });
      await act({ action: 'key', text: 'BackSpace' });
      await waitValue('', 'input empty after ctrl+a, BackSpace');

      await act({ action: 'type', text: 'Porthole 2: A-Z!' });
      await waitValue('Porthole 2: A-Z!', 'input value "Porthole 2: A-Z!" (capitals, digits, punctuation) after type');
      await act({ action: 'key', text: 'BackSpace BackSpace Left shift+Home' });
      await act({ action: 'key', text: 'Delete' });
      await waitValue('-', 'input value "-" after "BackSpace BackSpace Left shift+Home" then Delete');
    });

    test('double_click selects a word, triple_click the paragraph', async () => {
      const wordAt = await page.evaluate(() => {
        const t = document.getElementById('para').firstChild;
        const i = t.data.indexOf('charlie');
        const r = document.createRange();
        r.setStart(t, i);
        r.setEnd(t, i + 'charlie'.length);
        const b = r.getBoundingClientRect();
        return { x: b.left + b.width / 2, y: b.top + b.height / 2 };
      });
      const at = toDeclared(wordAt.x, wordAt.y);
      const sel = () => page.evaluate(() => window.getSelection().toString());
      await act({ action: 'double_click', coordinate: at });
      await waitFor(async () => (await sel()).trim() === 'charlie',
        { timeout: 20000, message: `window.getSelection() "charlie" after double_click at ${JSON.stringify(at)}` });
      // Click elsewhere first so the triple click starts from a clean state.
      await act({ action: 'left_click', coordinate: toDeclared(1000, 700) });
      await waitFor(async () => (await sel()) === '', { timeout: 20000, message: 'selection cleared by a click on blank space' });
      await act({ action: 'triple_click', coordinate: at });
      await waitFor(async () => (await sel()).trim() === 'alpha bravo charlie delta echo',
        { timeout: 20000, message: `window.getSelection() = the whole paragraph after triple_click at ${JSON.stringify(at)}` });
    });

    test('left_click_drag moves the box by the drag distance', async () => {
      const s0 = await state();
      const from = await centerOf('#box');
      const to = [from[0] + Math.round(DW * 0.1), from[1] + Math.round(DH * 0.1)];
      await act({ action: 'left_click_drag', start_coordinate: from, coordinate: to });
      await waitFor(async () => (await state()).drags === s0.drags + 1,
        { timeout: 20000, message: 'a pointerup on the box after left_click_drag' });
      const s1 = await state();
      const [fsx, fsy] = agentToScreen(from, DECL);
      const [tsx, tsy] = agentToScreen(to, DECL);
      const want = { dx: tsx - fsx, dy: tsy - fsy };
      const got = { dx: s1.box.x - s0.box.x, dy: s1.box.y - s0.box.y };
      const tol = 3;
      assert.ok(Math.abs(got.dx - want.dx) <= tol && Math.abs(got.dy - want.dy) <= tol,
        `box moved by ${JSON.stringify(got)} CSS px; the drag ${JSON.stringify(from)} -> ${JSON.stringify(to)} (declared) ` +
        `is ${JSON.stringify(want)} screen px (±${tol})`);
    });

    test('mouse_move + cursor_position report "X=..,Y=.." in declared px, and the X pointer is where mapped', async () => {
      const at = [Math.floor(DW * 0.37), Math.floor(DH * 0.61)];
      await act({ action: 'mouse_move', coordinate: at });
      const out = await act({ action: 'cursor_position' });
      assert.equal(out.output, `X=${at[0]},Y=${at[1]}`, 'cursor_position output');
      const loc = await mouseLocation(xvfb.display);
      const [sx, sy] = agentToScreen(at, DECL);
      assert.ok(Math.abs(loc.x - sx) <= 1 && Math.abs(loc.y - sy) <= 1,
        `X pointer at ${JSON.stringify(loc)}, expected about [${sx}, ${sy}] for declared ${JSON.stringify(at)}`);
      await waitFor(async () => {
        const m = (await state()).mouse;
        return m && Math.abs(m.clientX + offset.x - sx) <= 1 && Math.abs(m.clientY + offset.y - sy) <= 1;
      }, { timeout: 20000, message: `the page to see the pointer at screen [${sx}, ${sy}]` });
    });

    test('zoom returns an image of the region (the inside of the red box is red)', async () => {
      const r = await rectOf('#box');
      const [x1, y1] = toDeclared(r.x + 15, r.y + 15);
      const [x2, y2] = toDeclared(r.x + r.w - 15, r.y + r.h - 15);
      const out = await act({ action: 'zoom', region: [x1, y1, x2, y2] });
      assert.equal(typeof out.base64_image, 'string', 'zoom: base64_image should be a string');
      const img = decodePng(Buffer.from(out.base64_image, 'base64'));
      assert.ok(img.width > 0 && img.height > 0 && img.data, `zoom image ${JSON.stringify(img.ihdr)}`);
      let red = 0;
      for (let y = 0; y < img.height; y += 4) for (let x = 0; x < img.width; x += 4) if (isBoxRed(rgbAt(img, x, y))) red++;
      const total = Math.ceil(img.height / 4) * Math.ceil(img.width / 4);
      assert.ok(red / total > 0.9, `zoom of region ${JSON.stringify([x1, y1, x2, y2])} (inside the red box) is only ${red}/${total} red (image ${img.width}x${img.height})`);
      // And a zoom of the whole screen is a valid image too.
      const full = await act({ action: 'zoom', region: [0, 0, DW, DH] });
      const fimg = decodePng(Buffer.from(full.base64_image, 'base64'));
      assert.ok(fimg.width > 0 && fimg.height > 0, 'zoom of the whole display');
    });

    test('scroll down moves the page (scrollY > 0); scroll up brings it back', async () => {
      assert.equal(await page.evaluate(() => window.scrollY), 0, 'page starts at scrollY 0');
      const at = [Math.floor(DW / 2), Math.floor(DH / 2)];
      await act({ action: 'scroll', coordinate: at, scroll_direction: 'down', scroll_amount: 5 });
      const y = await waitFor(async () => {
        const v = await page.evaluate(() => window.scrollY);
        return v > 0 && v;
      }, { timeout: 20000, message: 'window.scrollY > 0 after scroll down 5' });
      await sleep(500); // let smooth scrolling finish before reading the peak
      const peak = await page.evaluate(() => window.scrollY);
      assert.ok(peak >= y && peak > 0, `scrollY after scroll down: ${peak}`);
      await act({ action: 'scroll', coordinate: at, scroll_direction: 'up', scroll_amount: 30 });
      await waitFor(async () => (await page.evaluate(() => window.scrollY)) === 0,
        { timeout: 20000, message: `window.scrollY back to 0 after scroll up 30 (was ${peak})` });
    });

    test('invalid actions -> 400 {"error":{code,message}} naming the field', async () => {
      const cases = [
        [{ action: 'fly' }, ['action', 'fly', 'left_click', 'screenshot', 'left_click_drag', 'zoom']],
        [{ action: 'mouse_move' }, ['coordinate']],
        [{ action: 'left_click_drag', coordinate: [5, 5] }, ['start_coordinate']],
        [{ action: 'left_click', coordinate: [DW, 10] }, ['coordinate', `${DW}x${DH}`]],
        [{ action: 'mouse_move', coordinate: [10, DH + 40] }, ['coordinate', `${DW}x${DH}`]],
        [{ action: 'mouse_move', coordinate: [-1, 10] }, ['coordinate']],
        [{ action: 'wait', duration: -1 }, ['duration']],
        [{ action: 'hold_key', text: 'shift', duration: -0.5 }, ['duration']],
        [{ action: 'key', text: 'ctrl+bogus' }, ['text', 'bogus']],
        [{ action: 'scroll', coordinate: [5, 5] }, ['scroll_direction']],
        [{ action: 'zoom', region: [10, 10, 5, 20] }, ['region']],
        [{ coordinate: [1, 1] }, ['action']],
      ];
      for (const [body, words] of cases) {
        const r = await computer(body);
        const req = `POST /v1/computer ${JSON.stringify(body)}`;
        assert.equal(r.status, 400, `${req}: expected 400, got ${r.status}: ${short(r.text)}`);
        assert.ok(isErrorBody(r.json), `${req}: 400 body is not {"error":{"code","message"}}: ${short(r.text)}`);
        for (const w of words) {
          assert.ok(r.json.error.message.includes(w), `${req}: message should mention ${JSON.stringify(w)}: ${r.json.error.message}`);
        }
      }
      // Not JSON at all.
      const res = await api('/v1/computer', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{nope' });
      const text = await res.text();
      assert.equal(res.status, 400, `POST /v1/computer "{nope": expected 400, got ${res.status}: ${text}`);
      assert.ok(isErrorBody(JSON.parse(text)), `non-JSON body: error shape: ${text}`);
      // No token.
      const unauth = await fetch(`${agent.url}/v1/computer`, { method: 'POST', body: '{"action":"screenshot"}' });
      assert.equal(unauth.status, 401, 'POST /v1/computer without a token');
    });

    let controlFrom = 0;
    test('control: pause_agent -> 409; resume_agent -> works; take -> 409; release', async () => {
      const ev = await (await api('/v1/events?after=0&limit=1000000')).json();
      controlFrom = ev.next;
      const post = async (action) => {
        const res = await api('/v1/control', {
          method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ action }),
        });
        const text = await res.text();
        assert.equal(res.status, 200, `POST /v1/control {"action":"${action}"} -> ${res.status}: ${text}`);
        return JSON.parse(text);
      };
      const count = async () => (await state()).count;
      const at = await centerOf('#btn');

      let st = await post('pause_agent');
      assert.equal(st.agent_paused, true, `pause_agent state: ${JSON.stringify(st)}`);
      assert.equal((await (await api('/v1/control')).json()).holder, 'nobody', 'GET /v1/control holder while paused');
      const c0 = await count();
      let r = await computer({ action: 'left_click', coordinate: at });
      assert.equal(r.status, 409, `left_click while the agent is paused: expected 409, got ${r.status}: ${short(r.text)}`);
      assert.ok(isErrorBody(r.json), `409 body shape: ${r.text}`);
      assert.match(r.json.error.message, /paused/i, `409 while paused should say the agent is paused: ${r.json.error.message}`);
      r = await computer({ action: 'screenshot' });
      assert.equal(r.status, 409, `screenshot while paused: expected 409, got ${r.status}`);
      await sleep(500);
      assert.equal(await count(), c0, 'a refused click must not reach the page');

      st = await post('resume_agent');
      assert.equal(st.agent_paused, false, `resume_agent state: ${JSON.stringify(st)}`);
      assert.equal(st.holder, 'agent', `resume_agent state: ${JSON.stringify(st)}`);
      await act({ action: 'left_click', coordinate: at });
      await waitFor(async () => (await count()) === c0 + 1, { timeout: 20000, message: 'the click after resume_agent to land' });

      st = await post('take');
      assert.equal(st.holder, 'human', `take state: ${JSON.stringify(st)}`);
      r = await computer({ action: 'left_click', coordinate: at });
      assert.equal(r.status, 409, `left_click while a human holds control: expected 409, got ${r.status}: ${short(r.text)}`);
      assert.ok(isErrorBody(r.json), `409 body shape: ${r.text}`);
      assert.match(r.json.error.message, /human/i, `409 while a human holds control should say so: ${r.json.error.message}`);
      await sleep(500);
      assert.equal(await count(), c0 + 1, 'a refused click must not reach the page');

      st = await post('release');
      assert.equal(st.holder, 'agent', `release state: ${JSON.stringify(st)}`);
      await act({ action: 'left_click', coordinate: at });
      await waitFor(async () => (await count()) === c0 + 2, { timeout: 20000, message: 'the click after release to land' });

      const bad = await api('/v1/control', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"action":"steal"}' });
      const badText = await bad.text();
      assert.equal(bad.status, 400, `POST /v1/control {"action":"steal"}: expected 400, got ${bad.status}: ${badText}`);
    });

    test('GET /v1/events: ordered, action events carry screen positions, refused + control in order', async () => {
      const events = [];
      let after = 0;
      for (let i = 0; i < 1000; i++) {
        const res = await api(`/v1/events?after=${after}&limit=50`);
        const text = await res.text();
        assert.equal(res.status, 200, `GET /v1/events?after=${after}&limit=50 -> ${res.status}: ${text}`);
        const pg = JSON.parse(text);
        assert.ok(Array.isArray(pg.events) && typeof pg.next === 'number', `events page shape: ${short(text)}`);
        assert.ok(pg.events.length <= 50, 'limit=50 honoured');
        events.push(...pg.events);
        if (pg.events.length === 0) { assert.equal(pg.next, after, 'next stays put at the end'); break; }
        assert.equal(pg.next, pg.events[pg.events.length - 1].seq, 'next is the last seq of the page');
        after = pg.next;
      }
      assert.ok(events.length > 10, `expected the actions above as events, got ${events.length}`);
      assert.equal(events[0].seq, 1, 'seq starts at 1');
      for (let i = 1; i < events.length; i++) {
        assert.ok(events[i].seq > events[i - 1].seq, `seq strictly increasing at index ${i}: ${events[i - 1].seq} then ${events[i].seq}`);
        assert.ok(events[i].t_ms >= events[i - 1].t_ms, `t_ms non-decreasing at seq ${events[i].seq}: ${events[i - 1].t_ms} then ${events[i].t_ms}`);
      }
      for (const e of events) {
        assert.ok(['agent', 'human', 'system'].includes(e.actor), `actor of ${JSON.stringify(e)}`);
        assert.equal(typeof e.kind, 'string');
        assert.equal(typeof e.data, 'object');
      }

      const actions = events.filter((e) => e.kind === 'action');
      const clicks = actions.filter((e) => ['left_click', 'double_click', 'triple_click', 'left_click_drag', 'mouse_move'].includes(e.data.action) && e.data.coordinate);
      assert.ok(clicks.length >= 6, `expected >= 6 positioned action events, got ${clicks.length}`);
      for (const e of clicks) {
        assert.equal(e.actor, 'agent', `action event actor: ${JSON.stringify(e)}`);
        assert.ok(e.data.screen && Number.isInteger(e.data.screen.x) && Number.isInteger(e.data.screen.y),
          `action event should carry data.screen.x/y: ${JSON.stringify(e)}`);
        const [sx, sy] = agentToScreen(e.data.coordinate, DECL);
        assert.deepEqual([e.data.screen.x, e.data.screen.y], [sx, sy],
          `data.screen of ${e.data.action} at declared ${JSON.stringify(e.data.coordinate)} (display ${DW}x${DH} on ${SCREEN.w}x${SCREEN.h})`);
      }
      for (const kind of ['screenshot', 'type', 'key', 'scroll', 'zoom', 'cursor_position']) {
        assert.ok(actions.some((e) => e.data.action === kind), `an action event for ${kind}`);
      }
      const typed = actions.find((e) => e.data.action === 'type');
      assert.equal(typed.data.text, 'hello porthole', `type event carries its text: ${JSON.stringify(typed)}`);

      // The control sequence, in order.
      const tail = events.filter((e) => e.seq > controlFrom && ['control', 'refused', 'action'].includes(e.kind))
        .filter((e) => e.kind !== 'action' || e.data.action === 'left_click');
      const want = [
        ['control', 'pause_agent'], ['refused', 'left_click'], ['refused', 'screenshot'], ['control', 'resume_agent'],
        ['action', 'left_click'], ['control', 'take'], ['refused', 'left_click'], ['control', 'release'],
        ['action', 'left_click'],
      ];
      const got = tail.map((e) => [e.kind, e.data.action]);
      assert.deepEqual(got, want, `control/refused/action events after seq ${controlFrom}:\n${JSON.stringify(tail, null, 1)}`);
      for (const e of tail.filter((x) => x.kind === 'refused')) {
        assert.ok(typeof e.data.reason === 'string' && e.data.reason.length > 0, `refused event should say why: ${JSON.stringify(e)}`);
      }
    });

    test('GET /v1/screenshot?format=jpeg is image/jpeg of the declared size; default is PNG', async () => {
      let res = await api('/v1/screenshot?format=jpeg');
      let buf = Buffer.from(await res.arrayBuffer());
      assert.equal(res.status, 200, `GET /v1/screenshot?format=jpeg -> ${res.status}: ${buf.toString().slice(0, 300)}`);
      assert.match(res.headers.get('content-type') || '', /^image\/jpeg/, 'content-type');
      assert.deepEqual(Object.values(jpegSize(buf)).reverse(), DECL, 'JPEG size');
      res = await api('/v1/screenshot');
      buf = Buffer.from(await res.arrayBuffer());
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') || '', /^image\/png/, 'content-type of the default screenshot');
      const img = decodePng(buf);
      assert.deepEqual([img.width, img.height], DECL, 'PNG size');
    });

    test('POST /v1/exec: echo, timeout, missing cwd', async () => {
      const exec = async (body) => {
        const res = await api('/v1/exec', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
        const text = await res.text();
        let json;
        try { json = JSON.parse(text); } catch { /* below */ }
        return { status: res.status, json, text };
      };
      let r = await exec({ command: 'echo hi' });
      assert.equal(r.status, 200, `exec echo hi -> ${r.status}: ${r.text}`);
      assert.equal(r.json.exit_code, 0, r.text);
      assert.equal(r.json.stdout, 'hi\n', r.text);
      assert.equal(r.json.stderr, '', r.text);
      assert.equal(r.json.truncated, false, r.text);
      assert.equal(typeof r.json.duration_ms, 'number', r.text);

      r = await exec({ command: 'sleep 30', timeout_ms: 500 });
      assert.equal(r.status, 200, `exec sleep 30 (timeout_ms 500) -> ${r.status}: ${r.text}`);
      assert.equal(r.json.timed_out, true, `timed_out: ${r.text}`);
      assert.notEqual(r.json.exit_code, 0, `a timed-out command has no zero exit code: ${r.text}`);
      assert.ok(r.json.duration_ms < 30000, `the command was killed, not awaited: ${r.text}`);

      const missing = path.join(work, 'does-not-exist');
      r = await exec({ command: 'pwd', cwd: missing });
      assert.equal(r.status, 400, `exec with cwd ${missing}: expected 400, got ${r.status}: ${r.text}`);
      assert.ok(isErrorBody(r.json), `400 body shape: ${r.text}`);
      assert.match(r.json.error.message, /cwd/, `400 message should name cwd: ${r.text}`);
    });
  });
}
