// The picture: the decoder's canvas, the action overlay on top, optional stats, and — while the
// viewer holds control — pointer, wheel and keyboard input mapped to stream pixels.

import { useEffect, useRef, useState } from 'react';
import type { Event, InputMessage } from '../backend/types';
import type { DecoderStats, StreamDecoder } from './decoder';
import { drawOverlay, overlayActive, type SessionClock } from './overlay';

export interface VideoSurfaceProps {
  decoder: StreamDecoder;
  /** Stream size in pixels, once known. */
  stream: { width: number; height: number } | null;
  clock: SessionClock;
  /** Events to draw over the picture, sorted by t_ms (read every animation frame). */
  overlayEvents?: () => Event[];
  showStats?: boolean;
  /** While true, input on the picture goes to `onInput`. */
  interactive?: boolean;
  onInput?: (msg: InputMessage) => void;
  /** Told the space available for the picture (CSS pixels, whole) on mount and when it changes. */
  onAreaResize?: (size: { width: number; height: number }) => void;
  /** Shown until the first frame is drawn. */
  placeholder?: string;
  className?: string;
  label?: string;
}

export function VideoSurface(props: VideoSurfaceProps) {
  const { decoder, stream, clock, overlayEvents, showStats, interactive, onInput, onAreaResize, placeholder, className, label } = props;
  const boxRef = useRef<HTMLDivElement>(null);
  const stageRef = useRef<HTMLDivElement>(null);
  const videoRef = useRef<HTMLCanvasElement>(null);
  const overlayRef = useRef<HTMLCanvasElement>(null);
  const [hasPicture, setHasPicture] = useState(false);
  const [stats, setStats] = useState<DecoderStats | null>(null);
  const [fit, setFit] = useState<{ w: number; h: number } | null>(null);
  const streamRef = useRef(stream);
  streamRef.current = stream;
  const eventsRef = useRef(overlayEvents);
  eventsRef.current = overlayEvents;
  const onInputRef = useRef(onInput);
  onInputRef.current = onInput;
  const onAreaRef = useRef(onAreaResize);
  onAreaRef.current = onAreaResize;

  // The decoder draws into our canvas.
  useEffect(() => {
    decoder.attach(videoRef.current);
    setHasPicture(false);
    const off = decoder.onDrawn(() => setHasPicture(true));
    return () => {
      off();
      decoder.attach(null);
    };
  }, [decoder]);

  // Before the first frame the canvas takes the stream's size, so the layout does not jump.
  useEffect(() => {
    const c = videoRef.current;
    if (c && stream && !hasPicture && (c.width !== stream.width || c.height !== stream.height)) {
      c.width = stream.width;
      c.height = stream.height;
    }
  }, [stream, hasPicture]);

  // Fit the stage (picture + overlay) into the box, keeping the stream's aspect ratio.
  useEffect(() => {
    const box = boxRef.current;
    if (!box) return;
    const measure = () => {
      if (onAreaRef.current) {
        // The box's content area, rounded down so a picture of that size fits without scaling.
        const r = box.getBoundingClientRect();
        const width = Math.floor(r.width - (box.offsetWidth - box.clientWidth));
        const height = Math.floor(r.height - (box.offsetHeight - box.clientHeight));
        if (width > 0 && height > 0) onAreaRef.current({ width, height });
      }
      const s = streamRef.current ?? { width: 1280, height: 800 };
      const bw = box.clientWidth;
      const bh = box.clientHeight;
      if (!bw || !bh) return;
      const k = Math.min(bw / s.width, bh / s.height);
      setFit({ w: Math.floor(s.width * k), h: Math.floor(s.height * k) });
    };
    measure();
    if (typeof ResizeObserver === 'undefined') return;
    const ro = new ResizeObserver(measure);
    ro.observe(box);
    return () => ro.disconnect();
  }, [stream?.width, stream?.height]);

  // Overlay: drawn on animation frames only while something on it is alive (an action younger
  // than OVERLAY_TTL_MS, fading out); a still screen with nothing happening draws nothing. It
  // wakes on each picture drawn and, for events that change no pixel, on a 100 ms check.
  useEffect(() => {
    const canvas = overlayRef.current;
    if (!canvas || !fit) return;
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(fit.w * dpr);
    canvas.height = Math.round(fit.h * dpr);
    const ctx = canvas.getContext('2d');
    if (!ctx) return;
    let raf = 0;
    let dirty = true;
    const tick = () => {
      raf = 0;
      const s = streamRef.current;
      const evs = eventsRef.current?.() ?? [];
      const now = clock.now();
      const live = s ? overlayActive(evs, now) : false;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      if (live && s) drawOverlay(ctx, evs, now, fit.w / s.width, { width: fit.w, height: fit.h });
      else if (dirty) ctx.clearRect(0, 0, fit.w, fit.h);
      dirty = live;
      if (live) raf = requestAnimationFrame(tick);
    };
    const wake = () => {
      if (raf) return;
      const s = streamRef.current;
      if (dirty || (s && overlayActive(eventsRef.current?.() ?? [], clock.now()))) raf = requestAnimationFrame(tick);
    };
    raf = requestAnimationFrame(tick);
    const off = decoder.onDrawn(wake);
    const id = window.setInterval(wake, 100);
    return () => {
      off();
      window.clearInterval(id);
      if (raf) cancelAnimationFrame(raf);
    };
  }, [fit, clock, decoder]);

  useEffect(() => {
    if (!showStats) return;
    setStats(decoder.stats());
    const id = window.setInterval(() => setStats(decoder.stats()), 500);
    return () => window.clearInterval(id);
  }, [showStats, decoder]);

  // Input while the viewer holds control.
  useEffect(() => {
    const stage = stageRef.current;
    if (!stage || !interactive) return;
    const send = (m: InputMessage) => onInputRef.current?.(m);
    const toStream = (clientX: number, clientY: number) => {
      const r = (videoRef.current ?? stage).getBoundingClientRect();
      const s = streamRef.current ?? { width: videoRef.current?.width ?? 1, height: videoRef.current?.height ?? 1 };
      const x = r.width ? ((clientX - r.left) * s.width) / r.width : 0;
      const y = r.height ? ((clientY - r.top) * s.height) / r.height : 0;
      return {
        x: Math.max(0, Math.min(s.width - 1, Math.round(x))),
        y: Math.max(0, Math.min(s.height - 1, Math.round(y))),
      };
    };
    let pendingMove: { x: number; y: number; buttons: number } | null = null;
    let raf = 0;
    const flushMove = () => {
      raf = 0;
      if (pendingMove) send({ type: 'pointer', ...pendingMove });
      pendingMove = null;
    };
    const onMove = (e: PointerEvent) => {
      pendingMove = { ...toStream(e.clientX, e.clientY), buttons: e.buttons };
      if (!raf) raf = requestAnimationFrame(flushMove);
    };
    const onButton = (e: PointerEvent) => {
      e.preventDefault();
      if (e.type === 'pointerdown') {
        stage.focus({ preventScroll: true });
        try {
          stage.setPointerCapture(e.pointerId);
        } catch {
          /* synthetic events have no active pointer */
        }
      }
      pendingMove = null;
      send({ type: 'pointer', ...toStream(e.clientX, e.clientY), buttons: e.buttons });
    };
    const onWheel = (e: WheelEvent) => {
      e.preventDefault();
      const k = e.deltaMode === 1 ? 33 : e.deltaMode === 2 ? 800 : 1;
      send({ type: 'wheel', dx: e.deltaX * k, dy: e.deltaY * k });
    };
    // Host → guest clipboard only on an explicit paste: Ctrl+V (or Cmd+V) in the picture reads
    // the host clipboard, sends it, then the keys, so the guest pastes what the user meant; a
    // paste command (menu, middle button where the webview maps it) sends its data. Never on
    // focus or takeover. Keys pressed while the clipboard is being read wait behind it.
    let pasting = false;
    const waiting: InputMessage[] = [];
    const sendKey = (m: InputMessage) => {
      if (pasting) waiting.push(m);
      else send(m);
    };
    const onKey = (e: KeyboardEvent) => {
      e.preventDefault();
      e.stopPropagation();
      if (e.repeat && e.type === 'keydown') return;
      const msg: InputMessage = { type: 'key', code: e.code, key: e.key, down: e.type === 'keydown' };
      if (msg.down && !pasting && (e.ctrlKey || e.metaKey) && !e.altKey && e.code === 'KeyV') {
        const read = navigator.clipboard?.readText?.();
        if (read) {
          pasting = true;
          read
            .then((text) => {
              if (text) send({ type: 'clipboard', text });
            })
            .catch(() => {})
            .finally(() => {
              pasting = false;
              send(msg);
              waiting.splice(0).forEach(send);
            });
          return;
        }
      }
      sendKey(msg);
    };
    const onPaste = (e: ClipboardEvent) => {
      const text = e.clipboardData?.getData('text/plain');
      e.preventDefault();
      if (text) send({ type: 'clipboard', text });
    };
    const noMenu = (e: MouseEvent) => e.preventDefault();
    stage.addEventListener('paste', onPaste);
    stage.addEventListener('pointermove', onMove);
    stage.addEventListener('pointerdown', onButton);
    stage.addEventListener('pointerup', onButton);
    stage.addEventListener('wheel', onWheel, { passive: false });
    stage.addEventListener('keydown', onKey);
    stage.addEventListener('keyup', onKey);
    stage.addEventListener('contextmenu', noMenu);
    stage.focus({ preventScroll: true });
    return () => {
      if (raf) cancelAnimationFrame(raf);
      stage.removeEventListener('pointermove', onMove);
      stage.removeEventListener('pointerdown', onButton);
      stage.removeEventListener('pointerup', onButton);
      stage.removeEventListener('wheel', onWheel);
      stage.removeEventListener('keydown', onKey);
      stage.removeEventListener('keyup', onKey);
      stage.removeEventListener('contextmenu', noMenu);
      stage.removeEventListener('paste', onPaste);
    };
  }, [interactive]);

  return (
    <div ref={boxRef} className={`video-box ${className ?? ''}`}>
      <div
        ref={stageRef}
        className={`video-stage${interactive ? ' interactive' : ''}`}
        style={fit ? { width: fit.w, height: fit.h } : undefined}
        tabIndex={interactive ? 0 : -1}
        aria-label={label ?? 'Remote desktop'}
        data-testid="video-stage"
      >
        <canvas ref={videoRef} className="video-canvas" data-testid="video-canvas" />
        <canvas ref={overlayRef} className="video-overlay" aria-hidden />
        {!hasPicture && <div className="video-placeholder">{placeholder ?? 'Waiting for the first keyframe…'}</div>}
        {showStats && stats && <StatsOverlay s={stats} />}
      </div>
    </div>
  );
}

function StatsOverlay({ s }: { s: DecoderStats }) {
  return (
    <div className="video-stats" data-testid="video-stats">
      <div>
        <b>{s.fps}</b> fps · {s.width}×{s.height} {s.codec ?? ''}
      </div>
      <div>
        frames {s.frames} · decoded {s.decoded} · dropped {s.dropped}
        {s.errors ? ` · errors ${s.errors}` : ''}
      </div>
      <div>
        latency ≈ {Math.round(s.decodeMs + s.jitterMs)} ms (decode {Math.round(s.decodeMs)}, queue {Math.round(s.jitterMs)})
      </div>
      {!s.supported && <div className="warn">WebCodecs unavailable: no picture</div>}
    </div>
  );
}
