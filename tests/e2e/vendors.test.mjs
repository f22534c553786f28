// The vendors' own tool-call shapes against the real agent on a real Xvfb display: Anthropic
// tool-use blocks (the `computer` tool and member tools by name, one or a list) on
// POST /v1/anthropic/tool_use, OpenAI `computer_call` items (one action or actions[]) on
// POST /v1/openai/computer_call, and chapters (POST /v1/chapters). Everything is sent with the
// coding agent's token (these are its endpoints); where the pointer went is read back from the
// X server with xdotool, independently of the agent.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { startXvfb, startAgent, mouseLocation, tmpDir, withAgentLog } from './harness.mjs';

describe('vendor tool shapes and chapters', () => {
  let xvfb, agent, work, agentToken;
  const call = async (p, body) => {
    const r = await fetch(agent.url + p, {
      method: 'POST',
      headers: { authorization: `Bearer ${agentToken}`, 'content-type': 'application/json' },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });
    return { status: r.status, body: await r.json() };
  };

  before(async () => {
    xvfb = await startXvfb({ width: 1280, height: 800 });
    work = tmpDir('porthole-e2e-vendors-');
    agentToken = randomBytes(24).toString('hex');
    const f = path.join(work, 'agent-token');
    writeFileSync(f, agentToken, { mode: 0o600 });
    agent = await startAgent({ display: xvfb.display, args: ['--agent-token-file', f] });
  });
  after(async () => {
    await agent?.stop();
    await xvfb?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('Anthropic: member tools by name and the computer tool, one block or a list in order', withAgentLog(() => agent, async () => {
    let r = await call('/v1/anthropic/tool_use', { type: 'tool_use', id: 'toolu_01', name: 'mouse_move', input: { coordinate: [123, 234] } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual(await mouseLocation(xvfb.display), { x: 123, y: 234 });
    r = await call('/v1/anthropic/tool_use', { name: 'computer', input: { action: 'mouse_move', coordinate: [300, 310] } });
    assert.equal(r.status, 200);
    assert.deepEqual(await mouseLocation(xvfb.display), { x: 300, y: 310 });
    r = await call('/v1/anthropic/tool_use', { name: 'screenshot', input: {} });
    assert.equal(r.status, 200);
    assert.ok(Buffer.from(r.body.base64_image, 'base64').subarray(1, 4).toString() === 'PNG', 'a PNG screenshot');

    // A list: in order, stopping at the first refusal (an off-screen point), whose entry is the error.
    r = await call('/v1/anthropic/tool_use', [
      { name: 'mouse_move', input: { coordinate: [10, 20] } },
      { name: 'cursor_position', input: {} },
      { name: 'mouse_move', input: { coordinate: [5000, 20] } },
      { name: 'mouse_move', input: { coordinate: [700, 700] } },
    ]);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.results.length, 3);
    assert.match(r.body.results[1].output, /X=10,Y=20/);
    assert.equal(r.body.results[2].error.code, 'invalid_action');
    assert.match(r.body.results[2].error.message, /^coordinate: \[5000, 20\] is off screen/);
    assert.deepEqual(await mouseLocation(xvfb.display), { x: 10, y: 20 }, 'nothing after the refusal ran');

    // A malformed block anywhere: 400 naming it, and nothing in the list runs.
    r = await call('/v1/anthropic/tool_use', [{ name: 'mouse_move', input: { coordinate: [600, 600] } }, { name: 'teleport', input: {} }]);
    assert.equal(r.status, 400);
    assert.match(r.body.error.message, /^\[1\]\.name: unknown tool 'teleport'/);
    assert.deepEqual(await mouseLocation(xvfb.display), { x: 10, y: 20 });
  }));

  it('OpenAI: a computer_call item, one action or a batch, answered with its computer_call_output', withAgentLog(() => agent, async () => {
    const checks = [{ id: 'cu_sc_1', code: 'malicious_instructions', message: 'check' }];
    let r = await call('/v1/openai/computer_call', {
      type: 'computer_call', id: 'cu_1', call_id: 'call_abc', status: 'completed', pending_safety_checks: checks,
      actions: [{ type: 'move', x: 400, y: 300 }, { type: 'drag', path: [{ x: 400, y: 300 }, { x: 450, y: 320 }, { x: 500, y: 350 }] }, { type: 'wait' }],
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.type, 'computer_call_output');
    assert.equal(r.body.call_id, 'call_abc');
    assert.deepEqual(r.body.acknowledged_safety_checks, checks);
    assert.equal(r.body.output.type, 'computer_screenshot');
    assert.match(r.body.output.image_url, /^data:image\/png;base64,/);
    const png = Buffer.from(r.body.output.image_url.split(',')[1], 'base64');
    assert.equal(png.subarray(1, 4).toString(), 'PNG');
    assert.deepEqual(await mouseLocation(xvfb.display), { x: 500, y: 350 }, 'the drag ended where its path does');

    r = await call('/v1/openai/computer_call', { type: 'computer_call', call_id: 'call_2', action: { type: 'click', x: 640, y: 400, button: 'left' } });
    assert.equal(r.status, 200);
    assert.deepEqual(await mouseLocation(xvfb.display), { x: 640, y: 400 });

    // Every validation error names the field.
    for (const [body, msg] of [
      [{ type: 'computer_call', action: { type: 'move', x: 1, y: 1 } }, /^call_id: missing/],
      [{ type: 'computer_call', call_id: 'c', action: { type: 'click', x: 1 } }, /^action\.y: required/],
      [{ type: 'computer_call', call_id: 'c', actions: [{ type: 'move', x: 1, y: 1 }, { type: 'fly' }] }, /^actions\[1\]\.type: unknown action 'fly'/],
      [{ type: 'message', call_id: 'c' }, /^type: "message": expected "computer_call"/],
      ['{not json', /^body: not JSON/],
    ]) {
      const e = await call('/v1/openai/computer_call', body);
      assert.equal(e.status, 400, JSON.stringify(body));
      assert.match(e.body.error.message, msg);
    }
    assert.deepEqual(await mouseLocation(xvfb.display), { x: 640, y: 400 }, 'a refused item moved nothing');
  }));

  it('while a human holds control, neither vendor shape acts (409 control_refused) and the pointer stays', withAgentLog(() => agent, async () => {
    const op = { authorization: `Bearer ${agent.token}`, 'content-type': 'application/json' };
    const control = (action) => fetch(`${agent.url}/v1/control`, { method: 'POST', headers: op, body: JSON.stringify({ action }) });
    // The coding agent cannot take control back for itself.
    assert.equal((await call('/v1/control', { action: 'release' })).status, 403);
    await call('/v1/anthropic/tool_use', { name: 'mouse_move', input: { coordinate: [50, 50] } });
    assert.equal((await control('take')).status, 200);
    try {
      for (const [p, body] of [
        ['/v1/anthropic/tool_use', { name: 'mouse_move', input: { coordinate: [900, 700] } }],
        ['/v1/openai/computer_call', { type: 'computer_call', call_id: 'c9', actions: [{ type: 'move', x: 900, y: 700 }, { type: 'click', x: 900, y: 700, button: 'left' }] }],
      ]) {
        const r = await call(p, body);
        assert.equal(r.status, 409, `${p}: ${JSON.stringify(r.body)}`);
        assert.equal(r.body.error.code, 'control_refused');
      }
      const list = await call('/v1/anthropic/tool_use', [{ name: 'mouse_move', input: { coordinate: [900, 700] } }]);
      assert.equal(list.status, 200);
      assert.equal(list.body.results[0].error.code, 'control_refused', 'a list stops at the refusal, its entry the error');
      assert.deepEqual(await mouseLocation(xvfb.display), { x: 50, y: 50 }, 'nothing moved while the human held control');
    } finally {
      await control('release');
    }
  }));

  it('chapters: a chapter event with a screenshot that can be fetched, and errors on the field', withAgentLog(() => agent, async () => {
    const r = await call('/v1/chapters', { title: 'Login works', description: 'Signs in with the demo user', proves: 'login' });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    const ev = r.body.chapter;
    assert.equal(ev.kind, 'chapter');
    assert.equal(ev.actor, 'agent');
    assert.equal(ev.data.title, 'Login works');
    assert.equal(ev.data.description, 'Signs in with the demo user');
    assert.match(ev.data.screenshot, /^chapter-\d+\.jpg$/);
    const op = { authorization: `Bearer ${agent.token}` };
    const session = await (await fetch(`${agent.url}/v1/sessions/current`, { headers: op })).json();
    // Stored with the session's thumbnails (served by GET /v1/recordings/{id}/thumbs/{name} once
    // the session is recorded; this agent runs --no-record, so read the file itself).
    const jpg = readFileSync(path.join(agent.dataDir, 'recordings', session.id, 'thumbs', ev.data.screenshot));
    assert.deepEqual([...jpg.subarray(0, 3)], [0xff, 0xd8, 0xff], 'a JPEG');
    assert.ok(jpg.length > 1000, `a whole screenshot (${jpg.length} bytes)`);
    const events = (await (await fetch(`${agent.url}/v1/events?after=0`, { headers: { authorization: `Bearer ${agentToken}` } })).json()).events;
    assert.ok(events.some((e) => e.seq === ev.seq && e.kind === 'chapter'), 'the chapter is on the timeline');
    for (const [body, msg] of [[{}, /^title: required/], [{ title: '  ' }, /^title: must not be empty/], [{ title: 'x', description: 5 }, /^description: expected a string/]]) {
      const e = await call('/v1/chapters', body);
      assert.equal(e.status, 400);
      assert.match(e.body.error.message, msg);
    }
  }));
});
