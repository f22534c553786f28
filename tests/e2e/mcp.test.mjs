// The agent's MCP server (streamable HTTP at /mcp, bearer token), driven by the official MCP
// TypeScript SDK client against the real porthole-agent on a 1280x800 Xvfb.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  StreamableHTTPClientTransport, StreamableHTTPError,
} from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  startXvfb, startAgent, mouseLocation, waitFor, withAgentLog, tmpDir,
} from './harness.mjs';
import path from 'node:path';
import { rmSync } from 'node:fs';

const WIDTH = 1280;
const HEIGHT = 800;

let logDir, xvfb, agent, client;
const extraClients = [];

function newClient(headers) {
  const c = new Client({ name: 'porthole-e2e-mcp', version: '0.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(`${agent.url}/mcp`), {
    requestInit: headers ? { headers } : {},
  });
  return { c, transport };
}

/** Text of all text content blocks of a tool result. */
function textOf(res) {
  return (res.content || []).filter((b) => b.type === 'text').map((b) => b.text).join('\n');
}

const withLog = (fn) => withAgentLog(() => agent, fn);

before(async () => {
  logDir = tmpDir('porthole-e2e-mcp-');
  xvfb = await startXvfb({ width: WIDTH, height: HEIGHT, log: path.join(logDir, 'xvfb.log') });
  agent = await startAgent({ display: xvfb.display });
  const { c, transport } = newClient(agent.auth());
  client = c;
  await client.connect(transport);
});

after(async () => {
  for (const c of [client, ...extraClients]) {
    if (c) await c.close().catch(() => {});
  }
  if (agent) await agent.stop();
  if (xvfb) await xvfb.stop();
  if (logDir && !process.env.PORTHOLE_E2E_KEEP) rmSync(logDir, { recursive: true, force: true });
});

test('listTools offers computer, exec and screenshot with input schemas', withLog(async () => {
  const { tools } = await client.listTools();
  const byName = Object.fromEntries(tools.map((t) => [t.name, t]));
  for (const name of ['computer', 'exec', 'screenshot']) {
    assert.ok(byName[name], `tool ${name} missing from ${JSON.stringify(tools.map((t) => t.name))}`);
    assert.equal(byName[name].inputSchema?.type, 'object', `${name} inputSchema: ${JSON.stringify(byName[name].inputSchema)}`);
  }
  const computer = byName.computer.inputSchema;
  const actions = computer.properties?.action?.enum;
  assert.ok(Array.isArray(actions), `computer action enum: ${JSON.stringify(computer)}`);
  for (const a of ['left_click', 'zoom', 'mouse_move', 'screenshot']) {
    assert.ok(actions.includes(a), `computer action enum lacks ${a}: ${JSON.stringify(actions)}`);
  }
  assert.deepEqual(computer.required, ['action']);
  const exec = byName.exec.inputSchema;
  assert.equal(exec.properties?.command?.type, 'string', `exec schema: ${JSON.stringify(exec)}`);
  assert.deepEqual(exec.required, ['command']);
}));

test('computer mouse_move and left_click move the X pointer', withLog(async () => {
  const move = await client.callTool({ name: 'computer', arguments: { action: 'mouse_move', coordinate: [200, 150] } });
  assert.ok(!move.isError, `mouse_move: ${JSON.stringify(move)}`);
  await waitFor(async () => {
    const p = await mouseLocation(xvfb.display);
    return p.x === 200 && p.y === 150 ? p : null;
  }, { timeout: 5000, message: 'pointer at 200,150' });

  const click = await client.callTool({ name: 'computer', arguments: { action: 'left_click', coordinate: [300, 200] } });
  assert.ok(!click.isError, `left_click: ${JSON.stringify(click)}`);
  const p = await mouseLocation(xvfb.display);
  assert.deepEqual(p, { x: 300, y: 200 }, 'X pointer after left_click at [300, 200]');
}));

