// The backend as Tauri commands. Command names are snake_case; argument names are the Rust
// parameter names in camelCase, as Tauri converts them (e.g. `session_id` → `sessionId`).
// Struct arguments (`req`) are deserialized with serde `rename_all = "camelCase"`.

import { Channel, invoke } from '@tauri-apps/api/core';
import { setGpu } from '../video/decoder';
import type { Backend, BackendError, Event, FrameSink, LiveInfo, Progress, ProgressSink } from './types';

function toBackendError(e: unknown): BackendError {
  if (e && typeof e === 'object' && 'message' in e) {
    const o = e as { code?: unknown; message?: unknown };
    return { code: typeof o.code === 'string' ? o.code : 'error', message: String(o.message) };
  }
  return { code: 'error', message: typeof e === 'string' ? e : String(e) };
}

async function call<T>(cmd: string, args?: Record<string, unknown>): Promise<T> {
  try {
    return await invoke<T>(cmd, args);
  } catch (e) {
    throw toBackendError(e);
  }
}

function frameChannel(onFrame: FrameSink): Channel<ArrayBuffer> {
  const ch = new Channel<ArrayBuffer>();
  ch.onmessage = (msg) => {
    // Raw bytes arrive as an ArrayBuffer; be lenient with typed arrays and plain arrays.
    if (msg instanceof ArrayBuffer) onFrame(msg);
    else if (ArrayBuffer.isView(msg)) {
      const v = msg as ArrayBufferView;
      onFrame(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength) as ArrayBuffer);
    } else if (Array.isArray(msg)) onFrame(new Uint8Array(msg as number[]).buffer);
  };
  return ch;
}

/**
 * Live frames: the app's loopback WebSocket (crates/core/src/frames.rs), one binary message per
 * frame. Not a `Channel`: a channel message over 1 KB is an `eval` plus an `ipc://` fetch on
 * the GTK main thread, per frame. The socket closes when the view stops (`liveStop`) or the
 * backend ends the stream; a view started again gets a new URL.
 */
const sockets = new Map<string, WebSocket>();

function openFrames(name: string, url: string, onFrame: FrameSink, onEvent: (e: Event) => void): void {
  detach(name);
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  ws.onmessage = (m) => {
    if (m.data instanceof ArrayBuffer) onFrame(m.data);
  };
  ws.onclose = () => {
    if (sockets.get(name) !== ws) return;
    sockets.delete(name);
    // Not closed by us (a stop or a new start detaches first): the stream is gone, which the
    // view treats as a lost link and starts again.
    onEvent({ seq: 0, t_ms: 0, actor: 'system', kind: 'link', data: { state: 'failed', reason: 'frame stream closed' } });
  };
  sockets.set(name, ws);
}

/** Forgets `name`'s frame socket before closing it, so its close is not taken for a loss. */
function detach(name: string): void {
  const old = sockets.get(name);
  sockets.delete(name);
  if (old) {
    old.onclose = null;
    old.close();
  }
}

/** A channel for a command's `onProgress` (`Channel<Progress>`, always passed; lines nobody
 * listens to are dropped here). */
function progressChannel(onProgress?: ProgressSink): Channel<Progress> {
  const ch = new Channel<Progress>();
  ch.onmessage = onProgress ?? (() => {});
  return ch;
}

export function createTauriBackend(): Backend {
  return {
    machinesList: () => call('machines_list'),
    machineCreate: (req, onProgress) => call('machine_create', { req, onProgress: progressChannel(onProgress) }),
    machineStart: (name, onProgress) => call('machine_start', { name, onProgress: progressChannel(onProgress) }),
    machineStop: (name) => call('machine_stop', { name }),
    machineDestroy: (name) => call('machine_destroy', { name }),
    machineSnapshot: (name, snapshot, onProgress) => call('machine_snapshot', { name, snapshot, onProgress: progressChannel(onProgress) }),
    machineHealth: (name) => call('machine_health', { name }),

    liveStart: (name, onFrame, onEvent, opts) => {
      const onEventCh = new Channel<Event>();
      onEventCh.onmessage = onEvent;
      detach(name); // the backend ends the old stream now: not a loss
      return call<LiveInfo & { frames: string; gpu?: boolean }>('live_start', { name, onEvent: onEventCh, maxFps: opts?.maxFps ?? null }).then(({ frames, gpu, ...info }) => {
        setGpu(gpu ?? null);
        openFrames(name, frames, onFrame, onEvent);
        return info;
      });
    },
    liveStop: (name) => {
      detach(name);
      return call('live_stop', { name });
    },
    liveKeyframe: (name) => call('live_keyframe', { name }),
    liveInput: (name, msg) => call('live_input', { name, msg }),
    displayInfo: (name) => call('display_info', { name }),
    control: (name, action) => call('control', { name, action }),
    events: (name, after) => call('events', { name, after }),

    sessionsList: () => call('sessions_list'),
    sessionsSync: (name) => call('sessions_sync', { name }),
    replayOpen: (sessionId) => call('replay_open', { sessionId }),
    replayEvents: (sessionId) => call('replay_events', { sessionId }),
    replayPlay: (sessionId, fromMs, speed, onFrame) =>
      call('replay_play', { sessionId, fromMs, speed, onFrame: frameChannel(onFrame) }),
    replayStop: (sessionId) => call('replay_stop', { sessionId }),
    exportEvidence: (sessionId, outDir, fromMs, toMs) =>
      call('export_evidence', { sessionId, outDir, fromMs: fromMs ?? null, toMs: toMs ?? null }),

    envCheck: (text, fileName) => call('env_check', { text, fileName }),
    envSchema: () => call('env_schema'),

    secretsList: () => call('secrets_list'),
    secretSet: (name, scope, value) => call('secret_set', { name, scope, value }),
    secretDelete: (name, scope) => call('secret_delete', { name, scope }),

    runsList: () => call('runs_list'),
    runStart: (req) => call('run_start', { req }),
    runStop: (id) => call('run_stop', { id }),
    runCollect: (id) => call('run_collect', { id }),

    appVersion: () => call('app_version'),
  };
}
