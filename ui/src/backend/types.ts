// The UI's whole view of the backend. `tauri.ts` implements it with Tauri commands, `mock.ts`
// in memory (tests and the browser preview). Nothing else in the UI talks to the backend.

// Wire types generated from crates/proto by ts-rs (`cargo test -p porthole-proto` writes
// ./bindings; tests/run.sh fails when the committed files are stale). Never edit those.
import type { ControlAction } from './bindings/ControlAction';
import type { ControlState } from './bindings/ControlState';
import type { DisplayState } from './bindings/DisplayState';
import type { Event } from './bindings/Event';
import type { Health } from './bindings/Health';
import type { Progress } from './bindings/Progress';
import type { ViewerMessage } from './bindings/ViewerMessage';
export type { Actor } from './bindings/Actor';
export type { ControlAction } from './bindings/ControlAction';
export type { ControlState } from './bindings/ControlState';
export type { DisplayState } from './bindings/DisplayState';
export type { Event } from './bindings/Event';
export type { Health } from './bindings/Health';
export type { Progress } from './bindings/Progress';
export type { StreamStats } from './bindings/StreamStats';
export type { ViewerMessage } from './bindings/ViewerMessage';

export type ProviderKind = 'local' | 'qemu' | 'remote';

export interface Machine {
  name: string;
  provider: ProviderKind;
  status: 'creating' | 'running' | 'stopped' | 'failed';
  agent_url: string | null;
  spec: Record<string, unknown>;
  error?: string | null;
  created_at: number;
}

/** The agent needs an upgrade when `ok` is false. */
export interface AgentCompat {
  ok: boolean;
  agent_version: string;
  app_version: string;
  message?: string;
}

/** One step of an environment's setup on the machine (`GET /v1/environment`, logs left out). */
export interface EnvStep {
  name: string;
  state: 'pending' | 'running' | 'done' | 'failed' | 'skipped' | 'unsupported';
  exit_code?: number | null;
  duration_ms?: number | null;
  message?: string | null;
}

/** Where the machine's environment setup is: `none` when it has no environment. */
export interface EnvSetup {
  state: 'none' | 'running' | 'ready' | 'failed';
  name?: string | null;
  steps: EnvStep[];
}

export interface CreateMachine {
  name: string;
  provider: ProviderKind;
  envPath?: string;
  workspace?: string;
  url?: string;
  tokenFile?: string;
  fingerprint?: string;
  browser?: boolean;
}

export type Codec = 'H264' | 'VP8';

export interface LiveInfo {
  sessionId: string;
  codec: Codec;
  width: number;
  height: number;
}

export interface SessionSummary {
  id: string;
  machine: string;
  started_at: number;
  duration_ms: number;
  state: 'running' | 'ended' | 'interrupted';
  bytes: number;
  events: number;
  /** A data URL, or absent. */
  thumbnail?: string | null;
}

export interface ReplayInfo {
  sessionId: string;
  duration_ms: number;
  /** Recordings are H.264; the mock backend may produce VP8 where the browser has no H.264 encoder. */
  codec: Codec;
  width: number;
  height: number;
  keyframes_ms: number[];
}

export interface EnvProblem {
  path: string;
  message: string;
}

export interface EnvCheck {
  kind: 'cursor' | 'porthole' | 'devcontainer';
  problems: EnvProblem[];
  not_mapped: string[];
  // The environment in Porthole's form when the file is valid.
  environment: any | null;
}

export interface SecretInfo {
  name: string;
  /** "" is global; anything else is an environment name. */
  scope: string;
  updated_at: number;
}

export interface Run {
  id: string;
  repo: string;
  base: string;
  branch: string;
  task: string;
  agent: string;
  machine: string;
  status: string;
  error?: string | null;
  created_at: number;
}

export interface RunStart {
  repo: string;
  branch?: string;
  task: string;
  agent: string;
  envPath?: string;
}

/** Viewer → agent messages, as on the `porthole` data channel. */
export type InputMessage = ViewerMessage;

/** Every call rejects with this. */
export interface BackendError {
  code: string;
  message: string;
}

export type FrameSink = (buf: ArrayBuffer) => void;

/** Called with each step of a long machine operation while it runs. */
export type ProgressSink = (p: Progress) => void;

export interface Backend {
  machinesList(): Promise<Machine[]>;
  machineCreate(req: CreateMachine, onProgress?: ProgressSink): Promise<Machine>;
  machineStart(name: string, onProgress?: ProgressSink): Promise<Machine>;
  machineStop(name: string): Promise<Machine>;
  machineDestroy(name: string): Promise<void>;
  machineSnapshot(name: string, snapshot: string, onProgress?: ProgressSink): Promise<void>;
  machineHealth(name: string): Promise<{ health: Health; compat: AgentCompat; environment?: EnvSetup | null }>;

  liveStart(name: string, onFrame: FrameSink, onEvent: (e: Event) => void, opts?: { maxFps?: number }): Promise<LiveInfo>;
  liveStop(name: string): Promise<void>;
  /** Ask the machine for a keyframe now (the decoder restarted and waits for one). */
  liveKeyframe(name: string): Promise<void>;
  liveInput(name: string, msg: InputMessage): Promise<void>;
  /** The guest screen's size and whether it can follow the viewer's window. */
  displayInfo(name: string): Promise<DisplayState>;
  control(name: string, action: ControlAction): Promise<ControlState>;
  events(name: string, after: number): Promise<{ events: Event[]; next: number }>;

  sessionsList(): Promise<SessionSummary[]>;
  sessionsSync(name: string): Promise<{ sessions: number; events: number; bytes: number }>;
  replayOpen(sessionId: string): Promise<ReplayInfo>;
  replayEvents(sessionId: string): Promise<Event[]>;
  replayPlay(sessionId: string, fromMs: number, speed: number, onFrame: FrameSink): Promise<void>;
  replayStop(sessionId: string): Promise<void>;
  exportEvidence(sessionId: string, outDir: string, fromMs?: number, toMs?: number): Promise<{ dir: string; html: string; summary: string }>;

  envCheck(text: string, fileName: string): Promise<EnvCheck>;
  // A JSON Schema document.
  envSchema(): Promise<any>;

  secretsList(): Promise<{ backend: string; secrets: SecretInfo[] }>;
  secretSet(name: string, scope: string, value: string): Promise<void>;
  secretDelete(name: string, scope: string): Promise<void>;

  runsList(): Promise<Run[]>;
  runStart(req: RunStart): Promise<Run>;
  runStop(id: string): Promise<Run>;
  // The collect report (branch, commits, patch and summary paths, ...).
  runCollect(id: string): Promise<any>;

  appVersion(): Promise<string>;
}