test('screenshot returns a 1280x800 PNG image block', withLog(async () => {
  const res = await client.callTool({ name: 'screenshot', arguments: {} });
  assert.ok(!res.isError, `screenshot: ${JSON.stringify(res).slice(0, 500)}`);
  const img = res.content.find((b) => b.type === 'image');
  assert.ok(img, `no image block in ${JSON.stringify(res.content.map((b) => b.type))}`);
  assert.equal(img.mimeType, 'image/png');
  const buf = Buffer.from(img.data, 'base64');
  assert.deepEqual([...buf.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'PNG signature');
  assert.equal(buf.subarray(12, 16).toString('latin1'), 'IHDR');
  assert.equal(buf.readUInt32BE(16), WIDTH, 'PNG width');
  assert.equal(buf.readUInt32BE(20), HEIGHT, 'PNG height');
}));

test('chapter marks the session: a chapter event on the timeline, errors on the field', withLog(async () => {
  const res = await client.callTool({ name: 'chapter', arguments: { title: 'Checkout works', description: 'Adds an item and pays' } });
  assert.ok(!res.isError, `chapter: ${JSON.stringify(res)}`);
  const ev = JSON.parse(textOf(res));
  assert.equal(ev.kind, 'chapter');
  assert.equal(ev.data.title, 'Checkout works');
  const events = (await (await fetch(`${agent.url}/v1/events?after=0`, { headers: agent.auth() })).json()).events;
  assert.ok(events.some((e) => e.seq === ev.seq && e.kind === 'chapter' && e.data.description === 'Adds an item and pays'));
  const bad = await client.callTool({ name: 'chapter', arguments: { description: 'no title' } });
  assert.ok(bad.isError);
  assert.match(textOf(bad), /title: required/);
}));

test('exec runs a shell command', withLog(async () => {
  const res = await client.callTool({ name: 'exec', arguments: { command: 'echo mcp-ok' } });
  assert.ok(!res.isError, `exec: ${JSON.stringify(res)}`);
  const text = textOf(res);
  assert.match(text, /mcp-ok/, `exec text: ${text}`);
  const parsed = JSON.parse(text);
  assert.equal(parsed.exit_code, 0, `exec text: ${text}`);
  assert.equal(parsed.stdout, 'mcp-ok\n');
}));

test('a tool error is redacted like every other error (a secret in an exec cwd)', withLog(async () => {
  // The operator token is one of the agent's redacted secrets; MCP errors are 200s with text,
  // which the HTTP error middleware never sees.
  const res = await client.callTool({ name: 'exec', arguments: { command: 'true', cwd: `/nonexistent/${agent.token}` } });
  assert.equal(res.isError, true, JSON.stringify(res));
  const text = textOf(res);
  assert.match(text, /cwd/, text);
  assert.ok(!text.includes(agent.token), `the token is in the tool error: ${text}`);
  assert.match(text, /\[REDACTED:PORTHOLE_OPERATOR_TOKEN\]/, text);
}));

test('computer with an invalid action is a tool error naming the field', withLog(async () => {
  const res = await client.callTool({ name: 'computer', arguments: { action: 'fly_to_the_moon' } });
  assert.equal(res.isError, true, `invalid action result: ${JSON.stringify(res)}`);
  const text = textOf(res);
  assert.match(text, /\baction\b/, `error text should name the field: ${text}`);
  assert.match(text, /fly_to_the_moon/, `error text: ${text}`);
}));

test('connecting without (or with a wrong) token fails with 401', withLog(async () => {
  // Raw request first: the exact status, independent of the SDK.
  const raw = await fetch(`${agent.url}/mcp`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json, text/event-stream' },
    body: JSON.stringify({
      jsonrpc: '2.0', id: 1, method: 'initialize',
      params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '0' } },
    }),
  });
  await raw.body?.cancel();
  assert.equal(raw.status, 401, 'POST /mcp without a token');

  for (const headers of [undefined, { Authorization: 'Bearer not-the-token' }]) {
    const { c, transport } = newClient(headers);
    extraClients.push(c);
    await assert.rejects(c.connect(transport), (e) => {
      assert.ok(e instanceof StreamableHTTPError, `expected StreamableHTTPError, got ${e?.constructor?.name}: ${e?.message}`);
      assert.equal(e.code, 401, `error: ${e.message}`);
      return true;
    }, `connect with headers ${JSON.stringify(headers)}`);
  }
}));

test('MCP actions appear on the timeline as agent action events', withLog(async () => {
  const res = await fetch(`${agent.url}/v1/events?after=0`, { headers: agent.auth() });
  const body = await res.text();
  assert.equal(res.status, 200, `GET /v1/events?after=0 -> ${res.status}: ${body}`);
  const { events } = JSON.parse(body);
  const actions = events.filter((e) => e.kind === 'action');
  for (const e of actions) assert.equal(e.actor, 'agent', `action event actor: ${JSON.stringify(e)}`);
  const find = (pred, what) => {
    const e = actions.find(pred);
    assert.ok(e, `no action event for ${what} in ${JSON.stringify(actions)}`);
    return e;
  };
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  find((e) => e.data?.action === 'mouse_move' && same(e.data.coordinate, [200, 150]), 'mouse_move [200,150]');
  find((e) => e.data?.action === 'left_click' && same(e.data.coordinate, [300, 200]), 'left_click [300,200]');
  find((e) => e.data?.action === 'screenshot', 'screenshot');
  const exec = events.find((e) => e.kind === 'exec' && e.data?.command === 'echo mcp-ok');
  assert.ok(exec, `no exec event in ${JSON.stringify(events)}`);
  assert.equal(exec.actor, 'agent');
  assert.equal(exec.data.exit_code, 0);
}));
