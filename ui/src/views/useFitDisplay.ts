// "Fit to window" during a takeover: the guest screen takes the size of the space the picture
// has, right away and again whenever that space changes. Opt-in and remembered; only the viewer
// holding control may resize, and the agent puts the old size back when control returns.

import { useCallback, useEffect, useRef, useState } from 'react';
import { backend, type DisplayState } from '../backend';
import { useToast } from '../components/Toasts';
import { errorMessage } from '../lib/errors';
import type { LiveSession } from './useLive';

export const FIT_KEY = 'porthole.fitToWindow';
/** Area changes this small (in both directions) after a resize are not sent. */
export const FIT_SLACK_PX = 4;
/** A resize waits this long for the window to settle. */
export const FIT_DEBOUNCE_MS = 300;
/** The sizes the agent accepts. */
const MIN = { width: 320, height: 240 };
const MAX = { width: 3840, height: 2160 };

type Size = { width: number; height: number };

export interface FitDisplay {
  /** Whether to offer the toggle at all: only while this viewer holds control. */
  offered: boolean;
  on: boolean;
  /** Whether the machine's screen can change size; null until known. */
  resizable: boolean | null;
  /** Why it cannot. */
  reason: string | null;
  /** Whether the screen is following the picture's space now (on, in control, resizable): the
   * picture may then take all the room it has instead of keeping the screen's shape. */
  active: boolean;
  setOn: (on: boolean) => void;
  /** The space available for the picture, from the video surface. */
  onArea: (size: Size) => void;
}

function savedChoice(): boolean {
  try {
    return localStorage.getItem(FIT_KEY) === 'on';
  } catch {
    return false;
  }
}

const clamp = (v: number, lo: number, hi: number) => Math.max(lo, Math.min(hi, v));

export function useFitDisplay(name: string | null, live: LiveSession): FitDisplay {
  const toast = useToast();
  const human = live.control.holder === 'human';
  const [on, setOnState] = useState(savedChoice);
  const [display, setDisplay] = useState<DisplayState | null>(null);
  const area = useRef<Size | null>(null);
  const sent = useRef<Size | null>(null);
  const timer = useRef<number | null>(null);
  const active = !!name && human && on && display?.resizable === true;
  const activeRef = useRef(active);
  activeRef.current = active;

  const send = useCallback(
    (size: Size) => {
      if (!name) return;
      const width = clamp(size.width, MIN.width, MAX.width);
      const height = clamp(size.height, MIN.height, MAX.height);
      // A few pixels either way are not worth a new screen (and a new recording part): the
      // picture's box can shift by a border's width once frames of the new size arrive.
      const s = sent.current;
      if (s && Math.abs(s.width - width) <= FIT_SLACK_PX && Math.abs(s.height - height) <= FIT_SLACK_PX) return;
      sent.current = { width, height };
      backend.liveInput(name, { type: 'display', width, height }).catch((e) => toast.error(errorMessage(e)));
    },
    [name, toast],
  );

  // What the screen can do, asked at each takeover (the answer's size is the one to go back to).
  useEffect(() => {
    setDisplay(null);
    sent.current = null;
    if (!name || !human) return;
    let alive = true;
    backend.displayInfo(name).then(
      (d) => alive && setDisplay(d),
      (e) => alive && setDisplay({ width: 0, height: 0, resizable: false, reason: `This machine's agent cannot resize its screen: ${errorMessage(e)}` }),
    );
    return () => {
      alive = false;
    };
  }, [name, human]);

  // Turned on, or control taken with it on: the size at once, once the layout has settled (the
  // picture may just have been given more room, which the surface reports within a frame).
  useEffect(() => {
    if (!active) return;
    let frame = requestAnimationFrame(() => {
      frame = requestAnimationFrame(() => {
        if (activeRef.current && area.current) send(area.current);
      });
    });
    return () => cancelAnimationFrame(frame);
  }, [active, send]);

  const onArea = useCallback(
    (size: Size) => {
      area.current = size;
      if (timer.current !== null) window.clearTimeout(timer.current);
      timer.current = window.setTimeout(() => {
        timer.current = null;
        if (activeRef.current && area.current) send(area.current);
      }, FIT_DEBOUNCE_MS);
    },
    [send],
  );

  useEffect(
    () => () => {
      if (timer.current !== null) window.clearTimeout(timer.current);
    },
    [],
  );

  const setOn = useCallback(
    (next: boolean) => {
      setOnState(next);
      try {
        localStorage.setItem(FIT_KEY, next ? 'on' : 'off');
      } catch {
        /* private mode: remembered for this session only */
      }
      // Turned off while fitted: back to the screen's own size.
      if (!next && name && sent.current && display?.resizable && display.width && display.height) {
        sent.current = null;
        backend.liveInput(name, { type: 'display', width: display.width, height: display.height }).catch((e) => toast.error(errorMessage(e)));
      }
    },
    [name, display, toast],
  );

  // A resize the agent could not make.
  useEffect(() => {
    const e = live.displayError;
    if (e) toast.error(`Fit to window: ${String(e.data?.message ?? 'the screen could not be resized')}`);
  }, [live.displayError, toast]);

  return {
    offered: !!name && human,
    on,
    resizable: display ? display.resizable : null,
    reason: display?.resizable === false ? (display.reason ?? "This machine's screen has a fixed size") : null,
    active,
    setOn,
    onArea,
  };
}
