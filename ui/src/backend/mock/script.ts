// Deterministic, realistic session timelines for the mock backend: environment steps, terminal
// output with ANSI colours, the agent's computer-use actions, a human takeover, a stall.

import type { Actor, Event } from '../types';

/** Where things are on the mock desktop (stream pixels, 1280x800). */
export const LAYOUT = {
  width: 1280,
  height: 800,
  browser: { x: 40, y: 56, w: 760, h: 640 },
  input: { x: 72, y: 196, w: 500, h: 40 },
  addButton: { x: 588, y: 196, w: 96, h: 40 },
  listTop: 260,
  rowH: 40,
  terminal: { x: 830, y: 90, w: 410, h: 520 },
};

const TODOS = [
  'Fix flaky login test',
  'Add pagination to /api/todos',
  'Handle empty titles',
  'Show due dates',
  'Write migration for tags',
  'Debounce search input',
  'Keyboard shortcut to add',
  'Dark mode toggle',
  'Undo delete',
  'Export as CSV',
];

const AGENT_LINES = [
  '\x1b[1;34m›\x1b[0m Reading the task: make the todo list keyboard friendly',
  '\x1b[1;34m›\x1b[0m Opening \x1b[4mhttp://localhost:3000/todos\x1b[0m',
  '\x1b[2m$ rg "onKeyDown" src/\x1b[0m',
  'src/components/TodoInput.tsx:14:  onKeyDown={handleKey}',
  '\x1b[1;34m›\x1b[0m The input ignores Enter when the title has spaces only',
  '\x1b[2m$ npm test -- TodoInput\x1b[0m',
  '\x1b[32m ✓\x1b[0m TodoInput adds on Enter (12 ms)',
  '\x1b[31m ✗\x1b[0m TodoInput trims the title (4 ms)',
  '\x1b[1;34m›\x1b[0m Editing src/components/TodoInput.tsx',
  '\x1b[32m+\x1b[0m  const title = value.trim();',
  '\x1b[32m+\x1b[0m  if (!title) return;',
  '\x1b[1;34m›\x1b[0m Checking in the browser',
  '\x1b[2m$ git commit -am "Trim todo titles before adding"\x1b[0m',
  '[porthole/r-7f3a 1c9e2b4] Trim todo titles before adding',
];

const DEV_LINES = [
  '\x1b[2m[vite]\x1b[0m hmr update \x1b[36m/src/components/TodoInput.tsx\x1b[0m',
  '\x1b[32mGET\x1b[0m /api/todos \x1b[32m200\x1b[0m in 12ms',
  '\x1b[33mPOST\x1b[0m /api/todos \x1b[32m201\x1b[0m in 31ms',
  '\x1b[32mGET\x1b[0m /api/todos?page=2 \x1b[32m200\x1b[0m in 9ms',
  '\x1b[33mPATCH\x1b[0m /api/todos/7 \x1b[32m200\x1b[0m in 17ms',
  '\x1b[32mGET\x1b[0m /favicon.ico \x1b[33m404\x1b[0m in 2ms',
];

function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
}

export interface ScriptOptions {
  seed: number;
  durationMs: number;
  /** A human takes control at this time for ~9 s. */
  takeoverAt?: number;
  /** The agent stops acting and a `stalled` event is raised at this time. */
  stallAt?: number;
  /** Emit a task list (runs). */
  tasks?: boolean;
}

