// The one video decoder of the UI, for live and replay alike: frames arrive as ArrayBuffers
// from the backend (16-byte header + one encoded frame), are decoded with WebCodecs and drawn
// to a canvas. The backend never re-encodes and nothing here does either.
//
// Frame message layout:
//   u8 flags (bit 0: keyframe), 3 bytes padding, u32 LE t_ms (session clock),
//   u32 LE RTP timestamp, u32 LE received (Unix ms, low 32 bits, when the app's Rust side had
//   the whole frame; 0 for replay), then one H.264 access unit (Annex-B) or VP8 frame.
//
// Drawing: decoded pictures are copied out (`VideoFrame.copyTo`) and painted by a WebGL2
// shader (renderer.ts), never `drawImage(VideoFrame)` where WebGL2 exists; one copy at a time,
// and a picture decoded while one is being painted replaces any other waiting (live: the
// newest wins, nothing queues behind a slow paint).

import type { Codec } from '../backend/types';
import { I420Renderer, i420Planes, nv12Planes, type Plane } from './renderer';

export const HEADER_BYTES = 16;
export const FLAG_KEY = 1;
/** Constrained baseline, level 3.1; no description, so the decoder reads Annex-B in-band. */
export const H264_CODEC = 'avc1.42E01F';
export const VP8_CODEC = 'vp8';

export interface FrameHeader {
  key: boolean;
  tMs: number;
  rtp: number;
  /** Unix ms (low 32 bits) the app received it; 0 if unknown. */
  rxMs?: number;
}

export interface ParsedFrame extends FrameHeader {
  data: Uint8Array;
}

export function parseFrame(buf: ArrayBuffer): ParsedFrame | null {
  if (!(buf instanceof ArrayBuffer) || buf.byteLength <= HEADER_BYTES) return null;
  const v = new DataView(buf);
  return {
    key: (v.getUint8(0) & FLAG_KEY) !== 0,
    tMs: v.getUint32(4, true),
    rtp: v.getUint32(8, true),
    rxMs: v.getUint32(12, true),
    data: new Uint8Array(buf, HEADER_BYTES),
  };
}

export function buildFrame(h: FrameHeader, data: Uint8Array): ArrayBuffer {
  const out = new ArrayBuffer(HEADER_BYTES + data.byteLength);
  const v = new DataView(out);
  v.setUint8(0, h.key ? FLAG_KEY : 0);
  v.setUint32(4, h.tMs >>> 0, true);
  v.setUint32(8, h.rtp >>> 0, true);
  v.setUint32(12, (h.rxMs ?? 0) >>> 0, true);
  new Uint8Array(out, HEADER_BYTES).set(data);
  return out;
}

/** Tells VP8 from H.264 by a keyframe's first bytes (a VP8 keyframe has 9d 01 2a at offset 3). */
export function sniffCodec(key: Uint8Array): Codec | null {
  if (key.length >= 6 && key[3] === 0x9d && key[4] === 0x01 && key[5] === 0x2a) return 'VP8';
  if (key.length >= 4 && key[0] === 0 && key[1] === 0 && (key[2] === 1 || (key[2] === 0 && key[3] === 1))) return 'H264';
  return null;
}

/**
 * What a keyframe says about the picture format: the H.264 sequence parameter set (size,
 * profile), or the VP8 frame size. A keyframe with another format (the guest screen was resized)
 * gets a fresh decoder.
 */
export function streamFormat(key: Uint8Array, codec: Codec): string | null {
  if (codec === 'VP8') return key.length >= 10 && key[3] === 0x9d ? `vp8 ${key[6]} ${key[7]} ${key[8]} ${key[9]}` : null;
  const n = key.length;
  const startCode = (i: number) => key[i] === 0 && key[i + 1] === 0 && (key[i + 2] === 1 || (key[i + 2] === 0 && key[i + 3] === 1));
  for (let i = 0; i + 3 < n; ) {
    if (!(key[i] === 0 && key[i + 1] === 0 && key[i + 2] === 1)) {
      i++;
      continue;
    }
    const start = i + 3;
    let end = start;
    while (end + 2 < n && !startCode(end)) end++;
    if (end + 2 >= n) end = n;
    if ((key[start] & 0x1f) === 7) return `sps ${Array.from(key.subarray(start, end)).join(' ')}`;
    i = end;
  }
  return null;
}

export function webCodecsAvailable(): boolean {
  return typeof globalThis.VideoDecoder === 'function' && typeof globalThis.EncodedVideoChunk === 'function';
}

