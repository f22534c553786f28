// guest-agent/openapi.yaml checked against real traffic: the real porthole-agent on an Xvfb
// display answers one table of requests (success and error cases of every endpoint), and every
// response must be documented for its operation (status, content type, required headers) and
// match the operation's schema (ajv, JSON Schema 2020-12, $refs resolved from the spec).
//
// The reverse holds too: every operation in the spec is exercised, and each one the agent
// implements answers something other than 404/405. Operations of contracts.md that the agent
// does not serve yet (404 from its fallback) are listed in a diagnostic, not failed; once they
// are served they are validated like the rest. Rows marked `todo` are known discrepancies
// between the agent and the contract: reported as TODO with the exact exchange, not failed.

import { describe, it, before, after } from 'node:test';
import { execFileSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { load as loadYaml } from 'js-yaml';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import {
  requireAgentBin, startXvfb, startAgent, launchChromium, withAgentLog, tmpDir, sleep,
  spawnGroup, killGroup, waitForWindow,
} from './harness.mjs';

const SPEC_FILE = fileURLToPath(new URL('../../guest-agent/openapi.yaml', import.meta.url));
const ENV_SCHEMA_FILE = fileURLToPath(
  new URL('../../crates/envfile/schema/porthole-environment.schema.json', import.meta.url));
const spec = loadYaml(readFileSync(SPEC_FILE, 'utf8'));

const WIDTH = 1280;
const HEIGHT = 800;
const MIB = 1 << 20;
const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
const REC_ID = 's0000openapi0e2e'; // a recording left by an earlier run, seeded on disk
const REC_VIDEO_BYTES = 4096;

// ---------------------------------------------------------------------------------------------
// The spec: $refs resolved, operations indexed, ajv validators

/** The node a local `$ref` ('#/a/b') points at. */
function pointer(ref) {
  assert.ok(ref.startsWith('#/'), `only local $refs are supported: ${ref}`);
  return ref.slice(2).split('/').reduce((node, raw) => {
    const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    assert.ok(node && key in node, `unresolvable $ref ${ref}`);
    return node[key];
  }, spec);
}

/** A deep copy of `node` with every local $ref replaced by its target (siblings kept). */
function deref(node, seen = []) {
  if (Array.isArray(node)) return node.map((n) => deref(n, seen));
  if (!node || typeof node !== 'object') return node;
  if (typeof node.$ref === 'string') {
    assert.ok(!seen.includes(node.$ref), `cyclic $ref ${[...seen, node.$ref].join(' -> ')}`);
    const { $ref, ...siblings } = node;
    return { ...deref(pointer($ref), [...seen, $ref]), ...deref(siblings, seen) };
  }
  return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, deref(v, seen)]));
}

/** Every operation: { key: 'GET /v1/events', method, template, op (dereferenced), regex }. */
const OPERATIONS = Object.entries(spec.paths).flatMap(([template, item]) => METHODS
  .filter((m) => item[m])
  .map((m) => ({
    key: `${m.toUpperCase()} ${template}`,
    method: m.toUpperCase(),
    template,
    op: deref(item[m]),
    literal: !template.includes('{'),
    regex: new RegExp(`^${template.replace(/\{[^}]+\}/g, '[^/]+')}$`),
  })));

/** The operation serving `method` `pathname`: literal paths win over templated ones. */
function findOperation(method, pathname) {
  const hits = OPERATIONS.filter((o) => o.method === method && o.regex.test(pathname));
  return hits.find((o) => o.literal) || hits[0];
}

// strictRequired off: `if/then: {required: [...]}` names properties declared beside it.
const ajv = new Ajv2020({ strict: true, strictRequired: false, allowUnionTypes: true, allErrors: true });
addFormats(ajv);
for (const f of ['int32', 'int64', 'binary', 'byte']) ajv.addFormat(f, true);
const validators = new Map();
function validatorFor(key, schema) {
  if (!validators.has(key)) validators.set(key, ajv.compile(schema));
  return validators.get(key);
}
function schemaProblems(key, schema, value) {
  const validate = validatorFor(key, schema);
  if (validate(value)) return [];
  return validate.errors.map((e) => `${key}: ${e.instancePath || '(root)'} ${e.message}` +
    (e.params && Object.keys(e.params).length ? ` ${JSON.stringify(e.params)}` : ''));
}

const isSecured = (o) => !(Array.isArray(o.op.security) && o.op.security.length === 0);
const baseType = (ct) => (ct || '').split(';')[0].trim().toLowerCase();

// ---------------------------------------------------------------------------------------------
// Bodies

function pngSize(buf) {
  assert.equal(buf.subarray(0, 8).toString('hex'), '89504e470d0a1a0a', 'not a PNG');
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
}

const MAGIC = {
  'image/png': (b) => b.subarray(0, 8).toString('hex') === '89504e470d0a1a0a',
  'image/jpeg': (b) => b.subarray(0, 3).toString('hex') === 'ffd8ff',
  'image/webp': (b) => b.subarray(0, 4).toString() === 'RIFF' && b.subarray(8, 12).toString() === 'WEBP',
  'application/sdp': (b) => b.toString('utf8').startsWith('v=0'),
  'text/html': (b) => /<html/i.test(b.toString('utf8')),
};