export function sessionScript(o: ScriptOptions): Event[] {
  const r = rng(o.seed);
  const out: Omit<Event, 'seq'>[] = [];
  const at = (t_ms: number, actor: Actor, kind: string, data: unknown) => out.push({ t_ms: Math.round(t_ms), actor, kind, data });
  const term = (t: number, name: string, text: string) => at(t, 'system', 'terminal', { name, text: text + '\r\n' });

  at(0, 'system', 'session', { state: 'started' });
  at(4, 'system', 'recording', { state: 'started' });
  at(40, 'system', 'stream', { state: 'connected', viewers: 1 });
  at(120, 'system', 'step', { step: 'environment', state: 'running' });
  at(200, 'system', 'step', { step: 'install', state: 'running', command: 'npm ci' });
  term(400, 'install', '\x1b[2m$ npm ci\x1b[0m');
  term(2100, 'install', 'added 312 packages, and audited 313 packages in 3s');
  term(2300, 'install', '\x1b[32mfound 0 vulnerabilities\x1b[0m');
  at(2400, 'system', 'step', { step: 'install', state: 'exited', exit_code: 0, duration_ms: 2200 });
  at(2500, 'system', 'step', { step: 'start', state: 'running', command: 'docker compose up -d db' });
  at(2700, 'system', 'step', { step: 'terminal:dev', state: 'running', window: 'porthole:dev' });
  term(2900, 'dev', '\x1b[2m$ npm run dev\x1b[0m');
  term(3600, 'dev', '  \x1b[1;32mVITE\x1b[0m v6.2.0  ready in \x1b[1m412\x1b[0m ms');
  term(3650, 'dev', '  \x1b[32m➜\x1b[0m  \x1b[1mLocal\x1b[0m:   \x1b[36mhttp://localhost:3000/\x1b[0m');
  at(3700, 'system', 'port', { port: 3000, name: 'web', state: 'open' });
  at(3800, 'system', 'step', { step: 'terminal:tests', state: 'running', window: 'porthole:tests' });
  term(4000, 'tests', '\x1b[2m$ npm test -- --watch\x1b[0m');
  term(5200, 'tests', '\x1b[1m RUNS \x1b[0m 14 files');
  term(6100, 'tests', '\x1b[42;30m PASS \x1b[0m 41 tests \x1b[2m(1.9 s)\x1b[0m');
  at(4200, 'system', 'step', { step: 'terminal:agent', state: 'running', window: 'porthole:agent' });
  at(4300, 'system', 'step', { step: 'environment', state: 'ready' });

  if (o.tasks) {
    at(4400, 'agent', 'tasks', {
      items: [
        { text: 'Reproduce: blank titles are accepted', done: false },
        { text: 'Trim titles in TodoInput', done: false },
        { text: 'Add a test', done: false },
        { text: 'Check in the browser', done: false },
      ],
    });
  }

  let t = 5000;
  let agentLine = 0;
  let todo = 0;
  let cycle = 0;
  const stall = o.stallAt ?? Infinity;
  const takeover = o.takeoverAt ?? -1;
  while (t < o.durationMs) {
    if (takeover >= 0 && t >= takeover && t < takeover + 12000) {
      const T = Math.max(t, takeover);
      at(T, 'human', 'control', { action: 'take', by: 'viewer-1', state: { holder: 'human', agent_paused: true, since_t_ms: T } });
      at(T + 900, 'human', 'input', { device: 'pointer', x: 640, y: 300, button: 'left', down: true, viewer: 'viewer-1' });
      at(T + 980, 'human', 'input', { device: 'pointer', x: 640, y: 300, button: 'left', down: false, viewer: 'viewer-1' });
      at(T + 1900, 'agent', 'refused', { action: 'left_click', reason: 'a human holds control' });
      at(T + 2600, 'human', 'input', { device: 'pointer', x: LAYOUT.input.x + 200, y: LAYOUT.input.y + 20, button: 'left', down: true, viewer: 'viewer-1' });
      at(T + 2680, 'human', 'input', { device: 'pointer', x: LAYOUT.input.x + 200, y: LAYOUT.input.y + 20, button: 'left', down: false, viewer: 'viewer-1' });
      at(T + 3400, 'human', 'input', { device: 'text', count: 19, viewer: 'viewer-1' });
      at(T + 4500, 'human', 'input', { device: 'key', key: 'Enter', down: true, modifiers: [], viewer: 'viewer-1' });
      at(T + 4560, 'human', 'input', { device: 'key', key: 'Enter', down: false, modifiers: [], viewer: 'viewer-1' });
      at(T + 9000, 'human', 'control', { action: 'release', by: 'viewer-1', state: { holder: 'agent', agent_paused: false, since_t_ms: T + 9000 } });
      t = T + 10000;
      continue;
    }
    if (t >= stall) {
      // After the agent's last action: the dev server keeps logging, nothing else happens.
      const at0 = Math.max(stall, ...out.map((e) => e.t_ms)) + 1000;
      at(at0, 'system', 'stalled', { idle_ms: 180000, message: 'no agent action or output for 3 min' });
      for (let k = at0 + 4000; k < o.durationMs; k += 9000 + r() * 6000) term(k, 'dev', DEV_LINES[1]);
      break;
    }
    term(t, 'agent', AGENT_LINES[agentLine++ % AGENT_LINES.length]);
    term(t + 300, 'agent', AGENT_LINES[agentLine++ % AGENT_LINES.length]);
    at(t + 600, 'agent', 'action', { action: 'screenshot', duration_ms: 180 });
    const ix = LAYOUT.input.x + 40 + Math.round(r() * 300);
    const iy = LAYOUT.input.y + 20;
    at(t + 1500, 'agent', 'action', { action: 'mouse_move', coordinate: [ix, iy], screen: { x: ix, y: iy }, duration_ms: 2 });
    at(t + 1900, 'agent', 'action', { action: 'left_click', coordinate: [ix, iy], screen: { x: ix, y: iy }, duration_ms: 31 });
    const title = TODOS[todo++ % TODOS.length];
    at(t + 2600, 'agent', 'action', { action: 'type', text: title, duration_ms: 40 * title.length });
    at(t + 2600 + 40 * title.length + 300, 'agent', 'action', { action: 'key', text: 'Return', duration_ms: 12 });
    term(t + 2600 + 40 * title.length + 420, 'dev', DEV_LINES[2]);
    term(t + 2600 + 40 * title.length + 520, 'dev', DEV_LINES[1]);
    if (cycle % 2 === 1) {
      const sy = 420;
      at(t + 5200, 'agent', 'action', { action: 'scroll', coordinate: [400, sy], screen: { x: 400, y: sy }, scroll_direction: 'down', scroll_amount: 3, duration_ms: 20 });
      term(t + 5600, 'dev', DEV_LINES[3]);
    }
    if (cycle % 3 === 2) {
      at(t + 6400, 'agent', 'action', { action: 'key', text: 'ctrl+s', duration_ms: 15 });
      term(t + 6600, 'dev', DEV_LINES[0]);
      term(t + 7400, 'tests', '\x1b[42;30m PASS \x1b[0m 42 tests \x1b[2m(2.1 s)\x1b[0m');
    }
    if (cycle % 4 === 3) {
      const cy = LAYOUT.listTop + 20;
      at(t + 7000, 'agent', 'action', { action: 'left_click', coordinate: [92, cy], screen: { x: 92, y: cy }, duration_ms: 28 });
      term(t + 7200, 'dev', DEV_LINES[4]);
    }
    if (cycle === 5) at(t + 8000, 'system', 'error', { source: 'dev', message: 'dev server: ECONNRESET on /api/todos (retrying)' });
    if (o.tasks && cycle < 4) {
      at(t + 8200, 'agent', 'tasks', {
        items: [
          { text: 'Reproduce: blank titles are accepted', done: cycle >= 0 },
          { text: 'Trim titles in TodoInput', done: cycle >= 1 },
          { text: 'Add a test', done: cycle >= 2 },
          { text: 'Check in the browser', done: cycle >= 3 },
        ],
      });
    }
    t += 9000 + Math.round(r() * 3000);
    cycle++;
  }

  out.sort((a, b) => a.t_ms - b.t_ms);
  return out.filter((e) => e.t_ms <= o.durationMs).map((e, i) => ({ ...e, seq: i + 1 }));
}
