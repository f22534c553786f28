// The control lock where input is injected, against the real porthole-agent on Xvfb with two
// tokens (--token-file for the operator, --agent-token-file for the coding agent):
//
// - a long agent `type` into an xterm stops within one chunk of an operator's `take`, answers
//   409 and leaves a `refused` event; nothing of it resumes after `release`;
// - a `hold_key` ends at the `take`, and the key is let go (a human's "a" then types "a");
// - agent exec (HTTP with the agent token, and MCP) is refused with 409 while a human holds
//   control, the operator's is not, and the agent's works again after release;
// - a human's keys and text during takeover reach the xterm but never appear as characters in
//   /v1/events (either token) nor in the events the viewer receives.
//
// Characters are counted in a file that `cat` writes from a raw-mode terminal, so every
// character lands there as soon as the xterm gets it (no line buffering).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  requireAgentBin, startXvfb, startAgent, spawnGroup, killGroup, waitForWindow, launchChromium,
  openViewer, viewerEvents, waitFor, sleep, withAgentLog, tmpDir, fileSize,
} from './harness.mjs';

const WIDTH = 1280;
const HEIGHT = 800;
/** guest-agent/src/input.rs TYPE_CHUNK: characters injected between two control checks. */
const TYPE_CHUNK = 16;
/**
 * Characters that may still land after `take` answers: the chunk being injected at that moment,
 * plus one more for what was already in the X server → xterm → cat pipeline when we sampled.
 */
const AFTER_TAKE_MAX = 2 * TYPE_CHUNK;