/** SSE messages ({event, id, data}) in `text`, comments skipped. */
function parseSse(text) {
  return text.split(/\r?\n\r?\n/).map((block) => {
    const m = { data: [] };
    for (const line of block.split(/\r?\n/)) {
      if (!line || line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (field === 'data') m.data.push(value);
      else m[field] = value;
    }
    return { ...m, data: m.data.join('\n') };
  }).filter((m) => m.data);
}

/** Reads an SSE response until `count` messages arrived (or `ms` passed), then closes it. */
async function readSse(res, count = 1, ms = 10000) {
  const reader = res.body.getReader();
  const deadline = Date.now() + ms;
  let text = '';
  try {
    while (parseSse(text).length < count && Date.now() < deadline) {
      const chunk = await Promise.race([
        reader.read(),
        new Promise((r) => setTimeout(() => r({ timeout: true }), Math.max(1, deadline - Date.now()))),
      ]);
      if (chunk.timeout || chunk.done) break;
      text += Buffer.from(chunk.value).toString('utf8');
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
  return text;
}

// ---------------------------------------------------------------------------------------------
// The table. Each row: one request and what it must get. Fields (any may be a function of ctx):
//   name, method, path (with query), body (string or object → JSON), headers, auth
//   (true | false | 'wrong' | a raw Authorization value), expect (status), stream (read an
//   SSE body: number of messages), todo (a known discrepancy: the row states the contract,
//   the agent differs),
//   verify(res, ctx) for row-specific facts, save(res, ctx) to pass values to later rows,
//   until(res) to repeat the request (30 s at most) until it holds.

const json = (body) => ({ body, headers: { 'content-type': 'application/json' } });
const action = (body, expect = 200, extra = {}) => ({
  name: `computer ${JSON.stringify(body).slice(0, 90)} → ${expect}`,
  method: 'POST', path: '/v1/computer', ...json(body), expect, ...extra,
});
const padTo = (text, size) => text + ' '.repeat(size - Buffer.byteLength(text));

// Operations of contracts.md that the agent may not serve yet: while it answers them from its
// fallback (404) they are listed, not failed.
const PENDING = new Set([
  'GET /v1/environment', 'POST /v1/environment', 'POST /v1/environment/terminals/{name}/restart',
  'GET /v1/recordings', 'GET /v1/recordings/{id}/video', 'GET /v1/recordings/{id}/events',
  'GET /v1/recordings/{id}/thumbs/{name}', 'POST /mcp', 'GET /mcp', 'DELETE /mcp',
]);

const MCP_INIT = {
  jsonrpc: '2.0', id: 1, method: 'initialize',
  params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'openapi-e2e', version: '0' } },
};
const mcpHeaders = (ctx) => ({
  'content-type': 'application/json', accept: 'application/json, text/event-stream',
  ...(ctx.mcpSession ? { 'mcp-session-id': ctx.mcpSession } : {}),
});
/** The JSON-RPC message of an MCP answer, sent as JSON or as the first SSE message. */
const mcpMessage = (r) => r.json ?? JSON.parse(r.sse[0].data);

const SAMPLE_PARAMS = { id: 'openapi-e2e-missing', name: 'missing.jpg' };
const fillTemplate = (t) => t.replace(/\{([^}]+)\}/g, (_, p) => SAMPLE_PARAMS[p] || 'x');

