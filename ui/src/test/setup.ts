// Test environment: jsdom has no canvas, no WebCodecs and no layout. Give it a no-op 2D
// context and a fake VideoDecoder so the real decoder module runs end to end.

import { cleanup, configure } from '@testing-library/react';
import { afterEach, beforeEach } from 'vitest';

// `findBy*`/`waitFor` give up after this (default 1 s, exceeded under a parallel cargo build).
configure({ asyncUtilTimeout: 10_000 });

function fake2d(canvas: HTMLCanvasElement): CanvasRenderingContext2D {
  const target: Record<string | symbol, unknown> = {
    canvas,
    measureText: (t: string) => ({ width: t.length * 7 }),
    createLinearGradient: () => ({ addColorStop() {} }),
    getImageData: () => ({ data: new Uint8ClampedArray(4) }),
  };
  return new Proxy(target, {
    get: (t, k) => (k in t ? t[k] : () => undefined),
    set: (t, k, v) => {
      t[k] = v;
      return true;
    },
  }) as unknown as CanvasRenderingContext2D;
}

HTMLCanvasElement.prototype.getContext = function (this: HTMLCanvasElement, kind: string) {
  // No WebGL here: the decoder falls back to its 2D path (renderer.test checks the shader's maths).
  if (kind !== '2d') return null;
  return fake2d(this);
} as unknown as HTMLCanvasElement['getContext'];

/** Decodes instantly: every chunk comes out as a 1280x800 frame; `failNext` raises an error. */
export class FakeVideoDecoder {
  static instances: FakeVideoDecoder[] = [];
  static failNext = false;
  state: 'unconfigured' | 'configured' | 'closed' = 'unconfigured';
  decodeQueueSize = 0;
  config: VideoDecoderConfig | null = null;
  chunks: { type: string; timestamp: number }[] = [];
  constructor(private init: VideoDecoderInit) {
    FakeVideoDecoder.instances.push(this);
  }
  configure(c: VideoDecoderConfig) {
    this.config = c;
    this.state = 'configured';
  }
  decode(chunk: { type: string; timestamp: number }) {
    if (this.state !== 'configured') throw new Error('not configured');
    this.chunks.push({ type: chunk.type, timestamp: chunk.timestamp });
    if (FakeVideoDecoder.failNext) {
      FakeVideoDecoder.failNext = false;
      this.state = 'closed';
      queueMicrotask(() => this.init.error(new DOMException('corrupt frame', 'EncodingError')));
      return;
    }
    const ts = chunk.timestamp;
    queueMicrotask(() => {
      if (this.state === 'closed') return;
      this.init.output({ timestamp: ts, displayWidth: 1280, displayHeight: 800, close() {} } as unknown as VideoFrame);
    });
  }
  reset() {
    this.state = 'unconfigured';
  }
  close() {
    this.state = 'closed';
  }
  async flush() {}
}

class FakeChunk {
  type: string;
  timestamp: number;
  constructor(init: { type: string; timestamp: number }) {
    this.type = init.type;
    this.timestamp = init.timestamp;
  }
}

Object.assign(globalThis, { VideoDecoder: FakeVideoDecoder, EncodedVideoChunk: FakeChunk });

if (!window.matchMedia) {
  window.matchMedia = ((q: string) => ({
    matches: false,
    media: q,
    onchange: null,
    addListener() {},
    removeListener() {},
    addEventListener() {},
    removeEventListener() {},
    dispatchEvent: () => false,
  })) as unknown as typeof window.matchMedia;
}

beforeEach(() => {
  localStorage.clear();
  FakeVideoDecoder.instances = [];
  FakeVideoDecoder.failNext = false;
});

afterEach(() => {
  cleanup();
});
