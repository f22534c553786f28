// An in-memory backend with realistic data: machines with running sessions whose timelines play
// out in real time, synthetic video of a mock desktop, a session library, environments checked
// against Porthole's real JSON Schema, a write-only secret store, and agent runs.
// Used by the browser preview (`npm run dev`) and by the tests.

import schema from '../../../crates/envfile/schema/porthole-environment.schema.json';
import { checkEnvironment } from './mock/envcheck';
import { drawScene } from './mock/scene';
import { LAYOUT, sessionScript } from './mock/script';
import { FrameSource, mockCodec, type FrameMode } from './mock/video';
import type {
  AgentCompat,
  Backend,
  BackendError,
  ControlAction,
  ControlState,
  CreateMachine,
  DisplayState,
  EnvSetup,
  Event,
  FrameSink,
  Health,
  InputMessage,
  LiveInfo,
  Machine,
  Progress,
  ProgressSink,
  Run,
  RunStart,
  SecretInfo,
  SessionSummary,
} from './types';

export interface MockOptions {
  /** Multiplies every simulated delay; 0 answers at once (tests). */
  latency?: number;
  /** How frames are produced: encoded pictures, placeholder frames, or none. */
  frames?: FrameMode;
  /** Frames per second of the mock stream when the viewer sets no cap. */
  fps?: number;
}

const APP_VERSION = '0.1.0';
const STATE_DIR = '/home/dev/.local/share/porthole';

interface LiveConn {
  source: FrameSource | null;
  timer: ReturnType<typeof setInterval> | null;
  onEvent: (e: Event) => void;
  sent: number;
  /** Starts the stream again at the machine's screen size (a new keyframe at the new size). */
  resize: () => void;
}

interface Size {
  width: number;
  height: number;
}

interface MockMachine {
  m: Machine;
  agentVersion: string;
  problems: string[];
  sessionId: string;
  sessionStart: number;
  script: Event[];
  pos: number;
  log: Event[];
  control: ControlState;
  buttons: number;
  lastMoveLogged: number;
  live: LiveConn | null;
  /** The X display and its screen: Xvnc follows a viewer's window, Xvfb is fixed. */
  xDisplay: string;
  screen: Size;
  resizable: boolean;
  /** The size before a viewer resized the screen, put back when control returns. */
  restore: Size | null;
}

interface StoredSession {
  summary: SessionSummary;
  events: Event[];
}

function err(code: string, message: string): BackendError {
  return { code, message };
}

function sessionIdAt(ms: number): string {
  return `s-${Math.floor(ms / 1000).toString(16)}`;
}

/** As the backend parses a progress line: `[k/n] what` is step k of n. */
function progressLine(machine: string, op: string, line: string): Progress {
  const m = /^\[(\d+)\/(\d+)\] (.*)$/s.exec(line);
  return m ? { machine, op, message: m[3].trim(), step: Number(m[1]), steps: Number(m[2]) } : { machine, op, message: line.trim() };
}

/** Wall-clock time as the image recipe stamps its steps (22:10:03). */
function stamp(): string {
  return new Date().toTimeString().slice(0, 8);
}

const SCREEN_MIN = { width: 320, height: 240 };
const SCREEN_MAX = { width: 3840, height: 2160 };