export interface DecoderStats {
  /** Frames drawn in the last second. */
  fps: number;
  /** Frames received. */
  frames: number;
  decoded: number;
  /** Frames dropped while waiting for a keyframe (after an error, a seek or a backlog). */
  dropped: number;
  /** Decoded pictures not painted: a newer one was ready before the paint began. */
  skipped: number;
  /** How pictures reach the canvas: 'webgl' (copyTo + shader) or '2d' (drawImage). */
  renderer: 'webgl' | '2d' | null;
  errors: number;
  width: number;
  height: number;
  /** Receive → drawn, smoothed. */
  decodeMs: number;
  /** Arrival delay above the best seen so far (network + backend queueing), smoothed. */
  jitterMs: number;
  codec: Codec | null;
  supported: boolean;
  lastError: string | null;
}

export interface DrawnFrame {
  tMs: number;
  width: number;
  height: number;
}

const MAX_QUEUE = 24;

/**
 * WebGL2 only where it runs on a GPU. On a software rasterizer (llvmpipe: VMs, CI, no GPU) the
 * texture uploads and the draw cost more than drawImage: measured here, one busy live view
 * 14 fps with decode p50 406 ms behind two llvmpipe threads at 75% of a core, against 30 fps,
 * decode 6 ms and no llvmpipe at all through the 2D canvas (DMA-BUF renderer off, see
 * src-tauri). WebKit hides the GL renderer's name from pages ("Apple GPU"), so the backend
 * says (`setGpu`, from `live_start`); without word, WebGL2. `localStorage['porthole.renderer']`
 * = '2d' or 'webgl' overrides (to compare).
 */
let gpuHint: boolean | null = null;

export function setGpu(gpu: boolean | null): void {
  gpuHint = gpu;
}

export function useWebGL(): boolean {
  let forced: string | null = null;
  try {
    forced = globalThis.localStorage?.getItem('porthole.renderer') ?? null;
  } catch {
    forced = null;
  }
  if (forced === '2d') return false;
  if (forced === 'webgl') return true;
  return gpuHint !== false;
}

/**
 * Per-frame times for `tests/bench/app.mjs` (Unix ms): captured in the guest (session clock
 * `tMs`), received by the app's Rust side, handed to the page, given to `decode()`, out of the
 * decoder, painted. Kept only while `window.__portholeTiming` is an array (the bench sets it).
 */
export interface FrameTiming {
  name: string;
  tMs: number;
  rxMs: number;
  pageMs: number;
  decodeMs: number;
  outputMs: number;
  drawnMs: number;
  /** The next animation frame after the draw (≈ on screen); 0 until then. */
  paintedMs: number;
  renderer: 'webgl' | '2d';
}

declare global {
  interface Window {
    __portholeTiming?: FrameTiming[];
  }
}

interface Meta {
  tMs: number;
  arrived: number;
  rxMs: number;
  decodeAt: number;
}

export class StreamDecoder {
  private canvas: HTMLCanvasElement | null = null;
  private ctx: CanvasRenderingContext2D | null = null;
  private gl: I420Renderer | null = null;
  private painting = false;
  private waiting: { frame: VideoFrame; meta: Meta | undefined; outAt: number } | null = null;
  private copyBuf: Uint8Array | null = null;
  private dec: VideoDecoder | null = null;
  private waitKey = true;
  private codec: Codec | null = null;
  /** The current decoder's picture format (see `streamFormat`). */
  private format: string | null = null;
  private nextTs = 1;
  private pending = new Map<number, Meta>();
  private drawnAt: number[] = [];
  private minOffset = Infinity;
  private s = { frames: 0, decoded: 0, dropped: 0, skipped: 0, errors: 0, width: 0, height: 0, decodeMs: 0, jitterMs: 0 };
  private lastError: string | null = null;
  private listeners = new Set<(f: DrawnFrame) => void>();
  private closed = false;
  /** Session time up to which a seek's burst is decoded in full (see `restart`). */
  private keepUntil: number | null = null;

  /** Called when the decoder restarts and waits for a keyframe (ask the source for one). */
  onNeedKeyframe: (() => void) | null = null;
  /** The machine or session this stream shows (for the bench's timings). */
  label = '';

  constructor(private codecHint: Codec = 'H264') {}

  /**
   * Draw onto this canvas from now on (its size follows the stream): WebGL2 where the canvas
   * can have it, else its 2D context (a canvas keeps the first kind it was asked for).
   */
  attach(canvas: HTMLCanvasElement | null): void {
    if (canvas !== this.canvas) {
      this.gl = null;
      this.ctx = null;
    }
    this.canvas = canvas;
  }