describe('control lock enforced at injection; agent exec gated; human keys private', { timeout: 10 * 60 * 1000 }, () => {
  let work, xvfb, agent, agentToken, term, out, browser, page;
  const clients = [];

  const test = (name, fn, opts = {}) => it(name, { timeout: 180000, ...opts }, withAgentLog(() => agent, fn,
    () => (page?.logLines?.length ? `--- viewer console ---\n${page.logLines.slice(-15).join('\n')}` : '')));

  const call = (token, p, init = {}) => fetch(`${agent.url}${p}`, {
    ...init,
    headers: { Authorization: `Bearer ${token}`, ...(init.body ? { 'Content-Type': 'application/json' } : {}), ...(init.headers || {}) },
  });
  const op = (p, init) => call(agent.token, p, init);
  const ag = (p, init) => call(agentToken, p, init);
  const post = (fn, p, body) => fn(p, { method: 'POST', body: JSON.stringify(body) });
  const control = async (action) => {
    const r = await post(op, '/v1/control', { action });
    assert.equal(r.status, 200, `POST /v1/control ${action}: ${r.status} ${await r.clone().text()}`);
    return r.json();
  };
  const events = async (token = agentToken) => {
    const r = await call(token, '/v1/events?after=0&limit=10000');
    assert.equal(r.status, 200, `GET /v1/events: ${r.status}`);
    return (await r.json()).events;
  };
  const typed = () => readFileSync(out, 'latin1');

  /** An xterm at +100+100 whose terminal is raw: each typed byte goes straight into `out`. */
  async function startRawTerminal() {
    const title = `porthole-e2e-raw-${process.pid}`;
    writeFileSync(out, '');
    const child = spawnGroup('xterm', [
      '-title', title, '-geometry', '80x10+100+100', '-bg', '#202830', '-fg', '#ffffff',
      '-e', 'sh', '-c', `stty raw -echo; exec cat > '${out.replace(/'/g, "'\\''")}'`,
    ], { env: { DISPLAY: xvfb.display }, log: path.join(work, 'xterm.log') });
    await waitForWindow(xvfb.display, title);
    return { child, stop: () => killGroup(child) };
  }

  /** The agent puts the pointer in the terminal (keyboard focus follows it without a WM). */
  async function agentFocusTerminal() {
    for (const body of [{ action: 'mouse_move', coordinate: [300, 150] }, { action: 'left_click' }]) {
      const r = await post(ag, '/v1/computer', body);
      assert.equal(r.status, 200, `agent ${body.action}: ${r.status} ${await r.text()}`);
    }
    // Prove the focus: one character typed by the agent lands.
    const before = fileSize(out);
    const r = await post(ag, '/v1/computer', { action: 'type', text: 'k' });
    assert.equal(r.status, 200, `agent type "k": ${r.status} ${await r.text()}`);
    await waitFor(() => fileSize(out) > before, { timeout: 10000, message: `"k" typed by the agent to reach ${out}` });
  }

  async function mcpClient(token) {
    const c = new Client({ name: 'porthole-e2e-control', version: '0.0.0' });
    await c.connect(new StreamableHTTPClientTransport(new URL(`${agent.url}/mcp`), {
      requestInit: { headers: { Authorization: `Bearer ${token}` } },
    }));
    clients.push(c);
    return c;
  }

  before(async () => {
    requireAgentBin();
    work = tmpDir('porthole-e2e-control-');
    out = path.join(work, 'typed.txt');
    xvfb = await startXvfb({ width: WIDTH, height: HEIGHT, log: path.join(work, 'xvfb.log') });
    agentToken = randomBytes(24).toString('hex');
    const agentTokenFile = path.join(work, 'agent-token');
    writeFileSync(agentTokenFile, agentToken, { mode: 0o600 });
    agent = await startAgent({ display: xvfb.display, args: ['--agent-token-file', agentTokenFile] });
    term = await startRawTerminal();
  });

  after(async () => {
    for (const c of clients) await c.close().catch(() => {});
    if (page) await page.close().catch(() => {});
    if (browser) await browser.close().catch(() => {});
    if (term) await term.stop();
    if (agent) await agent.stop();
    if (xvfb) await xvfb.stop();
    if (work && !process.env.PORTHOLE_E2E_KEEP) rmSync(work, { recursive: true, force: true });
  });

  test('a long agent type stops within one chunk of the operator taking control, and does not resume', async (t) => {
    await agentFocusTerminal();
    const text = 'abcdefghij'.repeat(300); // 3000 characters: several seconds of typing
    const start = fileSize(out);
    const typing = post(ag, '/v1/computer', { action: 'type', text }).then(async (r) => ({ status: r.status, body: await r.json() }));
    await waitFor(() => fileSize(out) - start >= 100, { timeout: 30000, interval: 10, message: 'the agent typing to be under way (100 characters in the file)' });

    const st = await control('take');
    assert.equal(st.holder, 'human', `take: ${JSON.stringify(st)}`);
    const atTake = fileSize(out);
    const res = await typing;
    assert.equal(res.status, 409, `the interrupted type answers 409: ${JSON.stringify(res.body)}`);
    assert.equal(res.body.error?.code, 'control_refused', JSON.stringify(res.body));
    await sleep(1500);
    const afterTake = fileSize(out);
    assert.ok(atTake - start < text.length, 'the type was still running at the take');
    assert.ok(afterTake - atTake <= AFTER_TAKE_MAX,
      `at most ${AFTER_TAKE_MAX} characters may land after take answered (one chunk of ${TYPE_CHUNK} plus one in flight); ${afterTake - atTake} did (${atTake - start} before, of ${text.length})`);
    t.diagnostic(`typed ${atTake - start} of ${text.length} before take answered, ${afterTake - atTake} after`);
    const landed = typed().slice(start);
    assert.ok(text.startsWith(landed), `what landed is a prefix of the text, in order: ${JSON.stringify(landed.slice(-40))}`);

    const refused = (await events()).filter((e) => e.kind === 'refused' && e.data?.action === 'type');
    assert.ok(refused.some((e) => e.data.interrupted === true && e.actor === 'agent'),
      `a refused event for the interrupted type: ${JSON.stringify(refused)}`);

    // Released: the rest of the type was dropped, not held back.
    await control('release');
    await sleep(1500);
    assert.equal(fileSize(out), afterTake, 'nothing more of the type lands after release');
  });

  test('hold_key ends at the take and the key is let go', async () => {
    await agentFocusTerminal();
    const t0 = Date.now();
    const holding = post(ag, '/v1/computer', { action: 'hold_key', text: 'shift', duration: 60 })
      .then(async (r) => ({ status: r.status, body: await r.json(), ms: Date.now() - t0 }));
    await sleep(700);
    await control('take');
    const res = await holding;
    assert.equal(res.status, 409, `hold_key interrupted by take: ${JSON.stringify(res.body)}`);
    assert.ok(res.ms < 20000, `hold_key ended at the take, after ${res.ms} ms, not after its 60 s`);
    assert.equal(res.body.error?.code, 'control_refused', JSON.stringify(res.body));
    // Shift is up again: the operator's own exec of xdotool types a lowercase letter.
    const before = fileSize(out);
    const r = await post(op, '/v1/exec', { command: `DISPLAY=${xvfb.display} xdotool type q` });
    assert.equal(r.status, 200, `operator exec during takeover: ${r.status} ${await r.text()}`);
    await waitFor(() => fileSize(out) > before, { timeout: 10000, message: 'xdotool "q" in the file' });
    assert.equal(typed().slice(before), 'q', 'shift was released at the take (a "q", not a "Q")');
    await control('release');
  });

  test('agent exec is refused (409) while a human holds control, over HTTP and MCP; the operator may exec; it works after release', async () => {
    const mcp = await mcpClient(agentToken);
    const ok = await post(ag, '/v1/exec', { command: 'echo before' });
    assert.equal(ok.status, 200, `agent exec before take: ${ok.status} ${await ok.text()}`);

    await control('take');
    const seqBefore = (await events()).at(-1)?.seq ?? 0;
    let r = await post(ag, '/v1/exec', { command: 'echo during' });
    let body = await r.json();
    assert.equal(r.status, 409, `agent exec while a human holds control: ${JSON.stringify(body)}`);
    assert.equal(body.error?.code, 'control_refused', JSON.stringify(body));
    const viaMcp = await mcp.callTool({ name: 'exec', arguments: { command: 'echo mcp-during' } });
    assert.equal(viaMcp.isError, true, `MCP exec while a human holds control: ${JSON.stringify(viaMcp)}`);
    assert.match(JSON.stringify(viaMcp.content), /control_refused/);
    r = await post(op, '/v1/exec', { command: 'echo operator' });
    body = await r.json();
    assert.equal(r.status, 200, `operator exec while holding control: ${JSON.stringify(body)}`);
    assert.equal(body.stdout, 'operator\n');
    const refused = (await events()).filter((e) => e.seq > seqBefore && e.kind === 'refused' && e.data?.action === 'exec');
    assert.equal(refused.length, 2, `one refused event per refused exec (HTTP, MCP): ${JSON.stringify(refused)}`);

    // Paused, no human: still refused.
    await control('release');
    await control('pause_agent');
    r = await post(ag, '/v1/exec', { command: 'echo paused' });
    assert.equal(r.status, 409, `agent exec while paused: ${r.status} ${await r.text()}`);
    await control('resume_agent');

    r = await post(ag, '/v1/exec', { command: 'echo after' });
    body = await r.json();
    assert.equal(r.status, 200, `agent exec after release: ${JSON.stringify(body)}`);
    assert.equal(body.stdout, 'after\n');
    const again = await mcp.callTool({ name: 'exec', arguments: { command: 'echo mcp-after' } });
    assert.ok(!again.isError, `MCP exec after release: ${JSON.stringify(again)}`);
  });

  test("a human's keys and text during takeover land in the guest but never as characters in /v1/events", async () => {
    await agentFocusTerminal(); // the pointer (and so the keyboard focus) in the terminal
    browser = await launchChromium();
    page = await openViewer(browser, agent);
    const seqBefore = (await events()).at(-1)?.seq ?? 0;
    await control('take'); // by the API: every viewer's input is applied
    const before = fileSize(out);
    const secretKeys = 'zqxjwv';
    const secretText = 'Pa55-w0rd!';
    await page.evaluate(({ keys, text }) => {
      for (const k of keys) {
        window.porthole.send({ type: 'key', code: `Key${k.toUpperCase()}`, key: k, down: true });
        window.porthole.send({ type: 'key', code: `Key${k.toUpperCase()}`, key: k, down: false });
      }
      window.porthole.send({ type: 'text', text });
      window.porthole.send({ type: 'key', code: 'ShiftLeft', key: 'Shift', down: true });
      window.porthole.send({ type: 'key', code: 'KeyY', key: 'Y', down: true });
      window.porthole.send({ type: 'key', code: 'KeyY', key: 'Y', down: false });
      window.porthole.send({ type: 'key', code: 'ShiftLeft', key: 'Shift', down: false });
      window.porthole.send({ type: 'key', code: 'Enter', key: 'Enter', down: true });
      window.porthole.send({ type: 'key', code: 'Enter', key: 'Enter', down: false });
    }, { keys: secretKeys, text: secretText });
    const want = `${secretKeys}${secretText}Y\r`;
    await waitFor(() => typed().slice(before) === want, {
      timeout: 15000, message: `the human's input to land in the terminal as ${JSON.stringify(want)} (has ${JSON.stringify(typed().slice(before))})`,
    });

    for (const [who, token] of [['agent', agentToken], ['operator', agent.token]]) {
      const evs = (await events(token)).filter((e) => e.seq > seqBefore);
      const human = evs.filter((e) => e.kind === 'input' && e.actor === 'human');
      const keys = human.filter((e) => e.data.device === 'key');
      const texts = human.filter((e) => e.data.device === 'text');
      assert.ok(keys.length >= secretKeys.length + 3, `${who}: key events recorded: ${JSON.stringify(keys)}`);
      for (const e of keys) {
        assert.equal(e.data.code, undefined, `${who}: no DOM code on a key event: ${JSON.stringify(e)}`);
        if (e.data.key !== undefined) {
          assert.ok(['ShiftLeft', 'Enter'].includes(e.data.key), `${who}: only named special keys: ${JSON.stringify(e)}`);
        } else {
          assert.equal(e.data.count, 1, `${who}: a printing key is a count: ${JSON.stringify(e)}`);
        }
      }
      assert.ok(keys.some((e) => e.data.count === 1 && e.data.modifiers?.includes('shift')), `${who}: shift+Y recorded as a count with its modifier`);
      assert.ok(keys.some((e) => e.data.key === 'Enter' && e.data.down === true), `${who}: Enter by name`);
      assert.deepEqual(texts.map((e) => e.data), [{ device: 'text', count: secretText.length, viewer: texts[0]?.data.viewer }],
        `${who}: the text as a count only`);
      const all = JSON.stringify(evs);
      for (const s of [secretText, secretKeys, 'KeyZ', 'KeyY', '"z"', '"Y"', 'w0rd']) {
        assert.ok(!all.includes(s), `${who}: ${JSON.stringify(s)} appears in /v1/events: ${all.slice(0, 2000)}`);
      }
    }
    const dc = JSON.stringify(await viewerEvents(page));
    for (const s of [secretText, secretKeys, 'KeyZ', 'w0rd']) {
      assert.ok(!dc.includes(s), `${JSON.stringify(s)} appears in the events sent to the viewer`);
    }
    await control('release');
  });
});