const ROWS = [
  // Auth, generated from the spec: every secured operation refuses a missing or wrong token.
  ...OPERATIONS.filter(isSecured).flatMap((o) => [false, 'wrong'].map((auth) => ({
    name: `${o.key} ${auth ? 'with a wrong token' : 'without a token'} → 401`,
    method: o.method, path: fillTemplate(o.template), auth, expect: 401, authRow: true,
  }))),
  { name: 'authorization scheme is case-insensitive (RFC 7235 §2.1): `bearer <token>` → 200',
    method: 'GET', path: '/v1/control', auth: (ctx) => `bearer ${ctx.token}`, expect: 200 },

  // Status and the viewer page: no token needed.
  { method: 'GET', path: '/v1/health', auth: false, expect: 200,
    verify: (r) => assert.equal(r.json.status, r.json.problems.length ? 'degraded' : 'ok') },
  { method: 'GET', path: '/v1/health', expect: 200,
    verify: (r) => assert.deepEqual([r.json.display.width, r.json.display.height], [WIDTH, HEIGHT]) },
  { method: 'GET', path: '/viewer', auth: false, expect: 200 },

  // Unknown paths and methods.
  { method: 'GET', path: '/v1/nope', expect: 404, verify: (r) => assert.equal(r.json.error.code, 'not_found') },
  { method: 'GET', path: '/nope', auth: false, expect: 404 },
  { method: 'PUT', path: '/v1/control', expect: 405, verify: (r) => assert.equal(r.json.error.code, 'method_not_allowed') },
  { method: 'POST', path: '/v1/health', auth: false, expect: 405 },

  // Sessions.
  { method: 'GET', path: '/v1/sessions/current', expect: 200 },
  { method: 'POST', path: '/v1/sessions', expect: 201,
    verify: (r, ctx) => assert.notEqual(r.json.id, ctx.firstSession, 'a new session has a new id'),
    save: (r, ctx) => { ctx.session = r.json.id; } },
  { method: 'GET', path: '/v1/sessions/current', expect: 200,
    verify: (r, ctx) => assert.equal(r.json.id, ctx.session) },

  // Control, and computer actions refused while the agent may not act.
  // Xvfb here: the screen is fixed, and the agent says so (tests/e2e/display.test.mjs resizes on Xvnc).
  { method: 'GET', path: '/v1/display', expect: 200, verify: (r) => assert.equal(r.json.resizable, false) },
  { method: 'POST', path: '/v1/display', ...json({ width: 1024, height: 768 }), expect: 409,
    verify: (r) => assert.equal(r.json.error.code, 'display_fixed') },
  { method: 'POST', path: '/v1/display', ...json({ width: 10, height: 768 }), expect: 400 },
  { method: 'POST', path: '/v1/display', ...json({ width: WIDTH, height: HEIGHT }), expect: 200,
    verify: (r) => assert.deepEqual([r.json.width, r.json.height], [WIDTH, HEIGHT]) }, // no change: fine even on Xvfb
  { method: 'GET', path: '/v1/control', expect: 200, verify: (r) => assert.equal(r.json.holder, 'agent') },
  { method: 'POST', path: '/v1/control', ...json({ action: 'take' }), expect: 200,
    verify: (r) => assert.equal(r.json.holder, 'human') },
  action({ action: 'screenshot' }, 409),
  { method: 'POST', path: '/v1/control', ...json({ action: 'release' }), expect: 200,
    verify: (r) => assert.equal(r.json.holder, 'agent') },
  { method: 'POST', path: '/v1/control', ...json({ action: 'pause_agent' }), expect: 200,
    verify: (r) => assert.deepEqual([r.json.holder, r.json.agent_paused], ['nobody', true]) },
  action({ action: 'cursor_position' }, 409),
  { method: 'POST', path: '/v1/control', ...json({ action: 'resume_agent' }), expect: 200,
    verify: (r) => assert.deepEqual([r.json.holder, r.json.agent_paused], ['agent', false]) },
  { method: 'POST', path: '/v1/control', ...json({ action: 'fly' }), expect: 400 },
  { method: 'POST', path: '/v1/control', ...json({}), expect: 400 },
  { method: 'POST', path: '/v1/control', ...json('{"action":'), expect: 400 },
  { method: 'POST', path: '/v1/control', ...json('x'.repeat(MIB + 1)), expect: 413 },

  // Computer use: every action of computer_20250124, and zoom.
  action({ action: 'screenshot' }, 200, {
    verify: (r) => assert.deepEqual(pngSize(Buffer.from(r.json.base64_image, 'base64')), { width: WIDTH, height: HEIGHT }) }),
  action({ action: 'mouse_move', coordinate: [100, 120] }),
  action({ action: 'cursor_position' }, 200, { verify: (r) => assert.equal(r.json.output, 'X=100,Y=120') }),
  action({ action: 'left_click', coordinate: [10, 10] }),
  action({ action: 'left_click', coordinate: [10, 10], key: 'shift' }),
  action({ action: 'right_click', coordinate: [20, 20] }),
  action({ action: 'middle_click' }),
  action({ action: 'double_click', coordinate: [30, 30] }),
  action({ action: 'triple_click', coordinate: [30, 30] }),
  action({ action: 'left_click_drag', start_coordinate: [10, 10], coordinate: [50, 60] }),
  action({ action: 'cursor_position' }, 200, { verify: (r) => assert.equal(r.json.output, 'X=50,Y=60') }),
  action({ action: 'left_mouse_down' }),
  action({ action: 'left_mouse_up' }),
  action({ action: 'key', text: 'shift' }),
  action({ action: 'key', text: 'ctrl+shift' }),
  action({ action: 'type', text: 'porthole' }),
  action({ action: 'hold_key', text: 'shift', duration: 0.1 }),
  action({ action: 'scroll', coordinate: [640, 400], scroll_direction: 'down', scroll_amount: 1 }),
  action({ action: 'scroll', scroll_direction: 'up', scroll_amount: 1, text: 'shift' }),
  action({ action: 'wait', duration: 0.05 }, 200, { verify: (r) => assert.ok(r.json.base64_image) }),
  action({ action: 'zoom', region: [0, 0, 640, 400] }, 200, {
    verify: (r) => assert.deepEqual(pngSize(Buffer.from(r.json.base64_image, 'base64')), { width: WIDTH, height: HEIGHT }) }),
  { ...action({ action: 'screenshot' }), name: 'computer screenshot ?format=jpeg → 200',
    path: '/v1/computer?format=jpeg',
    verify: (r) => assert.ok(MAGIC['image/jpeg'](Buffer.from(r.json.base64_image, 'base64')), 'not a JPEG') },
  ...['scale=0.5', 'format=jpeg&quality=50', 'settle=0'].map((q) => ({
    ...action({ action: 'screenshot' }), name: `computer screenshot ?${q} → 200`, path: `/v1/computer?${q}` })),
  action({ action: 'fly' }, 400, { verify: (r) => assert.equal(r.json.error.code, 'invalid_action') }),
  action({ coordinate: [1, 1] }, 400),
  action({ action: 'mouse_move', coordinate: [WIDTH, 5] }, 400),
  action({ action: 'left_click', coordinate: [-1, 5] }, 400),
  action({ action: 'mouse_move', coordinate: [1.5, 5] }, 400),
  action({ action: 'mouse_move' }, 400),
  action({ action: 'left_click_drag', coordinate: [5, 5] }, 400),
  action({ action: 'type' }, 400),
  action({ action: 'type', text: 5 }, 400),
  action({ action: 'key', text: 'ctrl+bogus' }, 400),
  action({ action: 'left_click', key: 'bogus' }, 400),
  action({ action: 'scroll', scroll_direction: 'down', text: 'bogus' }, 400),
  action({ action: 'scroll', scroll_direction: 'sideways' }, 400),
  action({ action: 'scroll', scroll_direction: 'down', scroll_amount: 1000 }, 400),
  action({ action: 'wait' }, 400),
  action({ action: 'wait', duration: -1 }, 400),
  action({ action: 'hold_key', text: 'shift', duration: 101 }, 400),
  action({ action: 'zoom' }, 400),
  action({ action: 'zoom', region: [10, 10, 5, 20] }, 400),
  action({ action: 'zoom', region: [0, 0, WIDTH + 1, 20] }, 400),
  action([1], 400),
  { method: 'POST', path: '/v1/computer', ...json('{"action":"screenshot"'), expect: 400 },
  // The vendors' shapes and chapters (guest-agent/src/vendors.rs).
  { method: 'POST', path: '/v1/anthropic/tool_use', ...json({ type: 'tool_use', id: 'toolu_1', name: 'cursor_position', input: {} }), expect: 200 },
  { method: 'POST', path: '/v1/anthropic/tool_use', ...json([{ name: 'cursor_position' }, { name: 'computer', input: { action: 'mouse_move', coordinate: [WIDTH, 0] } }]), expect: 200 },
  { method: 'POST', path: '/v1/anthropic/tool_use', ...json({ name: 'bash', input: {} }), expect: 400 },
  { method: 'POST', path: '/v1/openai/computer_call', ...json({ type: 'computer_call', call_id: 'call_1', action: { type: 'move', x: 20, y: 20 }, pending_safety_checks: [] }), expect: 200 },
  { method: 'POST', path: '/v1/openai/computer_call', ...json({ type: 'computer_call', call_id: 'call_1', action: { type: 'click', x: 20 } }), expect: 400 },
  { method: 'POST', path: '/v1/chapters', ...json({ title: 'openapi e2e', description: 'a chapter' }), expect: 201 },
  { method: 'POST', path: '/v1/chapters', ...json({}), expect: 400 },
  { method: 'POST', path: '/v1/computer?format=gif', ...json({ action: 'screenshot' }), expect: 400 },
  { method: 'POST', path: '/v1/computer', ...json('x'.repeat(MIB + 1)), expect: 413 },
  { name: 'POST /v1/computer with a body of exactly 1 MiB → 200', method: 'POST', path: '/v1/computer',
    ...json(padTo('{"action":"cursor_position"}', MIB)), expect: 200 },

  // Screenshots.
  { method: 'GET', path: '/v1/screenshot', expect: 200,
    verify: (r) => assert.deepEqual(pngSize(r.buf), { width: WIDTH, height: HEIGHT }) },
  { method: 'GET', path: '/v1/screenshot?format=jpeg&quality=50', expect: 200 },
  { method: 'GET', path: '/v1/screenshot?format=webp', expect: 200 },
  { method: 'GET', path: '/v1/screenshot?scale=0.5&settle=0', expect: 200,
    verify: (r) => assert.deepEqual(pngSize(r.buf), { width: WIDTH / 2, height: HEIGHT / 2 }) },
  { method: 'GET', path: '/v1/screenshot?format=gif', expect: 400 },
  { method: 'GET', path: '/v1/screenshot?scale=2', expect: 400 },
  { method: 'GET', path: '/v1/screenshot?scale=0.05', expect: 400 },
  { method: 'GET', path: '/v1/screenshot?quality=abc', expect: 400 },

  // Exec.
  { method: 'POST', path: '/v1/exec', ...json({ command: 'echo hi; echo err >&2; exit 3' }), expect: 200,
    verify: (r) => assert.deepEqual([r.json.exit_code, r.json.stdout, r.json.stderr, r.json.timed_out], [3, 'hi\n', 'err\n', false]) },
  { method: 'POST', path: '/v1/exec', ...json({ command: 'echo "$FOO"; pwd', cwd: '/tmp', env: { FOO: 'bar' }, timeout_ms: 10000 }),
    expect: 200, verify: (r) => assert.equal(r.json.stdout, 'bar\n/tmp\n') },
  { method: 'POST', path: '/v1/exec', ...json({ command: 'sleep 5', timeout_ms: 200 }), expect: 200,
    verify: (r) => assert.deepEqual([r.json.exit_code, r.json.timed_out], [null, true]) },
  { method: 'POST', path: '/v1/exec', ...json({ command: "head -c 1100000 /dev/zero | tr '\\0' x" }), expect: 200,
    verify: (r) => assert.deepEqual([r.json.stdout.length, r.json.truncated, r.json.exit_code], [MIB, true, 0]) },
  { name: 'POST /v1/exec with a body of exactly 1 MiB → 200', method: 'POST', path: '/v1/exec',
    ...json(padTo('{"command":"true"}', MIB)), expect: 200 },
  { method: 'POST', path: '/v1/exec', ...json({}), expect: 400 },
  { method: 'POST', path: '/v1/exec', ...json({ command: '  ' }), expect: 400 },
  { method: 'POST', path: '/v1/exec', ...json({ command: 'true', shell: 'bash' }), expect: 400 },
  { method: 'POST', path: '/v1/exec', ...json({ command: 'true', timeout_ms: 0 }), expect: 400 },
  { method: 'POST', path: '/v1/exec', ...json({ command: 'true', cwd: '/nonexistent/openapi-e2e' }), expect: 400 },
  { method: 'POST', path: '/v1/exec', ...json({ command: 42 }), expect: 400 },
  { method: 'POST', path: '/v1/exec', ...json('{"command":'), expect: 400 },
  { method: 'POST', path: '/v1/exec', ...json('x'.repeat(MIB + 1)), expect: 413 },

  // Events.
  { method: 'GET', path: '/v1/events?after=0', expect: 200, verify: (r) => {
    const ev = r.json.events;
    assert.ok(ev.length >= 3, 'the actions above were recorded');
    ev.forEach((e, i) => assert.equal(e.seq, i + 1, 'seq starts at 1 and has no gaps'));
    for (let i = 1; i < ev.length; i++) assert.ok(ev[i].t_ms >= ev[i - 1].t_ms, 't_ms never decreases');
    assert.equal(r.json.next, ev.at(-1).seq);
    assert.ok(ev.some((e) => e.kind === 'action' && e.actor === 'agent'), 'an action event');
    assert.ok(ev.some((e) => e.kind === 'refused'), 'a refused event');
  } },
  { method: 'GET', path: '/v1/events?after=2&limit=1', expect: 200,
    verify: (r) => assert.deepEqual([r.json.events.map((e) => e.seq), r.json.next], [[3], 3]) },
  { method: 'GET', path: '/v1/events?after=abc', expect: 400 },
  { method: 'GET', path: '/v1/events?limit=-1', expect: 400 },
  { method: 'GET', path: '/v1/events/stream?after=0', expect: 200, stream: 2,
    verify: (r) => assert.deepEqual(r.sse.slice(0, 2).map((m) => Number(m.id)), [1, 2]) },
  { method: 'GET', path: '/v1/events/stream?after=x', expect: 400 },

  // WHEP.
  { name: 'POST /v1/whep with a Chromium offer → 201', method: 'POST', path: '/v1/whep',
    body: (ctx) => ctx.offer, headers: { 'content-type': 'application/sdp' }, expect: 201,
    save: (r, ctx) => { ctx.whep = r.headers.get('location'); } },
  { name: 'DELETE the new viewer → 200', method: 'DELETE', path: (ctx) => ctx.whep, expect: 200 },
  { name: 'DELETE the same viewer again → 404', method: 'DELETE', path: (ctx) => ctx.whep, expect: 404 },
  { method: 'POST', path: '/v1/whep', body: 'hello', headers: { 'content-type': 'application/sdp' }, expect: 400,
    verify: (r) => assert.equal(r.json.error.code, 'bad_sdp') },
  { method: 'POST', path: '/v1/whep', body: 'v=0\r\n', headers: { 'content-type': 'application/sdp' }, expect: 400 },
  { name: 'POST /v1/whep with an audio-only offer → 400', method: 'POST', path: '/v1/whep',
    body: 'v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n',
    headers: { 'content-type': 'application/sdp' }, expect: 400 },
  { name: 'POST /v1/whep with an AV1-only offer → 400', method: 'POST', path: '/v1/whep',
    body: 'v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 45\r\na=rtpmap:45 AV1/90000\r\n',
    headers: { 'content-type': 'application/sdp' }, expect: 400 },
  { name: 'POST /v1/whep with a broken SDP → 400', method: 'POST', path: '/v1/whep',
    body: 'v=0\r\nm=video\r\na=rtpmap:96 VP8/90000\r\n', headers: { 'content-type': 'application/sdp' }, expect: 400 },
  { method: 'POST', path: '/v1/whep', body: 'v=0', headers: { 'content-type': 'text/plain' }, expect: 415 },
  { method: 'POST', path: '/v1/whep', body: 'v'.repeat(MIB + 1), headers: { 'content-type': 'application/sdp' }, expect: 413 },
  { method: 'PATCH', path: '/v1/whep/openapi-e2e', body: 'a=end-of-candidates',
    headers: { 'content-type': 'application/trickle-ice-sdpfrag' }, expect: 405 },

  // Environment. The agent's tmux server is private to this test (TMUX_TMPDIR).
  { name: 'GET /v1/environment before any was applied → 200 (state none)', method: 'GET', path: '/v1/environment',
    expect: 200 },
  { name: 'POST /v1/environment (install, env, secrets, a terminal) → 202', method: 'POST', path: '/v1/environment',
    ...json((ctx) => ({
      environment: { name: 'openapi-e2e', install: 'true', env: { A: '1' }, secrets: ['OPENAPI_E2E_SECRET'],
        terminals: [{ name: 't1', command: 'sleep 600' }] },
      secrets: { OPENAPI_E2E_SECRET: 'openapi-e2e-not-a-real-secret' }, workspace: ctx.workspace })),
    expect: 202 },
  { name: 'GET /v1/environment until ready → 200', method: 'GET', path: '/v1/environment', expect: 200,
    until: (r) => r.json?.state !== 'running',
    verify: (r) => {
      assert.deepEqual([r.json.name, r.json.state], ['openapi-e2e', 'ready'], JSON.stringify(r.json));
      assert.ok(r.json.terminals.some((t) => t.name === 't1' && t.running), 'terminal t1 runs');
    } },
  { method: 'POST', path: '/v1/environment/terminals/t1/restart', expect: 200 },
  { method: 'POST', path: '/v1/environment/terminals/openapi-e2e-none/restart', expect: 404 },
  { method: 'POST', path: '/v1/environment', ...json({}), expect: 400 },
  { method: 'POST', path: '/v1/environment', ...json({ environment: {}, extra: 1 }), expect: 400 },
  { method: 'POST', path: '/v1/environment', ...json({ environment: { terminals: [{ command: 5 }] } }), expect: 400,
    verify: (r) => assert.equal(r.json.error.code, 'invalid_environment') },
  { method: 'POST', path: '/v1/environment', ...json({ environment: { secrets: ['OPENAPI_E2E_MISSING'] } }), expect: 400 },
  { method: 'POST', path: '/v1/environment', ...json({ environment: {}, secrets: { A: 1 } }), expect: 400 },
  { method: 'POST', path: '/v1/environment', ...json({ environment: {}, workspace: '/nonexistent/openapi-e2e' }), expect: 400 },
  { method: 'POST', path: '/v1/environment', ...json('{"environment":'), expect: 400 },
  { method: 'POST', path: '/v1/environment', ...json('x'.repeat(MIB + 1)), expect: 413 },

  // Recordings (one seeded on disk, as an earlier run of the agent leaves it).
  { method: 'GET', path: '/v1/recordings', expect: 200,
    verify: (r) => assert.ok(r.json.recordings.some((x) => x.id === REC_ID && x.parts === 1), `lists ${REC_ID}`) },
  { method: 'GET', path: `/v1/recordings/${REC_ID}/video`, expect: 200,
    verify: (r) => assert.equal(r.buf.length, REC_VIDEO_BYTES) },
  { method: 'GET', path: `/v1/recordings/${REC_ID}/video?part=1`, headers: { range: 'bytes=0-99' }, expect: 206,
    verify: (r) => assert.deepEqual([r.buf.length, r.headers.get('content-range')], [100, `bytes 0-99/${REC_VIDEO_BYTES}`]) },
  { method: 'GET', path: `/v1/recordings/${REC_ID}/video`, headers: { range: 'bytes=-10' }, expect: 206,
    verify: (r) => assert.equal(r.buf.length, 10) },
  { method: 'GET', path: `/v1/recordings/${REC_ID}/video`, headers: { range: `bytes=${REC_VIDEO_BYTES}-` }, expect: 416 },
  { method: 'GET', path: `/v1/recordings/${REC_ID}/video?part=2`, expect: 404 },
  { method: 'GET', path: `/v1/recordings/${REC_ID}/video?part=abc`, expect: 400 },
  { method: 'GET', path: '/v1/recordings/openapi-e2e-missing/video', expect: 404 },
  { method: 'GET', path: `/v1/recordings/${REC_ID}/events`, expect: 200,
    verify: (r) => assert.deepEqual(r.json.events.map((e) => e.seq), [1, 2, 3]) },
  { method: 'GET', path: `/v1/recordings/${REC_ID}/events?after=1&limit=1`, expect: 200,
    verify: (r) => assert.deepEqual([r.json.events.map((e) => e.seq), r.json.next], [[2], 2]) },
  { method: 'GET', path: `/v1/recordings/${REC_ID}/events?after=x`, expect: 400 },
  { method: 'GET', path: '/v1/recordings/openapi-e2e-missing/events', expect: 404 },
  { method: 'GET', path: `/v1/recordings/${REC_ID}/thumbs/t1.jpg`, expect: 200 },
  { method: 'GET', path: `/v1/recordings/${REC_ID}/thumbs/missing.jpg`, expect: 404 },

  // MCP (streamable HTTP).
  { name: 'POST /mcp initialize → 200', method: 'POST', path: '/mcp', stream: 1,
    headers: mcpHeaders, body: MCP_INIT, expect: 200,
    save: (r, ctx) => { ctx.mcpSession = r.headers.get('mcp-session-id'); } },
  { name: 'POST /mcp notifications/initialized → 202', method: 'POST', path: '/mcp',
    headers: mcpHeaders, body: { jsonrpc: '2.0', method: 'notifications/initialized' }, expect: 202 },
  { name: 'POST /mcp tools/list → 200 with the computer and an exec tool', method: 'POST', path: '/mcp', stream: 1,
    headers: mcpHeaders, body: { jsonrpc: '2.0', id: 2, method: 'tools/list' }, expect: 200,
    verify: (r) => {
      const names = mcpMessage(r).result.tools.map((t) => t.name);
      assert.ok(names.includes('computer') && names.some((n) => /exec/.test(n)), `tools: ${names}`);
    } },
  { name: 'POST /mcp tools/call computer cursor_position → 200', method: 'POST', path: '/mcp', stream: 1,
    headers: mcpHeaders, expect: 200,
    body: { jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'computer', arguments: { action: 'cursor_position' } } },
    verify: (r) => assert.match(mcpMessage(r).result.content[0].text, /^X=\d+,Y=\d+$/) },
  { name: 'POST /mcp without Mcp-Session-Id → 400', method: 'POST', path: '/mcp',
    headers: (ctx) => mcpHeaders({}), body: { jsonrpc: '2.0', id: 4, method: 'tools/list' }, expect: 400 },
  { name: 'POST /mcp with an unknown Mcp-Session-Id → 404', method: 'POST', path: '/mcp',
    headers: () => mcpHeaders({ mcpSession: 'openapi-e2e-unknown' }), body: { jsonrpc: '2.0', id: 5, method: 'tools/list' }, expect: 404 },
  { name: 'POST /mcp accepting only application/json → 406 not_acceptable', method: 'POST', path: '/mcp',
    headers: (ctx) => ({ ...mcpHeaders(ctx), accept: 'application/json' }), body: { jsonrpc: '2.0', id: 6, method: 'tools/list' },
    expect: 406, verify: (r) => assert.equal(r.json.error.code, 'not_acceptable') },
  { name: 'POST /mcp as text/plain → 415', method: 'POST', path: '/mcp',
    headers: (ctx) => ({ ...mcpHeaders(ctx), 'content-type': 'text/plain' }), body: MCP_INIT, expect: 415 },
  { name: 'POST /mcp with broken JSON → 400', method: 'POST', path: '/mcp',
    headers: mcpHeaders, body: '{"jsonrpc":', expect: 400 },
  { name: 'POST /mcp with a 2 MiB (valid) initialize → 413', method: 'POST', path: '/mcp',
    headers: (ctx) => mcpHeaders({}), expect: 413,
    body: { ...MCP_INIT, params: { ...MCP_INIT.params, clientInfo: { name: 'x'.repeat(2 * MIB), version: '0' } } } },
  { name: 'GET /mcp (session stream) → 200 or 405', method: 'GET', path: '/mcp', stream: 0,
    headers: (ctx) => ({ ...mcpHeaders(ctx), accept: 'text/event-stream' }), expect: [200, 405] },
  { name: 'GET /mcp without Mcp-Session-Id → 400', method: 'GET', path: '/mcp',
    headers: { accept: 'text/event-stream' }, expect: [400, 405] },
  { name: 'DELETE /mcp (end the session) → 202', method: 'DELETE', path: '/mcp',
    headers: mcpHeaders, expect: [202, 405] },
  { name: 'POST /mcp on the ended session → 404', method: 'POST', path: '/mcp',
    headers: mcpHeaders, body: { jsonrpc: '2.0', id: 7, method: 'tools/list' }, expect: 404 },
  { name: 'DELETE /mcp without Mcp-Session-Id → 400', method: 'DELETE', path: '/mcp', expect: [400, 405] },
];


