// One machine's live session: the stream (frames → decoder), its events (history + live), the
// terminals built from `terminal` events, and the control state.

import { useCallback, useEffect, useRef, useState } from 'react';
import { backend, type ControlAction, type ControlState, type Event, type InputMessage, type LiveInfo } from '../backend';
import { errorMessage } from '../lib/errors';
import { StreamDecoder } from '../video/decoder';
import { isOverlayEvent, SessionClock } from '../video/overlay';

// Live start/stop for one machine run in the order they were asked for, so a quick
// stop-then-start (switching views, React's dev double mount) never stops the newer stream.
const queues = new Map<string, Promise<unknown>>();
function serial<T>(name: string, op: () => Promise<T>): Promise<T> {
  const prev = queues.get(name) ?? Promise.resolve();
  const next = prev.then(op, op);
  queues.set(
    name,
    next.catch(() => undefined),
  );
  return next;
}

export interface LiveSession {
  decoder: StreamDecoder | null;
  clock: SessionClock | null;
  info: LiveInfo | null;
  /** The guest screen's size (pointer coordinates are in it): follows `display` events. */
  screen: { width: number; height: number } | null;
  /** The latest failed resize of the guest screen since connecting (an `error` event about `display`). */
  displayError: Event | null;
  error: string | null;
  events: Event[];
  overlayEvents: () => Event[];
  terminals: Map<string, string[]>;
  control: ControlState;
  /** The latest `stalled` event not followed by agent activity. */
  stalled: Event | null;
  /** The link to the machine dropped; the view is connecting again on its own. */
  reconnecting: boolean;
  sendControl: (action: ControlAction) => Promise<ControlState>;
  /** One viewer message to the machine (e.g. the host clipboard, on the user's explicit ask). */
  sendInput: (msg: InputMessage) => Promise<void>;
}

const DEFAULT_CONTROL: ControlState = { holder: 'agent', agent_paused: false, since_t_ms: 0 };