  /** The canvas's context, chosen at its first picture (when the backend has said `setGpu`). */
  private ensureRenderer(): void {
    const canvas = this.canvas;
    if (!canvas || this.gl || this.ctx) return;
    // A canvas keeps the first kind of context it was asked for: reuse the one it has.
    if (canvas.dataset.renderer !== '2d') this.gl = webCodecsAvailable() && useWebGL() ? I420Renderer.create(canvas) : null;
    if (!this.gl) this.ctx = canvas.getContext('2d', { alpha: false });
    // For the end-to-end tests, which read the picture back at known pixels (and must not
    // ask a canvas for a 2D context before we chose: that would rule out WebGL for good).
    const gl = this.gl;
    canvas.dataset.renderer = gl ? 'webgl' : '2d';
    (canvas as HTMLCanvasElement & { __portholeRead?: unknown }).__portholeRead = gl ? (points: [number, number][]) => gl.read(points) : undefined;
  }

  setCodecHint(c: Codec): void {
    this.codecHint = c;
  }

  /** Called with the session time of each frame as it is drawn. */
  onDrawn(fn: (f: DrawnFrame) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  push(buf: ArrayBuffer): void {
    if (this.closed) return;
    const f = parseFrame(buf);
    if (!f) return;
    const now = performance.now();
    this.s.frames++;
    const offset = now - f.tMs;
    this.minOffset = Math.min(this.minOffset, offset);
    this.s.jitterMs = smooth(this.s.jitterMs, offset - this.minOffset);

    if (this.dec && this.keepUntil === null && this.dec.decodeQueueSize > MAX_QUEUE) {
      // Falling behind: drop the backlog and start again at the next keyframe.
      this.restart();
    }
    if (f.key && this.dec && this.codec && this.format) {
      const format = streamFormat(f.data, this.codec);
      // A new size mid-stream (the guest screen was resized): start a decoder for it here.
      if (format && format !== this.format) this.dropDecoder();
    }
    if (this.waitKey) {
      if (!f.key) {
        this.s.dropped++;
        return;
      }
      if (!this.configure(f)) {
        this.s.dropped++;
        return;
      }
    }
    const ts = this.nextTs++;
    if (!this.dec) {
      // No WebCodecs (tests, old engines): keep the clock and counters going without a picture.
      this.emit({ tMs: f.tMs, width: this.s.width, height: this.s.height }, now);
      return;
    }
    this.pending.set(ts, { tMs: f.tMs, arrived: now, rxMs: f.rxMs ?? 0, decodeAt: performance.now() });
    try {
      this.dec.decode(new EncodedVideoChunk({ type: f.key ? 'key' : 'delta', timestamp: ts, data: f.data }));
    } catch (e) {
      this.fail(e);
    }
  }

  /**
   * Forget everything queued and wait for the next keyframe (seek, new stream). A seek passes
   * its target: the frames from the keyframe before it up to the target arrive in one burst
   * (up to a keyframe interval of them) and are all decoded, however long the queue grows,
   * until a frame at the target is drawn; only then does falling behind drop the backlog again.
   */
  restart(keepUntilMs: number | null = null): void {
    this.keepUntil = keepUntilMs;
    this.dropDecoder();
  }

  private dropDecoder(): void {
    if (this.dec && this.dec.state !== 'closed') {
      try {
        this.dec.close();
      } catch {
        /* already closed */
      }
    }
    this.dec = null;
    this.pending.clear();
    if (this.waiting) {
      this.waiting.frame.close();
      this.waiting = null;
    }
    if (!this.waitKey && !this.closed) this.onNeedKeyframe?.();
    this.waitKey = true;
  }

  stats(): DecoderStats {
    const now = performance.now();
    while (this.drawnAt.length && now - this.drawnAt[0] > 1000) this.drawnAt.shift();
    return {
      ...this.s,
      fps: this.drawnAt.length,
      codec: this.codec,
      renderer: this.gl ? 'webgl' : this.ctx ? '2d' : null,
      supported: webCodecsAvailable(),
      lastError: this.lastError,
    };
  }

  close(): void {
    this.restart();
    this.closed = true;
    this.listeners.clear();
  }

  private configure(f: ParsedFrame): boolean {
    const codec = sniffCodec(f.data) ?? this.codecHint;
    this.codec = codec;
    this.format = streamFormat(f.data, codec);
    if (!webCodecsAvailable()) {
      this.waitKey = false;
      return true;
    }
    try {
      const dec = new VideoDecoder({
        output: (frame) => this.output(dec, frame),
        error: (e) => this.fail(e, dec),
      });
      dec.configure({ codec: codec === 'VP8' ? VP8_CODEC : H264_CODEC, optimizeForLatency: true });
      this.dec = dec;
      this.waitKey = false;
      return true;
    } catch (e) {
      this.fail(e);
      return false;
    }
  }

  private output(from: VideoDecoder, frame: VideoFrame): void {
    const meta = this.pending.get(frame.timestamp);
    this.pending.delete(frame.timestamp);
    if (from !== this.dec || this.closed) {
      frame.close();
      return;
    }
    const outAt = performance.now();
    this.ensureRenderer();
    if (this.gl) {
      if (this.painting) {
        // A paint is in flight: this picture waits, replacing any older one waiting.
        if (this.waiting) {
          this.waiting.frame.close();
          this.s.skipped++;
        }
        this.waiting = { frame, meta, outAt };
        return;
      }
      void this.paintGl(frame, meta, outAt);
      return;
    }
    const w = frame.displayWidth;
    const h = frame.displayHeight;
    const c = this.canvas;
    if (c && this.ctx) {
      if (c.width !== w || c.height !== h) {
        c.width = w;
        c.height = h;
      }
      this.ctx.drawImage(frame, 0, 0, w, h);
    }
    frame.close();
    this.drawn(meta, w, h, outAt, '2d');
  }

  /** copyTo, upload, draw; then the picture that waited meanwhile, if any. */
  private async paintGl(frame: VideoFrame, meta: Meta | undefined, outAt: number): Promise<void> {
    this.painting = true;
    const w = frame.displayWidth;
    const h = frame.displayHeight;
    try {
      const gl = this.gl!;
      const fmt = frame.format;
      const rect = { x: 0, y: 0, width: w, height: h };
      if (fmt === 'I420' || fmt === 'NV12') {
        const size = frame.allocationSize({ rect });
        if (!this.copyBuf || this.copyBuf.byteLength < size) this.copyBuf = new Uint8Array(size);
        const layout = await frame.copyTo(this.copyBuf, { rect });
        const planes: Plane[] | null = fmt === 'I420' ? i420Planes(layout, w, h) : nv12Planes(layout, w, h);
        if (this.gl === gl && planes && !this.closed) gl.draw(this.copyBuf, planes, w, h);
      } else if (!this.closed) {
        gl.drawFrame(frame);
      }
    } catch (e) {
      frame.close();
      this.painting = false;
      this.fail(e);
      return;
    }
    frame.close();
    this.painting = false;
    this.drawn(meta, w, h, outAt, 'webgl');
    const next = this.waiting;
    this.waiting = null;
    if (next && !this.closed) void this.paintGl(next.frame, next.meta, next.outAt);
  }

  private drawn(meta: Meta | undefined, w: number, h: number, outAt: number, renderer: 'webgl' | '2d'): void {
    if (this.keepUntil !== null && meta && meta.tMs + 1 >= this.keepUntil) this.keepUntil = null;
    this.s.decoded++;
    const now = performance.now();
    if (meta) this.s.decodeMs = smooth(this.s.decodeMs, now - meta.arrived);
    const log = typeof window !== 'undefined' ? window.__portholeTiming : undefined;
    if (log && meta && log.length < 100_000) {
      const base = performance.timeOrigin;
      const rec: FrameTiming = { name: this.label, tMs: meta.tMs, rxMs: meta.rxMs, pageMs: base + meta.arrived, decodeMs: base + meta.decodeAt, outputMs: base + outAt, drawnMs: base + now, paintedMs: 0, renderer };
      log.push(rec);
      requestAnimationFrame(() => (rec.paintedMs = performance.timeOrigin + performance.now()));
    }
    this.emit({ tMs: meta?.tMs ?? 0, width: w, height: h }, now);
  }

  private emit(f: DrawnFrame, now: number): void {
    this.s.width = f.width;
    this.s.height = f.height;
    this.drawnAt.push(now);
    if (this.drawnAt.length > 240) this.drawnAt.shift();
    for (const l of this.listeners) l(f);
  }

  private fail(e: unknown, from?: VideoDecoder): void {
    if (from && from !== this.dec) return;
    this.s.errors++;
    this.lastError = e instanceof Error ? e.message : String(e);
    this.restart();
  }
}

function smooth(prev: number, next: number): number {
  return prev === 0 ? next : prev * 0.9 + next * 0.1;
}