export function createMockBackend(opts: MockOptions = {}): Backend {
  const latency = opts.latency ?? 1;
  const mode: FrameMode = opts.frames ?? 'encode';
  const defaultFps = opts.fps ?? 15;
  const wait = (ms: number) => (latency > 0 ? new Promise<void>((r) => setTimeout(r, ms * latency)) : Promise.resolve());

  const now0 = Date.now();
  const machines = new Map<string, MockMachine>();
  const sessions = new Map<string, StoredSession>();
  const secrets = new Map<string, { info: SecretInfo; value: string }>();
  const runs = new Map<string, Run>();
  const replays = new Map<string, () => void>();

  function addMachine(
    m: Omit<Machine, 'created_at'> & { created_at?: number },
    o: { agentVersion?: string; problems?: string[]; ageS?: number; script?: Parameters<typeof sessionScript>[0]; xDisplay?: string; fixedScreen?: boolean } = {},
  ): MockMachine {
    const start = Date.now() - (o.ageS ?? 30) * 1000;
    const mm: MockMachine = {
      m: { created_at: now0 - 3_600_000, ...m },
      agentVersion: o.agentVersion ?? APP_VERSION,
      problems: o.problems ?? [],
      sessionId: sessionIdAt(start),
      sessionStart: start,
      script: sessionScript(o.script ?? { seed: m.name.length * 7919, durationMs: 3_600_000 }),
      pos: 0,
      log: [],
      control: { holder: 'agent', agent_paused: false, since_t_ms: 0 },
      buttons: 0,
      lastMoveLogged: 0,
      live: null,
      xDisplay: o.xDisplay ?? ':101',
      screen: { width: LAYOUT.width, height: LAYOUT.height },
      resizable: !o.fixedScreen,
      restore: null,
    };
    machines.set(m.name, mm);
    return mm;
  }

  addMachine(
    {
      name: 'web-app',
      provider: 'local',
      status: 'running',
      agent_url: 'http://10.88.0.2:7680',
      spec: { network: 'netns', display: ':101', workspace: '/home/dev/src/todo-app', env: '.porthole/environment.json', display_size: '1280x800' },
    },
    { ageS: 97, script: { seed: 11, durationMs: 3_600_000 } },
  );
  addMachine(
    {
      name: 'ci-runner',
      provider: 'qemu',
      status: 'running',
      agent_url: 'http://127.0.0.1:17022',
      spec: { image: 'debian-12-desktop.qcow2', cpus: 2, memory_mib: 4096, accel: 'tcg' },
    },
    { agentVersion: '0.0.9', problems: ['disk /: 93% used'], ageS: 260, script: { seed: 23, durationMs: 3_600_000 } },
  );
  addMachine(
    {
      name: 'gpu-box',
      provider: 'remote',
      status: 'running',
      agent_url: 'https://gpu-box.lan:7443',
      spec: { fingerprint: 'sha256:4f9a1c2e77d0b35e', token_file: '/home/dev/.config/porthole/gpu-box.token' },
    },
    { ageS: 41, script: { seed: 37, durationMs: 3_600_000 }, xDisplay: ':99', fixedScreen: true },
  );
  addMachine(
    { name: 'run-7f3a', provider: 'local', status: 'running', agent_url: 'http://10.88.0.7:7680', spec: { network: 'netns', run: 'r-7f3a' } },
    { ageS: 75, script: { seed: 41, durationMs: 3_600_000, tasks: true } },
  );
  addMachine(
    { name: 'run-2c91', provider: 'local', status: 'running', agent_url: 'http://10.88.0.8:7680', spec: { network: 'netns', run: 'r-2c91' } },
    { ageS: 300, script: { seed: 53, durationMs: 3_600_000, tasks: true, stallAt: 42_000 } },
  );
  addMachine({ name: 'old-vm', provider: 'qemu', status: 'stopped', agent_url: null, spec: { image: 'debian-12-desktop.qcow2', snapshot: 'clean-install' } });
  addMachine({
    name: 'broken-vm',
    provider: 'qemu',
    status: 'failed',
    agent_url: null,
    spec: { image: 'base.qcow2' },
    error: 'qemu-system-x86_64 exited with status 1: could not open /var/lib/porthole/images/base.qcow2: Permission denied',
  });

  const day = 86_400_000;
  const past: [string, string, number, number, SessionSummary['state'], Parameters<typeof sessionScript>[0]][] = [
    ['s-6746a1c0', 'web-app', now0 - 0.2 * day, 192_000, 'ended', { seed: 101, durationMs: 192_000, takeoverAt: 40_000 }],
    ['s-67459f02', 'ci-runner', now0 - 0.9 * day, 460_000, 'ended', { seed: 102, durationMs: 460_000 }],
    ['s-67450b77', 'gpu-box', now0 - 1.3 * day, 65_000, 'interrupted', { seed: 103, durationMs: 65_000 }],
    ['s-6743c815', 'run-2c91', now0 - 2.1 * day, 360_000, 'ended', { seed: 104, durationMs: 360_000, tasks: true, stallAt: 240_000 }],
    ['s-67429a3d', 'web-app', now0 - 3.4 * day, 720_000, 'ended', { seed: 105, durationMs: 720_000, takeoverAt: 300_000 }],
  ];
  for (const [id, machine, started, duration, state, script] of past) {
    const events = sessionScript(script);
    sessions.set(id, {
      summary: { id, machine, started_at: started, duration_ms: duration, state, bytes: Math.round(duration * 41.7), events: events.length, thumbnail: null },
      events,
    });
  }

  for (const [name, scope, age] of [
    ['GITHUB_TOKEN', '', 12 * day],
    ['ANTHROPIC_API_KEY', '', 3 * day],
    ['DATABASE_URL', 'todo-app', 0.3 * day],
    ['STRIPE_TEST_KEY', 'todo-app', 9 * day],
  ] as const) {
    secrets.set(`${scope}\0${name}`, { info: { name, scope, updated_at: now0 - age }, value: 'not-a-real-secret' });
  }

  const runList: Run[] = [
    {
      id: 'r-7f3a',
      repo: '/home/dev/src/todo-app',
      base: 'main',
      branch: 'porthole/r-7f3a',
      task: 'Trim todo titles and add on Enter; cover it with a test',
      agent: 'claude -p "$PORTHOLE_TASK"',
      machine: 'run-7f3a',
      status: 'running',
      created_at: now0 - 75_000,
    },
    {
      id: 'r-2c91',
      repo: '/home/dev/src/api-server',
      base: 'main',
      branch: 'porthole/r-2c91',
      task: 'Upgrade sqlx to 0.8 and fix the build',
      agent: 'codex exec "$PORTHOLE_TASK"',
      machine: 'run-2c91',
      status: 'running',
      created_at: now0 - 300_000,
    },
    {
      id: 'r-19b0',
      repo: '/home/dev/src/todo-app',
      base: 'main',
      branch: 'porthole/r-19b0',
      task: 'Add CSV export to the todo list',
      agent: 'claude -p "$PORTHOLE_TASK"',
      machine: 'run-19b0',
      status: 'stopped',
      created_at: now0 - 1.2 * day,
    },
    {
      id: 'r-0f77',
      repo: '/home/dev/src/legacy-shop',
      base: 'develop',
      branch: 'porthole/r-0f77',
      task: 'Replace moment.js with date-fns',
      agent: 'aider --yes --message "$PORTHOLE_TASK"',
      machine: 'run-0f77',
      status: 'failed',
      error: 'install step exited with 1: npm ERR! ERESOLVE unable to resolve dependency tree',
      created_at: now0 - 2.5 * day,
    },
  ];
  for (const r of runList) runs.set(r.id, r);

  // --- sessions in motion -------------------------------------------------------------------

  function clockOf(mm: MockMachine): number {
    return Date.now() - mm.sessionStart;
  }

  function push(mm: MockMachine, e: Omit<Event, 'seq'>): Event {
    const ev = { ...e, seq: mm.log.length + 1 };
    mm.log.push(ev);
    return ev;
  }

  /** Moves the script forward to now; a paused agent's actions become refusals. */
  function advance(mm: MockMachine): void {
    if (mm.m.status !== 'running') return;
    const t = clockOf(mm);
    while (mm.pos < mm.script.length && mm.script[mm.pos].t_ms <= t) {
      const e = mm.script[mm.pos++];
      if (e.kind === 'control') continue; // takeovers come from real viewers here
      const blocked = mm.control.holder === 'human' || mm.control.agent_paused;
      if (blocked && e.actor === 'agent' && e.kind === 'action') {
        push(mm, { t_ms: e.t_ms, actor: 'agent', kind: 'refused', data: { action: e.data.action, reason: mm.control.holder === 'human' ? 'a human holds control' : 'the agent is paused' } });
      } else {
        push(mm, { t_ms: e.t_ms, actor: e.actor, kind: e.kind, data: e.data });
      }
    }
    const live = mm.live;
    if (live) {
      while (live.sent < mm.log.length) live.onEvent(mm.log[live.sent++]);
    }
  }

  /** web-app has an environment that finished setting up; ci-runner is still installing. */
  function envOf(mm: MockMachine): EnvSetup {
    const ageMs = Date.now() - mm.sessionStart;
    if (mm.m.name === 'web-app')
      return { state: 'ready', name: 'todo-app', steps: [{ name: 'install', state: 'done', exit_code: 0, duration_ms: 41_200 }, { name: 'start', state: 'done', exit_code: 0, duration_ms: 900 }] };
    if (mm.m.name === 'ci-runner')
      return { state: 'running', name: 'ci', steps: [{ name: 'install', state: 'running', duration_ms: ageMs }, { name: 'start', state: 'pending' }] };
    return { state: 'none', steps: [] };
  }

  function get(name: string): MockMachine {
    const mm = machines.get(name);
    if (!mm) throw err('not_found', `no machine named '${name}'; see the machine list`);
    return mm;
  }

  function running(name: string): MockMachine {
    const mm = get(name);
    if (mm.m.status !== 'running') throw err('not_running', `machine '${name}' is ${mm.m.status}: start it first`);
    return mm;
  }

  function stopLive(mm: MockMachine): void {
    if (!mm.live) return;
    if (mm.live.timer) clearInterval(mm.live.timer);
    mm.live.source?.close();
    mm.live = null;
  }

  function renderFor(events: () => Event[], machine: string, width: number, height: number, screen?: Size) {
    return (ctx: OffscreenCanvasRenderingContext2D | CanvasRenderingContext2D, t: number) => drawScene(ctx, width, height, t, events(), machine, screen);
  }

  /** Reports `lines` as a long operation's progress, `[delay ms, line]` each. */
  async function progress(name: string, op: string, onProgress: ProgressSink | undefined, lines: [number, string][]): Promise<void> {
    for (const [ms, line] of lines) {
      await wait(ms);
      onProgress?.(progressLine(name, op, line));
    }
  }

  let imageBuilt = false;

  /** What the image recipe prints the first time a QEMU machine is created. */
  function imageRecipe(): [number, string][] {
    if (imageBuilt) return [];
    imageBuilt = true;
    return [
      [300, 'building the guest image (a few minutes, once)'],
      [400, `[1/6] debootstrap Debian bookworm (${stamp()})`],
      [300, 'I: Retrieving InRelease'],
      [250, 'I: Validating debian-archive-keyring 2023.3+deb12u1'],
      [300, 'I: Extracting libc6...'],
      [300, 'I: Configuring systemd...'],
      [400, `[2/6] install desktop, Chromium, tmux, kernel (${stamp()})`],
      [300, 'Get:214 http://deb.debian.org/debian bookworm/main amd64 chromium amd64 131.0.6778.139-1~deb12u1 [78.4 MB]'],
      [300, 'Unpacking xserver-xorg-core (2:21.1.7-3+deb12u8) ...'],
      [300, 'Setting up linux-image-6.1.0-28-amd64 (6.1.119-1) ...'],
      [400, `[3/6] install the guest agent (${stamp()})`],
      [400, `[4/6] autologin, session and agent service (${stamp()})`],
      [350, `[5/6] clean the apt cache and zero free space (${stamp()})`],
      [500, `[6/6] compress into qcow2 (${stamp()})`],
    ];
  }

  /** Sets the guest screen's size and puts it on the timeline. */
  function setScreen(mm: MockMachine, size: Size, actor: Event['actor'], by: string): void {
    const from = mm.screen;
    if (from.width === size.width && from.height === size.height) return;
    mm.screen = { ...size };
    push(mm, { t_ms: clockOf(mm), actor, kind: 'display', data: { width: size.width, height: size.height, from, by } });
    mm.live?.resize();
  }

  function fixedReason(mm: MockMachine): string {
    return `the X server on ${mm.xDisplay} has a fixed ${mm.screen.width}x${mm.screen.height} screen (Xvfb cannot add RandR modes); run the display under Xvnc (tigervnc-standalone-server) to let it follow the window`;
  }

  /** A viewer holding control asks for its window's size (rounded down to even, bounded). */
  function displayInput(mm: MockMachine, width: number, height: number): void {
    const fail = (message: string) => {
      push(mm, { t_ms: clockOf(mm), actor: 'system', kind: 'error', data: { viewer: 'app', input: 'display', message } });
    };
    if (!mm.resizable) return fail(fixedReason(mm));
    const size = { width: width & ~1, height: height & ~1 };
    if (size.width < SCREEN_MIN.width || size.height < SCREEN_MIN.height || size.width > SCREEN_MAX.width || size.height > SCREEN_MAX.height) {
      return fail(`display size ${width}x${height} is out of range: width ${SCREEN_MIN.width}..=${SCREEN_MAX.width}, height ${SCREEN_MIN.height}..=${SCREEN_MAX.height}`);
    }
    const before = mm.screen;
    setScreen(mm, size, 'human', 'app');
    if (!mm.restore) mm.restore = before;
  }

  function thumbnail(events: Event[], t: number, machine: string): string | null {
    if (typeof document === 'undefined' || mode !== 'encode') return null;
    try {
      const c = document.createElement('canvas');
      c.width = 320;
      c.height = 200;
      const ctx = c.getContext('2d');
      if (!ctx) return null;
      drawScene(ctx, 320, 200, t, events, machine);
      const url = c.toDataURL('image/jpeg', 0.75);
      return url.startsWith('data:image/') ? url : null;
    } catch {
      return null;
    }
  }

  const compatOf = (mm: MockMachine): AgentCompat =>
    mm.agentVersion === APP_VERSION
      ? { ok: true, agent_version: mm.agentVersion, app_version: APP_VERSION }
      : {
          ok: false,
          agent_version: mm.agentVersion,
          app_version: APP_VERSION,
          message: `agent ${mm.agentVersion} is older than this app supports (${APP_VERSION}); upgrade the agent on the machine`,
        };

  const backend: Backend = {
    async machinesList() {
      await wait(120);
      return [...machines.values()].map((mm) => ({ ...mm.m }));
    },

    async machineCreate(req: CreateMachine, onProgress?: ProgressSink) {
      await wait(150);
      const name = req.name ?? '';
      if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$/.test(name)) {
        throw err('invalid', `machine name '${name}': use 1-40 letters, digits, '-' or '_', starting with a letter or digit`);
      }
      if (machines.has(name)) throw err('exists', `machine name '${name}' is taken; destroy that machine or pick another name`);
      if (req.provider === 'remote') {
        if (!req.url) throw err('invalid', 'url: a remote machine needs the agent URL (http[s]://host:port)');
        if (!/^https?:\/\/[^/\s]+$/.test(req.url)) throw err('invalid', `url '${req.url}': expected http[s]://host:port with no path`);
        if (!req.tokenFile) throw err('invalid', 'token file: a remote machine needs the file holding its bearer token');
      }
      if (req.envPath && !req.envPath.endsWith('.json')) throw err('invalid', `environment file ${req.envPath}: expected a .json file`);
      onProgress?.(progressLine(name, 'create', `creating a ${req.provider} machine`));
      const mm = addMachine(
        {
          name,
          provider: req.provider,
          status: 'creating',
          agent_url: null,
          spec: Object.fromEntries(Object.entries({ env: req.envPath, workspace: req.workspace, fingerprint: req.fingerprint, browser: req.browser }).filter(([, v]) => v !== undefined && v !== '')),
          created_at: Date.now(),
        },
        { ageS: 0, script: { seed: name.length * 131 + 7, durationMs: 3_600_000 } },
      );
      if (req.provider === 'qemu') {
        await progress(name, 'create', onProgress, [...imageRecipe(), [500, 'booting the VM (tcg, emulated: ~15 s)'], [1200, 'waiting for the agent']]);
        await wait(1500);
      } else if (req.provider === 'local') {
        await progress(name, 'create', onProgress, [[300, 'starting the sandbox: X server, window manager, agent'], [700, 'waiting for the agent']]);
        await wait(800);
      } else {
        await progress(name, 'create', onProgress, [[200, 'waiting for the agent']]);
        await wait(600);
      }
      mm.m.status = 'running';
      mm.m.agent_url = req.provider === 'remote' ? req.url! : `http://10.88.0.${10 + machines.size}:7680`;
      mm.sessionStart = Date.now();
      mm.sessionId = sessionIdAt(mm.sessionStart);
      return { ...mm.m };
    },

    async machineStart(name, onProgress) {
      const mm = get(name);
      if (mm.m.status === 'running') return { ...mm.m };
      mm.m.status = 'creating';
      await progress(name, 'start', onProgress, [
        [0, 'starting'],
        mm.m.provider === 'qemu' ? [300, 'booting the VM (tcg, emulated: ~15 s)'] : [200, 'starting the sandbox: X server, window manager, agent'],
        [700, 'waiting for the agent'],
      ]);
      await wait(1000);
      mm.m.status = 'running';
      mm.m.error = null;
      mm.m.agent_url = mm.m.agent_url ?? `http://127.0.0.1:${17000 + machines.size}`;
      mm.sessionStart = Date.now();
      mm.sessionId = sessionIdAt(mm.sessionStart);
      mm.pos = 0;
      mm.log = [];
      mm.screen = { width: LAYOUT.width, height: LAYOUT.height };
      mm.restore = null;
      return { ...mm.m };
    },

    async machineStop(name) {
      const mm = get(name);
      await wait(900);
      stopLive(mm);
      mm.m.status = 'stopped';
      mm.m.agent_url = null;
      return { ...mm.m };
    },

    async machineDestroy(name) {
      const mm = get(name);
      await wait(1200);
      stopLive(mm);
      machines.delete(name);
    },

    async machineSnapshot(name, snapshot, onProgress) {
      const mm = get(name);
      if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(snapshot)) {
        throw err('invalid', `snapshot name '${snapshot}': use letters, digits, '-', '_' or '.', starting with a letter or digit`);
      }
      if (mm.m.provider === 'remote') throw err('unsupported', `machine '${name}' is remote: snapshots are taken on the host that runs it`);
      if (mm.m.provider === 'qemu' && mm.m.status === 'running') {
        const total = Number(mm.m.spec.memory_mib) || 2048;
        await progress(name, 'snapshot', onProgress, [
          [0, "flushing the guest's disks"],
          [400, `saving memory: ${Math.round(total * 0.15)} of ${total} MiB`],
          [500, `saving memory: ${Math.round(total * 0.55)} of ${total} MiB`],
          [500, `saving memory: ${total} of ${total} MiB`],
          [300, 'copying the disk'],
        ]);
        await wait(600);
      } else {
        await wait(1500);
      }
      mm.m.spec = { ...mm.m.spec, snapshot };
    },

    async machineHealth(name) {
      await wait(80);
      const mm = get(name);
      if (mm.m.status !== 'running') throw err('unreachable', `machine '${name}' is ${mm.m.status}`);
      const health: Health = {
        status: mm.problems.length ? 'degraded' : 'ok',
        version: mm.agentVersion,
        problems: mm.problems,
        session_id: mm.sessionId,
        display: { name: mm.xDisplay, width: mm.screen.width, height: mm.screen.height },
      };
      return { health, compat: compatOf(mm), environment: envOf(mm) };
    },

    async liveStart(name, onFrame: FrameSink, onEvent, o) {
      await wait(200);
      const mm = running(name);
      stopLive(mm);
      const codec = mode === 'encode' ? await mockCodec(LAYOUT.width, LAYOUT.height) : null;
      const fps = Math.max(1, Math.min(o?.maxFps ?? defaultFps, defaultFps));
      // A capped viewer gets the reduced tier: half the resolution as well as fewer frames
      // (software encoders in a browser cannot keep up with several full-size streams).
      const makeSource = () => {
        if (mode === 'none') return null;
        const screen = mm.screen;
        const [w, h] = o?.maxFps ? [Math.floor(screen.width / 4) * 2, Math.floor(screen.height / 4) * 2] : [screen.width, screen.height];
        return new FrameSource({ width: w, height: h, codec, fps, mode, onFrame, render: renderFor(() => mm.log, name, w, h, screen) });
      };
      // Events before now were read with `events`; the stream carries what happens next.
      advance(mm);
      const live: LiveConn = {
        source: makeSource(),
        timer: null,
        onEvent,
        sent: mm.log.length,
        resize: () => {
          live.source?.close();
          live.source = makeSource();
        },
      };
      mm.live = live;
      live.timer = setInterval(() => {
        advance(mm);
        const source = live.source;
        if (source && !source.busy()) source.encode(clockOf(mm));
      }, 1000 / fps);
      const info: LiveInfo = { sessionId: mm.sessionId, codec: codec ?? 'H264', width: mm.screen.width, height: mm.screen.height };
      return info;
    },

    async liveStop(name) {
      const mm = machines.get(name);
      if (mm) stopLive(mm);
    },

    async liveKeyframe(name) {
      // A fresh encoder starts with a keyframe.
      machines.get(name)?.live?.resize();
    },

    async liveInput(name, msg: InputMessage) {
      const mm = running(name);
      advance(mm);
      const t = clockOf(mm);
      if (msg.type === 'control') {
        await backend.control(name, msg.action);
        return;
      }
      if (mm.control.holder !== 'human') {
        push(mm, { t_ms: t, actor: 'human', kind: 'refused', data: { viewer: 'app', input: msg.type, reason: 'the agent holds control; take control first' } });
        advance(mm);
        return;
      }
      if (msg.type === 'pointer') {
        const changed = mm.buttons ^ msg.buttons;
        for (const [bit, button] of [
          [1, 'left'],
          [2, 'right'],
          [4, 'middle'],
        ] as const) {
          if (changed & bit) push(mm, { t_ms: t, actor: 'human', kind: 'input', data: { device: 'pointer', x: msg.x, y: msg.y, button, down: (msg.buttons & bit) !== 0, viewer: 'app' } });
        }
        mm.buttons = msg.buttons;
        if (!changed && Date.now() - mm.lastMoveLogged >= 100) {
          mm.lastMoveLogged = Date.now();
          push(mm, { t_ms: t, actor: 'human', kind: 'input', data: { device: 'pointer', x: msg.x, y: msg.y, move: true, viewer: 'app' } });
        }
      } else if (msg.type === 'wheel') {
        push(mm, { t_ms: t, actor: 'human', kind: 'input', data: { device: 'wheel', dx: Math.trunc(msg.dx / 100), dy: Math.trunc(msg.dy / 100), viewer: 'app' } });
      } else if (msg.type === 'key') {
        // As the agent records a human's keys: no characters (a count, named keys).
        const printing = [...msg.key].length === 1;
        if (!printing) push(mm, { t_ms: t, actor: 'human', kind: 'input', data: { device: 'key', key: msg.code, down: msg.down, modifiers: [], viewer: 'app' } });
        else if (msg.down) push(mm, { t_ms: t, actor: 'human', kind: 'input', data: { device: 'key', count: 1, down: true, modifiers: [], viewer: 'app' } });
      } else if (msg.type === 'text') {
        push(mm, { t_ms: t, actor: 'human', kind: 'input', data: { device: 'text', count: [...msg.text].length, viewer: 'app' } });
      } else if (msg.type === 'clipboard') {
        push(mm, { t_ms: t, actor: 'human', kind: 'input', data: { device: 'clipboard', chars: [...msg.text].length, viewer: 'app' } });
      } else if (msg.type === 'display') {
        displayInput(mm, msg.width, msg.height);
      }
      advance(mm);
    },

    async displayInfo(name) {
      await wait(80);
      const mm = running(name);
      const info: DisplayState = { width: mm.screen.width, height: mm.screen.height, resizable: mm.resizable };
      if (!mm.resizable) info.reason = fixedReason(mm);
      return info;
    },

    async control(name, action: ControlAction) {
      await wait(60);
      const mm = running(name);
      advance(mm);
      const t = clockOf(mm);
      const c = mm.control;
      const next: ControlState =
        action === 'take'
          ? { holder: 'human', agent_paused: true, since_t_ms: t }
          : action === 'release'
            ? { holder: c.agent_paused && c.holder !== 'human' ? 'nobody' : 'agent', agent_paused: false, since_t_ms: t }
            : action === 'pause_agent'
              ? { holder: c.holder === 'human' ? 'human' : 'nobody', agent_paused: true, since_t_ms: t }
              : { holder: c.holder === 'human' ? 'human' : 'agent', agent_paused: c.holder === 'human', since_t_ms: t };
      mm.control = next;
      push(mm, { t_ms: t, actor: 'human', kind: 'control', data: { action, by: 'app', state: next } });
      if (next.holder !== 'human' && mm.restore) {
        // The viewer resized the screen while it held control: put it back for the agent.
        setScreen(mm, mm.restore, 'system', 'restore');
        mm.restore = null;
      }
      advance(mm);
      return { ...next };
    },

    async events(name, after) {
      await wait(60);
      const mm = get(name);
      advance(mm);
      const events = mm.log.filter((e) => e.seq > after).slice(0, 1000);
      return { events, next: events.length ? events[events.length - 1].seq : after };
    },

    async sessionsList() {
      await wait(150);
      return [...sessions.values()]
        .map((s) => {
          if (s.summary.thumbnail === null) s.summary.thumbnail = thumbnail(s.events, Math.min(s.summary.duration_ms, 30_000), s.summary.machine) ?? undefined;
          return { ...s.summary };
        })
        .sort((a, b) => b.started_at - a.started_at);
    },

    async sessionsSync(name) {
      const mm = running(name);
      await wait(1400);
      advance(mm);
      const duration = clockOf(mm);
      const bytes = Math.round(duration * 41.7);
      const events = mm.log.map((e) => ({ ...e }));
      sessions.set(mm.sessionId, {
        summary: { id: mm.sessionId, machine: name, started_at: mm.sessionStart, duration_ms: duration, state: 'running', bytes, events: events.length, thumbnail: null },
        events,
      });
      return { sessions: 1, events: events.length, bytes };
    },

    async replayOpen(sessionId) {
      await wait(200);
      const s = sessions.get(sessionId);
      if (!s) throw err('not_found', `no session '${sessionId}' in the local store; sync its machine first`);
      const codec = mode === 'encode' ? await mockCodec(LAYOUT.width, LAYOUT.height) : null;
      const keyframes: number[] = [];
      for (let t = 0; t < s.summary.duration_ms; t += 2000) keyframes.push(t);
      return { sessionId, duration_ms: s.summary.duration_ms, codec: codec ?? 'H264', width: LAYOUT.width, height: LAYOUT.height, keyframes_ms: keyframes };
    },

    async replayEvents(sessionId) {
      await wait(100);
      const s = sessions.get(sessionId);
      if (!s) throw err('not_found', `no session '${sessionId}' in the local store`);
      return s.events.map((e) => ({ ...e }));
    },

    replayPlay(sessionId, fromMs, speed, onFrame) {
      const s = sessions.get(sessionId);
      if (!s) return Promise.reject(err('not_found', `no session '${sessionId}' in the local store`));
      if (!(speed > 0)) return Promise.reject(err('invalid', `speed ${speed}: expected a positive number`));
      replays.get(sessionId)?.();
      return new Promise<void>((resolve) => {
        let stopped = false;
        let timer: ReturnType<typeof setTimeout> | null = null;
        let source: FrameSource | null = null;
        const stop = () => {
          stopped = true;
          if (timer) clearTimeout(timer);
          source?.close();
          if (replays.get(sessionId) === stop) replays.delete(sessionId);
          resolve();
        };
        replays.set(sessionId, stop);
        if (mode === 'none') return;
        void (async () => {
          const codec = mode === 'encode' ? await mockCodec(LAYOUT.width, LAYOUT.height) : null;
          if (stopped) return;
          const step = 1000 / defaultFps;
          source = new FrameSource({
            width: LAYOUT.width,
            height: LAYOUT.height,
            codec,
            fps: defaultFps,
            mode,
            onFrame,
            render: renderFor(() => s.events, s.summary.machine, LAYOUT.width, LAYOUT.height),
          });
          const end = s.summary.duration_ms;
          const from = Math.min(Math.max(0, fromMs), end);
          let t = Math.floor(from / 2000) * 2000;
          // From the keyframe before `fromMs` up to it at once, then paced at `speed`.
          while (t < from) {
            source.encode(Math.round(t));
            t += step;
          }
          const wall0 = performance.now();
          const tick = () => {
            if (stopped || !source) return;
            if (t > end) return stop();
            if (!source.busy()) source.encode(Math.round(t));
            t += step;
            const due = wall0 + (t - from) / speed;
            timer = setTimeout(tick, Math.max(0, due - performance.now()));
          };
          tick();
        })();
      });
    },

    async replayStop(sessionId) {
      replays.get(sessionId)?.();
    },

    async exportEvidence(sessionId, outDir, fromMs, toMs) {
      if (!outDir.trim()) throw err('invalid', 'outDir: choose a folder to export into');
      if (!sessions.has(sessionId)) throw err('not_found', `no session '${sessionId}' in the local store`);
      if (fromMs !== undefined && toMs !== undefined && toMs <= fromMs) throw err('invalid', `range: the end (${toMs} ms) must come after the start (${fromMs} ms)`);
      await wait(1600);
      const dir = `${outDir.replace(/\/+$/, '')}/${sessionId}`;
      return { dir, html: `${dir}/index.html`, summary: `${dir}/summary.md` };
    },

    async envCheck(text, fileName) {
      await wait(120);
      return checkEnvironment(text, fileName, schema);
    },

    async envSchema() {
      await wait(60);
      return structuredClone(schema);
    },

    async secretsList() {
      await wait(100);
      const list = [...secrets.values()].map((s) => ({ ...s.info }));
      list.sort((a, b) => a.scope.localeCompare(b.scope) || a.name.localeCompare(b.name));
      return { backend: 'encrypted file (no OS keychain)', secrets: list };
    },

    async secretSet(name, scope, value) {
      await wait(150);
      if (!/^[A-Z_][A-Z0-9_]{0,63}$/.test(name)) {
        throw err('invalid', `secret name '${name}': use capitals, digits and '_', starting with a capital (it becomes an environment variable)`);
      }
      if (!value) throw err('invalid', 'value: a secret cannot be empty');
      secrets.set(`${scope}\0${name}`, { info: { name, scope, updated_at: Date.now() }, value });
    },

    async secretDelete(name, scope) {
      await wait(120);
      if (!secrets.delete(`${scope}\0${name}`)) throw err('not_found', `no secret ${name} in scope '${scope || 'global'}'`);
    },

    async runsList() {
      await wait(120);
      return [...runs.values()].map((r) => ({ ...r })).sort((a, b) => b.created_at - a.created_at);
    },

    async runStart(req: RunStart) {
      await wait(200);
      if (!req.repo?.trim()) throw err('invalid', 'repo: give a repository path or URL');
      if (!req.task?.trim()) throw err('invalid', 'task: describe what the agent should do');
      if (!req.agent?.trim()) throw err('invalid', 'agent: give the command that starts the coding agent');
      if (req.repo.includes('missing')) throw err('git', `repo: ${req.repo} is not a git repository`);
      const id = `r-${Math.floor(Math.random() * 0xffff).toString(16).padStart(4, '0')}`;
      const run: Run = {
        id,
        repo: req.repo,
        base: req.branch || 'main',
        branch: `porthole/${id}`,
        task: req.task,
        agent: req.agent,
        machine: `run-${id.slice(2)}`,
        status: 'starting',
        created_at: Date.now(),
      };
      runs.set(id, run);
      addMachine(
        { name: run.machine, provider: 'local', status: 'running', agent_url: 'http://10.88.0.20:7680', spec: { network: 'netns', run: id }, created_at: Date.now() },
        { ageS: 0, script: { seed: id.charCodeAt(3) * 17, durationMs: 3_600_000, tasks: true } },
      );
      await wait(2500);
      run.status = 'running';
      return { ...run };
    },

    async runStop(id) {
      const r = runs.get(id);
      if (!r) throw err('not_found', `no run '${id}'`);
      await wait(1200);
      const mm = machines.get(r.machine);
      if (mm) {
        stopLive(mm);
        machines.delete(r.machine);
      }
      r.status = 'stopped';
      return { ...r };
    },

    async runCollect(id) {
      const r = runs.get(id);
      if (!r) throw err('not_found', `no run '${id}'`);
      if (r.status === 'failed') throw err('git', `branch ${r.branch} is gone from ${r.repo}`);
      await wait(900);
      const dir = `${STATE_DIR}/runs/${id}`;
      return {
        id,
        repo: r.repo,
        branch: r.branch,
        commits: 3,
        patch: `${dir}/${id}.patch`,
        summary: `${dir}/summary.md`,
        diff_stat:
          ' src/components/TodoInput.tsx      |  6 ++++--\n src/components/TodoInput.test.tsx | 21 +++++++++++++++++++++\n src/api/todos.ts                  |  3 ++-\n 3 files changed, 26 insertions(+), 4 deletions(-)',
      };
    },

    async appVersion() {
      return APP_VERSION;
    },
  };
  return backend;
}