// ---------------------------------------------------------------------------------------------
// Sending and checking

const resolve = (v, ctx) => (typeof v === 'function' ? v(ctx) : v);

async function send(row, ctx) {
  const method = row.method;
  const p = resolve(row.path, ctx);
  let body = resolve(row.body, ctx);
  if (body !== undefined && typeof body !== 'string') body = JSON.stringify(body);
  const headers = { ...(resolve(row.headers, ctx) || {}) };
  const auth = row.auth === undefined ? true : resolve(row.auth, ctx);
  if (auth === true) headers.authorization = `Bearer ${ctx.token}`;
  else if (auth === 'wrong') headers.authorization = `Bearer not-${ctx.token}`;
  else if (typeof auth === 'string') headers.authorization = auth;
  const res = await fetch(`${ctx.url}${p}`, { method, headers, body, signal: AbortSignal.timeout(60000) });
  const out = { status: res.status, headers: res.headers, ct: baseType(res.headers.get('content-type')) };
  if (out.ct === 'text/event-stream') {
    out.sseText = row.stream ? await readSse(res, row.stream) : (await res.body?.cancel(), '');
    out.sse = parseSse(out.sseText);
    out.buf = Buffer.from(out.sseText);
  } else {
    out.buf = Buffer.from(await res.arrayBuffer());
  }
  if (out.ct === 'application/json' && out.buf.length) {
    try { out.json = JSON.parse(out.buf.toString('utf8')); } catch (e) { out.jsonError = e.message; }
  }
  return { req: { method, path: p, body, headers }, res: out };
}