export function useLive(name: string | null, maxFps?: number): LiveSession {
  const [pipe, setPipe] = useState<{ decoder: StreamDecoder; clock: SessionClock } | null>(null);
  const [info, setInfo] = useState<LiveInfo | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [events, setEvents] = useState<Event[]>([]);
  const [terminals, setTerminals] = useState<Map<string, string[]>>(new Map());
  const [control, setControl] = useState<ControlState>(DEFAULT_CONTROL);
  const [stalled, setStalled] = useState<Event | null>(null);
  const [reconnecting, setReconnecting] = useState(false);
  const [screen, setScreen] = useState<{ width: number; height: number } | null>(null);
  const [displayError, setDisplayError] = useState<Event | null>(null);
  const overlayRef = useRef<Event[]>([]);

  useEffect(() => {
    if (!name) return;
    const decoder = new StreamDecoder();
    decoder.label = name;
    // A restarted decoder waits for a keyframe: ask for one now, not at the next periodic one.
    decoder.onNeedKeyframe = () => void backend.liveKeyframe(name).catch(() => {});
    const clock = new SessionClock();
    setPipe({ decoder, clock });
    setInfo(null);
    setError(null);
    setEvents([]);
    setTerminals(new Map());
    setControl(DEFAULT_CONTROL);
    setStalled(null);
    setReconnecting(false);
    setScreen(null);
    setDisplayError(null);
    overlayRef.current = [];

    let alive = true;
    const all: Event[] = [];
    const seen = new Set<number>();
    const terms = new Map<string, string[]>();
    const changed = new Set<string>();
    let published = new Map<string, string[]>();
    let lastStall: Event | null = null;
    let flushTimer: number | null = null;
    // The screen size: from the stream's info, then the latest `display` event, then (full-rate
    // streams carry the whole screen) the size of the pictures themselves.
    let sized = false;
    let lastDisplay = -1;
    let drawn = { width: 0, height: 0 };
    const resize = (width: number, height: number) =>
      setScreen((s) => (s && s.width === width && s.height === height ? s : { width, height }));

    const flush = () => {
      flushTimer = null;
      if (!alive) return;
      setEvents(all.slice());
      if (changed.size) {
        const next = new Map(published);
        for (const n of changed) next.set(n, terms.get(n)!.slice());
        changed.clear();
        published = next;
        setTerminals(next);
      }
      setStalled(lastStall);
    };

    const add = (e: Event) => {
      if (e.seq === 0 && e.kind === 'clipboard') {
        // Guest → host clipboard while we hold control (not a timeline entry).
        if (typeof e.data?.text === 'string') navigator.clipboard?.writeText(e.data.text).catch(() => {});
        return;
      }
      if (seen.has(e.seq)) return;
      seen.add(e.seq);
      if (all.length && e.t_ms < all[all.length - 1].t_ms) {
        all.push(e);
        all.sort((a, b) => a.t_ms - b.t_ms || a.seq - b.seq);
      } else all.push(e);
      clock.observe(e.t_ms);
      if (isOverlayEvent(e)) {
        const o = overlayRef.current;
        o.push(e);
        if (o.length > 1 && e.t_ms < o[o.length - 2].t_ms) o.sort((a, b) => a.t_ms - b.t_ms);
        if (o.length > 200) o.splice(0, o.length - 200);
      }
      if (e.kind === 'terminal' && typeof e.data?.name === 'string') {
        const n = e.data.name as string;
        if (!terms.has(n)) terms.set(n, []);
        terms.get(n)!.push(String(e.data.text ?? ''));
        changed.add(n);
      }
      if (e.kind === 'control' && e.data?.state?.holder) setControl(e.data.state as ControlState);
      if (e.kind === 'display' && typeof e.data?.width === 'number' && typeof e.data?.height === 'number' && e.t_ms >= lastDisplay) {
        lastDisplay = e.t_ms;
        sized = true;
        resize(e.data.width, e.data.height);
      }
      if (e.kind === 'stalled') lastStall = e;
      else if (lastStall && e.actor === 'agent' && e.t_ms > lastStall.t_ms) lastStall = null;
      if (flushTimer === null) flushTimer = window.setTimeout(flush, 200);
    };

    // Reconnecting: the peer connection failed (link cut, agent gone); start the stream again
    // every second until it comes back. The first picture drawn after that ends it.
    let lost = false;
    let retryTimer: number | null = null;
    const offDrawn = decoder.onDrawn((f) => {
      if (lost) {
        lost = false;
        setReconnecting(false);
      }
      clock.observe(f.tMs);
      if (!maxFps && f.width > 0 && f.height > 0 && (f.width !== drawn.width || f.height !== drawn.height)) {
        drawn = { width: f.width, height: f.height };
        sized = true;
        resize(f.width, f.height);
      }
    });

    // Live events only (not history): a failed resize is news, an old one is not.
    const onLive = (e: Event) => {
      if (e.seq === 0 && e.kind === 'link') {
        const st = e.data?.state;
        if (st === 'disconnected' || st === 'failed') {
          if (!lost) {
            lost = true;
            setReconnecting(true);
          }
          if (st === 'failed' && retryTimer === null) retryTimer = window.setTimeout(retry, 250);
        }
        return;
      }
      add(e);
      if (e.kind === 'error' && e.data?.input === 'display' && alive) setDisplayError(e);
    };

    const start = () => serial(name, () => backend.liveStart(name, (buf) => decoder.push(buf), onLive, maxFps ? { maxFps } : undefined));
    const retry = () => {
      retryTimer = null;
      if (!alive || !lost) return;
      decoder.restart();
      start().then(
        (i) => alive && setInfo(i),
        () => {
          if (alive && lost) retryTimer = window.setTimeout(retry, 1000);
        },
      );
    };
    start().then(
      (i) => {
        if (!alive) return;
        setInfo(i);
        decoder.setCodecHint(i.codec);
        if (!sized) resize(i.width, i.height);
      },
      (e) => alive && setError(errorMessage(e)),
    );

    // History before we connected, page by page.
    void (async () => {
      let after = 0;
      for (let page = 0; page < 50 && alive; page++) {
        try {
          const r = await backend.events(name, after);
          r.events.forEach(add);
          if (!r.events.length || r.next <= after) break;
          after = r.next;
        } catch {
          break;
        }
      }
    })();

    return () => {
      alive = false;
      offDrawn();
      if (retryTimer !== null) window.clearTimeout(retryTimer);
      if (flushTimer !== null) window.clearTimeout(flushTimer);
      decoder.close();
      void serial(name, () => backend.liveStop(name)).catch(() => undefined);
    };
  }, [name, maxFps]);

  const overlayEvents = useCallback(() => overlayRef.current, []);

  const sendControl = useCallback(
    async (action: ControlAction) => {
      if (!name) throw { code: 'invalid', message: 'no machine' };
      const s = await backend.control(name, action);
      setControl(s);
      return s;
    },
    [name],
  );

  const sendInput = useCallback(
    async (msg: InputMessage) => {
      if (!name) throw { code: 'invalid', message: 'no machine' };
      await backend.liveInput(name, msg);
    },
    [name],
  );

  return { decoder: pipe?.decoder ?? null, clock: pipe?.clock ?? null, info, screen, displayError, error, events, overlayEvents, terminals, control, stalled, reconnecting, sendControl, sendInput };
}
