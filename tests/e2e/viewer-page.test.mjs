// The viewer page on its own, against a stub HTTP server (no agent needed): what it sends to
// POST /v1/whep, and how it shows the agent's JSON errors.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { launchChromium, waitFor, VIEWER_HTML } from './harness.mjs';

const VIEWER = VIEWER_HTML;

describe('viewer page against a stub agent', { timeout: 120000 }, () => {
  let server, base, browser;
  let reply = { status: 401, body: { error: { code: 'unauthorized', message: 'missing or wrong bearer token' } } };
  const requests = [];

  before(async () => {
    server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c) => { body += c; });
      req.on('end', () => {
        const url = new URL(req.url, 'http://x');
        if (req.method === 'GET' && url.pathname === '/viewer') {
          res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
          res.end(readFileSync(VIEWER));
          return;
        }
        requests.push({ method: req.method, path: url.pathname, headers: req.headers, body });
        res.writeHead(url.pathname === '/v1/whep' ? reply.status : 404, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify(url.pathname === '/v1/whep' ? reply.body : { error: { code: 'not_found', message: 'no such endpoint' } }));
      });
    });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${server.address().port}`;
    browser = await launchChromium();
  });

  after(async () => {
    if (browser) await browser.close().catch(() => {});
    if (server) await new Promise((r) => server.close(r));
  });

  it('without a token it asks for one and sends nothing', async () => {
    const page = await browser.newPage();
    try {
      const before = requests.length;
      await page.goto(`${base}/viewer`);
      await page.waitForSelector('#login:not([hidden])', { timeout: 10000 });
      assert.equal(await page.evaluate(() => window.porthole.state), 'new');
      assert.equal(requests.length, before, 'no request without a token');
    } finally {
      await page.close();
    }
  });

  it('a 401 shows the agent\'s message, sets lastError, asks for the token again', async () => {
    reply = { status: 401, body: { error: { code: 'unauthorized', message: 'missing or wrong bearer token' } } };
    const page = await browser.newPage();
    try {
      const before = requests.length;
      await page.goto(`${base}/viewer#token=bad-token`);
      await waitFor(() => page.evaluate(() => window.porthole.state === 'failed'), { timeout: 15000, message: 'state failed' });
      const err = await page.evaluate(() => window.porthole.lastError);
      assert.deepEqual({ status: err.status, code: err.code, message: err.message },
        { status: 401, code: 'unauthorized', message: 'missing or wrong bearer token' });
      const shown = await page.textContent('#msg');
      assert.match(shown, /missing or wrong bearer token/, 'the message is on the page');
      assert.ok(await page.isVisible('#login'), 'the token form is shown again');
      assert.match(await page.textContent('#loginErr'), /missing or wrong bearer token/);
      assert.equal(new URL(page.url()).hash, '', 'the token is removed from the address bar');

      const req = requests[before];
      assert.ok(req, 'POST /v1/whep was sent');
      assert.equal(req.method, 'POST');
      assert.equal(req.path, '/v1/whep');
      assert.equal(req.headers['content-type'], 'application/sdp');
      assert.equal(req.headers.authorization, 'Bearer bad-token');
      assert.match(req.body, /^v=0/);
      assert.match(req.body, /m=video [^\n]*\r?\n[\s\S]*a=recvonly/, 'a recvonly video section');
      assert.match(req.body, /m=application [^\n]*webrtc-datachannel/, 'a data channel section');
      assert.match(req.body, /a=rtpmap:\d+ H264\/90000/, 'H.264 offered');
      assert.match(req.body, /a=candidate:/, 'ICE candidates gathered before the POST');
    } finally {
      await page.close();
    }
  });

  it('a 400 shows the agent\'s message and rejects waitOpen()', async () => {
    reply = { status: 400, body: { error: { code: 'bad_sdp', message: 'the offer has no video section' } } };
    const page = await browser.newPage();
    try {
      await page.goto(`${base}/viewer#token=some-token`);
      const rejected = await page.evaluate(() => window.porthole.waitOpen(15000).then(() => 'opened', (e) => e.message));
      assert.match(rejected, /the offer has no video section/);
      assert.match(await page.textContent('#msg'), /the offer has no video section/);
      assert.match(await page.textContent('#msg'), /bad_sdp/);
      assert.equal(await page.evaluate(() => window.porthole.lastError.code), 'bad_sdp');
      assert.equal(await page.isVisible('#login'), false, 'a 400 is not a token problem');
      assert.equal(await page.evaluate(() => sessionStorage.getItem('porthole.token')), 'some-token');
    } finally {
      await page.close();
    }
  });
});