/** Whether the agent routes `pathname` at all: a method no path uses (PUT) gets 405, not 404. */
async function routed(pathname, ctx) {
  const res = await fetch(`${ctx.url}${pathname.split('?')[0]}`, {
    method: 'PUT', headers: { authorization: `Bearer ${ctx.token}` }, signal: AbortSignal.timeout(10000),
  });
  await res.arrayBuffer();
  return res.status !== 404;
}

const describeExchange = ({ req, res }) => {
  const body = req.body === undefined ? '' : ` ${req.body.length > 200 ? `<${req.body.length} bytes>` : req.body}`;
  let got = res.buf.length > 300 || !/json|text\/plain|sdp/.test(res.ct) ? `<${res.buf.length} bytes of ${res.ct || 'no type'}>` : res.buf.toString('utf8');
  if (res.json?.base64_image) got = JSON.stringify({ ...res.json, base64_image: `<${res.json.base64_image.length} chars>` });
  return `${req.method} ${req.path}${body} → ${res.status} ${got}`;
};

/**
 * The one check: the response's status is documented for the operation, its content type is
 * one the operation documents for that status, required headers are there and well-formed, and
 * the body matches the schema. Returns a list of problems (empty when it conforms).
 */
function conformance(o, ex) {
  const { req, res } = ex;
  const problems = [];
  if (!o) {
    // No operation: an unknown path or method. Still one error shape.
    if (![404, 405].includes(res.status)) problems.push(`undocumented ${req.method} ${req.path} answered ${res.status}`);
    problems.push(...schemaProblems('Error', deref({ $ref: '#/components/schemas/Error' }), res.json ?? res.buf.toString()));
    return problems;
  }
  const r = o.op.responses[String(res.status)];
  if (!r) return [`${o.key}: status ${res.status} is not documented (documented: ${Object.keys(o.op.responses).join(', ')})`];
  for (const [name, h] of Object.entries(r.headers || {})) {
    const value = res.headers.get(name);
    if (value === null) {
      if (h.required) problems.push(`${o.key} ${res.status}: required header ${name} is missing`);
    } else if (h.schema) {
      problems.push(...schemaProblems(`${o.key} ${res.status} header ${name}`, h.schema, value));
    }
  }
  if (!r.content) {
    if (res.buf.length) problems.push(`${o.key} ${res.status}: documented without a body but got ${res.buf.length} bytes`);
    return problems;
  }
  const media = r.content[res.ct];
  if (!media) {
    problems.push(`${o.key} ${res.status}: content type '${res.ct}' is not documented (documented: ${Object.keys(r.content).join(', ')})`);
    return problems;
  }
  const key = `${o.key} ${res.status} ${res.ct}`;
  if (res.ct === 'application/json') {
    if (res.jsonError) problems.push(`${key}: body is not JSON: ${res.jsonError}`);
    else problems.push(...schemaProblems(key, media.schema, res.json));
  } else if (res.ct === 'text/event-stream') {
    if (media['x-event-data']) {
      for (const m of res.sse) {
        let data;
        try { data = JSON.parse(m.data); } catch (e) { problems.push(`${key}: data is not JSON: ${m.data}`); continue; }
        problems.push(...schemaProblems(`${key} data`, media['x-event-data'], data));
      }
    }
  } else if (MAGIC[res.ct] && !MAGIC[res.ct](res.buf)) {
    problems.push(`${key}: the body is not ${res.ct}`);
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------

describe('guest-agent/openapi.yaml against a real porthole-agent', { timeout: 10 * 60 * 1000 }, () => {
  let work, xvfb, idle, agent, tmuxDir;
  const ctx = {};
  const results = new Map(); // operation key -> [{ status, row }]
  const unimplemented = new Map(); // operation key -> the exchange that showed it
  const discrepancies = [];
  const implemented = new Map(); // operation key -> boolean (pending operations only)

  before(async () => {
    requireAgentBin();
    work = tmpDir('porthole-e2e-openapi-');
    xvfb = await startXvfb({ width: WIDTH, height: HEIGHT, log: path.join(work, 'xvfb.log') });
    // One idle window, away from where the actions click, so the X server always has a client:
    // with none, Xvfb resets whenever the last client disconnects, and a health check that
    // connects during a reset reports the display unreachable.
    const title = `porthole-e2e-openapi-${process.pid}`;
    idle = spawnGroup('xterm', ['-title', title, '-geometry', '40x5+900+650', '-e', 'sleep', '86400'],
      { env: { DISPLAY: xvfb.display }, log: path.join(work, 'xterm.log') });
    await waitForWindow(xvfb.display, title);
    // Environment terminals live in tmux: give this agent its own tmux server, so applying an
    // environment here never touches the `porthole` session of any other agent on this host.
    tmuxDir = path.join(work, 'tmux');
    mkdirSync(tmuxDir, { mode: 0o700 });
    agent = await startAgent({
      display: xvfb.display, args: ['--display-size', `${WIDTH}x${HEIGHT}`], env: { TMUX_TMPDIR: tmuxDir },
    });
    Object.assign(ctx, { url: agent.url, token: agent.token, workspace: path.join(work, 'workspace') });
    mkdirSync(ctx.workspace);
    ctx.firstSession = (await (await fetch(`${agent.url}/v1/sessions/current`, { headers: agent.auth() })).json()).id;

    // A recording as an earlier run leaves it: meta.json, one video part, events, a thumbnail.
    const rec = path.join(agent.dataDir, 'recordings', REC_ID);
    mkdirSync(path.join(rec, 'thumbs'), { recursive: true });
    const started = Date.now() - 60000;
    writeFileSync(path.join(rec, 'meta.json'), JSON.stringify({
      id: REC_ID, started_at_unix_ms: started, ended_at_unix_ms: started + 5000, duration_ms: 5000,
    }));
    const video = Buffer.alloc(REC_VIDEO_BYTES, 7);
    Buffer.from('000000186674797069736f36000000006973366d', 'hex').copy(video); // an ftyp box
    writeFileSync(path.join(rec, 'video-0001.mp4'), video);
    writeFileSync(path.join(rec, 'events.jsonl'), [1, 2, 3].map((seq) => JSON.stringify({
      seq, t_ms: seq * 100, actor: 'system', kind: 'session', data: { n: seq },
    })).join('\n') + '\n');
    writeFileSync(path.join(rec, 'thumbs', 't1.jpg'), Buffer.from('ffd8ffe000104a46494600', 'hex'));

    // A real WHEP offer: Chromium's, recvonly video plus the `porthole` data channel.
    const browser = await launchChromium();
    try {
      const page = await browser.newPage();
      ctx.offer = await page.evaluate(async () => {
        const pc = new RTCPeerConnection();
        pc.addTransceiver('video', { direction: 'recvonly' });
        pc.createDataChannel('porthole');
        await pc.setLocalDescription(await pc.createOffer());
        await new Promise((done) => {
          const check = () => pc.iceGatheringState === 'complete' && done();
          pc.onicegatheringstatechange = check;
          check();
          setTimeout(done, 3000);
        });
        return pc.localDescription.sdp;
      });
    } finally {
      await browser.close().catch(() => {});
    }
  });

  after(async () => {
    if (agent) await agent.stop();
    if (tmuxDir) {
      try {
        execFileSync('tmux', ['kill-server'], { env: { ...process.env, TMUX_TMPDIR: tmuxDir }, stdio: 'ignore' });
      } catch { /* no server was started */ }
    }
    if (idle) await killGroup(idle);
    if (xvfb) await xvfb.stop();
  });

  it('the spec: local $refs resolve, 401 on every secured operation, one Error shape', () => {
    deref(spec); // throws on a dangling or cyclic $ref
    // A null anywhere is a YAML slip (a comma in a flow mapping, a key without a value).
    const nulls = [];
    (function walk(node, at) {
      if (node === null) nulls.push(at);
      else if (typeof node === 'object') for (const [k, v] of Object.entries(node)) walk(v, `${at}/${k}`);
    })(spec, '#');
    assert.deepEqual(nulls, [], 'no null values in the spec');
    for (const o of OPERATIONS) {
      assert.ok(o.op.operationId, `${o.key} has an operationId`);
      if (isSecured(o)) assert.ok(o.op.responses['401'], `${o.key} documents 401`);
      for (const [status, r] of Object.entries(o.op.responses)) {
        if (Number(status) < 300) continue;
        assert.deepEqual(Object.keys(r.content || {}), ['application/json'], `${o.key} ${status} is JSON`);
        assert.deepEqual(r.content['application/json'].schema, pointer('#/components/schemas/Error'),
          `${o.key} ${status} uses the Error schema`);
      }
      // Every schema compiles under ajv's strict mode.
      for (const [status, r] of Object.entries(o.op.responses)) {
        for (const [ct, m] of Object.entries(r.content || {})) {
          if (m.schema) validatorFor(`${o.key} ${status} ${ct}`, m.schema);
        }
      }
      for (const [ct, m] of Object.entries(o.op.requestBody?.content || {})) {
        if (m.schema) validatorFor(`${o.key} request ${ct}`, m.schema);
      }
    }
    assert.deepEqual(spec.components.securitySchemes.bearerAuth, {
      ...spec.components.securitySchemes.bearerAuth, type: 'http', scheme: 'bearer' });
    for (const key of ['GET /v1/health', 'GET /viewer']) {
      assert.ok(!isSecured(OPERATIONS.find((o) => o.key === key)), `${key} needs no token`);
    }
  });

  it('PortholeEnvironment is crates/envfile/schema/porthole-environment.schema.json', () => {
    const strip = (node) => {
      if (Array.isArray(node)) return node.map(strip);
      if (!node || typeof node !== 'object') return node;
      return Object.fromEntries(Object.entries(node)
        .filter(([k, v]) => !(['description', 'title'].includes(k) && typeof v === 'string') && k !== '$schema')
        .map(([k, v]) => [k, strip(v)]));
    };
    const file = JSON.parse(readFileSync(ENV_SCHEMA_FILE, 'utf8'));
    assert.deepEqual(strip(spec.components.schemas.PortholeEnvironment), strip(file));
  });

  for (const row of ROWS) {
    const name = row.name || `${row.method} ${row.path} → ${row.expect}`;
    it(name, { todo: row.todo }, withAgentLog(() => agent, async () => {
      let ex = await send(row, ctx);
      for (const deadline = Date.now() + 30000; row.until && !row.until(ex.res) && Date.now() < deadline;) {
        await sleep(300);
        ex = await send(row, ctx);
      }
      const o = findOperation(row.method, ex.req.path.split('?')[0]);
      const { res } = ex;

      if (o && PENDING.has(o.key)) {
        if (!implemented.has(o.key)) {
          const missingRoute = res.status === 404 && res.json?.error?.code === 'not_found' && !(await routed(ex.req.path, ctx));
          const missingMethod = res.status === 405 && res.json?.error?.code === 'method_not_allowed' && !o.op.responses['405'];
          implemented.set(o.key, !(missingRoute || missingMethod));
        }
        if (!implemented.get(o.key)) {
          if (!unimplemented.has(o.key)) unimplemented.set(o.key, describeExchange(ex));
          return;
        }
      }
      if (o) {
        if (!results.has(o.key)) results.set(o.key, []);
        results.get(o.key).push({ status: res.status, authRow: !!row.authRow });
      }

      try {
        const expect = [row.expect].flat();
        assert.ok(expect.includes(res.status), `expected ${expect.join(' or ')}`);
        const problems = conformance(o, ex);
        assert.deepEqual(problems, [], 'the response conforms to the spec');
        // What we sent for a success must be valid by the spec's request schema too.
        const media = o?.op.requestBody?.content?.['application/json'];
        if (media?.schema && res.status < 300 && ex.req.body !== undefined) {
          assert.deepEqual(schemaProblems(`${o.key} request`, media.schema, JSON.parse(ex.req.body)), [],
            'the request body is valid by the spec');
        }
        if (row.verify) await row.verify({ ...res }, ctx);
        if (row.save) row.save(res, ctx);
      } catch (e) {
        const msg = `${e.message}\n  exchange: ${describeExchange(ex)}`;
        if (row.todo) discrepancies.push(`${name}\n    ${row.todo}\n    ${describeExchange(ex)}`);
        e.message = msg;
        throw e;
      }
    }));
  }

  it('every operation in the spec was exercised; each one implemented answers (not 404/405)', (t) => {
    const problems = [];
    for (const o of OPERATIONS) {
      if (unimplemented.has(o.key)) continue;
      const seen = (results.get(o.key) || []).filter((r) => !r.authRow);
      if (!seen.length) { problems.push(`${o.key}: no request in the table exercised it`); continue; }
      const documents2xx = Object.keys(o.op.responses).some((s) => s.startsWith('2'));
      if (documents2xx && !seen.some((r) => r.status >= 200 && r.status < 300)) {
        problems.push(`${o.key}: never answered 2xx (got ${[...new Set(seen.map((r) => r.status))].join(', ')})`);
      }
      if (!seen.some((r) => ![404, 405].includes(r.status) || o.op.responses[String(r.status)])) {
        problems.push(`${o.key}: only answered 404/405`);
      }
    }
    // One diagnostic per line: TAP escapes newlines inside one.
    if (unimplemented.size) {
      t.diagnostic(`not implemented yet (the agent answers 404/405 from its fallback): ${unimplemented.size}`);
      for (const [k, ex] of unimplemented) t.diagnostic(`  ${k}   e.g. ${ex}`);
    } else {
      t.diagnostic('not implemented yet: none; the agent serves every operation in the spec');
    }
    if (discrepancies.length) {
      t.diagnostic(`known discrepancies (TODO rows): ${discrepancies.length}`);
      for (const d of discrepancies) d.split('\n').forEach((line) => t.diagnostic(`  ${line}`));
    }
    assert.deepEqual(problems, []);
  });
});
