// Synthetic video for the mock backend: the mock desktop drawn on a canvas and encoded with
// WebCodecs' VideoEncoder (H.264 Annex-B where the browser has an encoder, else VP8), wrapped
// in the same 16-byte frame header the real backend sends. Without an encoder (jsdom) it can
// send placeholder frames that only exercise the header path.

import type { Codec, FrameSink } from '../types';
import { buildFrame, H264_CODEC, VP8_CODEC } from '../../video/decoder';

export type FrameMode = 'encode' | 'fake' | 'none';

let codecProbe: Promise<Codec | null> | null = null;

/** The codec the mock can encode here, or null when there is no VideoEncoder. */
export function mockCodec(width: number, height: number): Promise<Codec | null> {
  if (!codecProbe) {
    codecProbe = (async () => {
      if (typeof VideoEncoder === 'undefined') return null;
      const base = { width, height, bitrate: 1_500_000, framerate: 15, latencyMode: 'realtime' as const };
      try {
        const h = await VideoEncoder.isConfigSupported({ ...base, codec: H264_CODEC, avc: { format: 'annexb' } });
        if (h.supported) return 'H264';
      } catch {
        /* not supported */
      }
      try {
        const v = await VideoEncoder.isConfigSupported({ ...base, codec: VP8_CODEC });
        if (v.supported) return 'VP8';
      } catch {
        /* not supported */
      }
      return null;
    })();
  }
  return codecProbe;
}

type Render = (ctx: OffscreenCanvasRenderingContext2D | CanvasRenderingContext2D, tMs: number) => void;

export interface FrameSourceOptions {
  width: number;
  height: number;
  codec: Codec | null;
  fps: number;
  mode: FrameMode;
  render: Render;
  onFrame: FrameSink;
}

/** Encodes pictures of the scene at given session times into frame messages. */
export class FrameSource {
  private enc: VideoEncoder | null = null;
  private canvas: OffscreenCanvas | HTMLCanvasElement | null = null;
  private ctx: OffscreenCanvasRenderingContext2D | CanvasRenderingContext2D | null = null;
  private lastKey = -Infinity;
  private forceKey = true;
  private closed = false;

  constructor(private o: FrameSourceOptions) {
    if (o.mode !== 'encode' || !o.codec || typeof VideoEncoder === 'undefined') return;
    this.canvas = typeof OffscreenCanvas !== 'undefined' ? new OffscreenCanvas(o.width, o.height) : Object.assign(document.createElement('canvas'), { width: o.width, height: o.height });
    this.ctx = this.canvas.getContext('2d') as OffscreenCanvasRenderingContext2D | CanvasRenderingContext2D | null;
    const enc = new VideoEncoder({
      output: (chunk) => {
        if (this.closed) return;
        const data = new Uint8Array(chunk.byteLength);
        chunk.copyTo(data);
        const tMs = Math.round(chunk.timestamp / 1000);
        o.onFrame(buildFrame({ key: chunk.type === 'key', tMs, rtp: (tMs * 90) >>> 0 }, data));
      },
      error: () => {
        this.enc = null;
      },
    });
    enc.configure({
      codec: o.codec === 'H264' ? H264_CODEC : VP8_CODEC,
      width: o.width,
      height: o.height,
      bitrate: 1_500_000,
      framerate: o.fps,
      latencyMode: 'realtime',
      ...(o.codec === 'H264' ? { avc: { format: 'annexb' as const } } : {}),
    });
    this.enc = enc;
  }

  /** Whether frames right now would be dropped (the encoder is behind). */
  busy(): boolean {
    return !!this.enc && this.enc.encodeQueueSize > 2;
  }

  encode(tMs: number): void {
    if (this.closed || this.o.mode === 'none') return;
    const key = this.forceKey || tMs - this.lastKey >= 2000;
    if (key) {
      this.lastKey = tMs;
      this.forceKey = false;
    }
    if (!this.enc || !this.ctx || !this.canvas) {
      const payload = key ? [0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0, 0, 0, 1, 0x65, 0x88] : [0, 0, 0, 1, 0x41, 0x9a];
      this.o.onFrame(buildFrame({ key, tMs, rtp: (tMs * 90) >>> 0 }, new Uint8Array(payload)));
      return;
    }
    this.o.render(this.ctx, tMs);
    const frame = new VideoFrame(this.canvas, { timestamp: tMs * 1000 });
    try {
      this.enc.encode(frame, { keyFrame: key });
    } finally {
      frame.close();
    }
  }

  /** The next frame will be a keyframe (a new viewer, a seek). */
  requestKey(): void {
    this.forceKey = true;
  }

  close(): void {
    this.closed = true;
    if (this.enc && this.enc.state !== 'closed') {
      try {
        this.enc.close();
      } catch {
        /* already closed */
      }
    }
    this.enc = null;
  }
}
