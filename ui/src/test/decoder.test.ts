import { describe, expect, it } from 'vitest';
import { buildFrame, H264_CODEC, HEADER_BYTES, parseFrame, sniffCodec, StreamDecoder, streamFormat, VP8_CODEC } from '../video/decoder';
import { FakeVideoDecoder } from './setup';

const H264_KEY = new Uint8Array([0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0, 0, 0, 1, 0x65, 0x88]);
const H264_DELTA = new Uint8Array([0, 0, 0, 1, 0x41, 0x9a]);
const VP8_KEY = new Uint8Array([0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x05]);

const tick = () => new Promise((r) => setTimeout(r, 0));

describe('frame header', () => {
  it('round-trips flags, session clock and RTP timestamp', () => {
    const buf = buildFrame({ key: true, tMs: 123456, rtp: 0xfedcba98 }, H264_KEY);
    expect(buf.byteLength).toBe(HEADER_BYTES + H264_KEY.length);
    const v = new DataView(buf);
    expect(v.getUint8(0)).toBe(1);
    expect(v.getUint32(4, true)).toBe(123456);
    const f = parseFrame(buf)!;
    expect(f).toMatchObject({ key: true, tMs: 123456, rtp: 0xfedcba98 });
    expect([...f.data]).toEqual([...H264_KEY]);
    expect(parseFrame(buildFrame({ key: false, tMs: 5, rtp: 1 }, H264_DELTA))!.key).toBe(false);
  });

  it('rejects messages too short to hold a frame', () => {
    expect(parseFrame(new ArrayBuffer(16))).toBeNull();
    expect(parseFrame(new ArrayBuffer(3))).toBeNull();
  });

  it('tells VP8 from H.264 keyframes', () => {
    expect(sniffCodec(H264_KEY)).toBe('H264');
    expect(sniffCodec(new Uint8Array([0, 0, 1, 0x65]))).toBe('H264');
    expect(sniffCodec(VP8_KEY)).toBe('VP8');
    expect(sniffCodec(new Uint8Array([1, 2, 3]))).toBeNull();
  });
});

describe('StreamDecoder', () => {
  it('configures on the first keyframe (Annex-B H.264, no description) and drops deltas before it', async () => {
    const d = new StreamDecoder('H264');
    const canvas = document.createElement('canvas');
    d.attach(canvas);
    const drawn: number[] = [];
    d.onDrawn((f) => drawn.push(f.tMs));
    d.push(buildFrame({ key: false, tMs: 10, rtp: 0 }, H264_DELTA));
    expect(FakeVideoDecoder.instances).toHaveLength(0);
    d.push(buildFrame({ key: true, tMs: 20, rtp: 0 }, H264_KEY));
    d.push(buildFrame({ key: false, tMs: 53, rtp: 0 }, H264_DELTA));
    await tick();
    const dec = FakeVideoDecoder.instances[0];
    expect(dec.config).toMatchObject({ codec: H264_CODEC });
    expect(dec.config!.description).toBeUndefined();
    expect(dec.chunks.map((c) => c.type)).toEqual(['key', 'delta']);
    expect(drawn).toEqual([20, 53]);
    expect(canvas.width).toBe(1280);
    const s = d.stats();
    expect(s).toMatchObject({ frames: 3, decoded: 2, dropped: 1, errors: 0, fps: 2, codec: 'H264' });
  });

  it('uses vp8 for VP8 keyframes whatever the hint', () => {
    const d = new StreamDecoder('H264');
    d.push(buildFrame({ key: true, tMs: 0, rtp: 0 }, VP8_KEY));
    expect(FakeVideoDecoder.instances[0].config!.codec).toBe(VP8_CODEC);
  });

  it('after a decode error waits for the next keyframe with a new decoder', async () => {
    const d = new StreamDecoder();
    d.push(buildFrame({ key: true, tMs: 0, rtp: 0 }, H264_KEY));
    FakeVideoDecoder.failNext = true;
    d.push(buildFrame({ key: false, tMs: 33, rtp: 0 }, H264_DELTA));
    await tick();
    expect(d.stats().errors).toBe(1);
    d.push(buildFrame({ key: false, tMs: 66, rtp: 0 }, H264_DELTA));
    d.push(buildFrame({ key: false, tMs: 99, rtp: 0 }, H264_DELTA));
    expect(FakeVideoDecoder.instances).toHaveLength(1);
    expect(d.stats().dropped).toBe(2);
    d.push(buildFrame({ key: true, tMs: 2000, rtp: 0 }, H264_KEY));
    d.push(buildFrame({ key: false, tMs: 2033, rtp: 0 }, H264_DELTA));
    await tick();
    expect(FakeVideoDecoder.instances).toHaveLength(2);
    expect(FakeVideoDecoder.instances[1].chunks.map((c) => c.type)).toEqual(['key', 'delta']);
  });

  it('asks for a keyframe once when it restarts, not while it already waits for one', async () => {
    const d = new StreamDecoder();
    let asked = 0;
    d.onNeedKeyframe = () => asked++;
    d.push(buildFrame({ key: false, tMs: 0, rtp: 0 }, H264_DELTA)); // waiting from the start
    expect(asked).toBe(0);
    d.push(buildFrame({ key: true, tMs: 33, rtp: 0 }, H264_KEY));
    FakeVideoDecoder.failNext = true;
    d.push(buildFrame({ key: false, tMs: 66, rtp: 0 }, H264_DELTA));
    await tick();
    expect(asked).toBe(1);
    d.push(buildFrame({ key: false, tMs: 99, rtp: 0 }, H264_DELTA));
    d.restart();
    expect(asked).toBe(1);
  });

  it('carries the receive time from the header into the bench timings', async () => {
    window.__portholeTiming = [];
    try {
      const d = new StreamDecoder();
      d.label = 'm1';
      d.push(buildFrame({ key: true, tMs: 500, rtp: 0, rxMs: 4242 }, H264_KEY));
      await tick();
      expect(window.__portholeTiming).toHaveLength(1);
      expect(window.__portholeTiming[0]).toMatchObject({ name: 'm1', tMs: 500, rxMs: 4242, renderer: '2d' });
      const t = window.__portholeTiming[0];
      expect(t.pageMs).toBeLessThanOrEqual(t.decodeMs);
      expect(t.decodeMs).toBeLessThanOrEqual(t.drawnMs);
    } finally {
      delete window.__portholeTiming;
    }
  });

  it('drops the backlog when decoding falls behind, but not during a seek\'s burst', async () => {
    const burst = (d: StreamDecoder, from: number) => {
      d.push(buildFrame({ key: true, tMs: from, rtp: 0 }, H264_KEY));
      FakeVideoDecoder.instances.at(-1)!.decodeQueueSize = 40; // a slow decoder
      for (let i = 1; i <= 40; i++) d.push(buildFrame({ key: false, tMs: from + i * 33, rtp: 0 }, H264_DELTA));
    };
    // Live: behind by more than the queue allows, it starts over at the next keyframe.
    const live = new StreamDecoder();
    burst(live, 0);
    expect(FakeVideoDecoder.instances).toHaveLength(1);
    expect(FakeVideoDecoder.instances[0].state).toBe('closed');
    expect(live.stats().dropped).toBe(40);

    // A seek to 1300 ms: the keyframe at 0 and every frame up to the target are decoded.
    const seek = new StreamDecoder();
    const drawn: number[] = [];
    seek.onDrawn((f) => drawn.push(f.tMs));
    seek.restart(1300);
    burst(seek, 0);
    const dec = FakeVideoDecoder.instances[1];
    expect(dec.chunks).toHaveLength(41);
    expect(seek.stats().dropped).toBe(0);
    await tick();
    expect(drawn.at(-1)).toBe(1320);
    // Once the target is drawn, falling behind drops the backlog again.
    seek.push(buildFrame({ key: false, tMs: 1353, rtp: 0 }, H264_DELTA));
    expect(dec.state).toBe('closed');
  });

  it('a keyframe with a new SPS (the guest screen was resized) gets a new decoder; the same SPS does not', async () => {
    // SPS + PPS + IDR, as the agent's encoder starts a stream; another size is another SPS.
    const key = (sps: number[]) => new Uint8Array([0, 0, 0, 1, 0x67, ...sps, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80, 0, 0, 1, 0x65, 0x88, 0x84]);
    const small = key([0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8]);
    const large = key([0x42, 0xc0, 0x28, 0xda, 0x00, 0xf0, 0x04, 0x4f]);
    expect(streamFormat(small, 'H264')).toBe('sps 103 66 192 31 218 1 64 22 232');
    expect(streamFormat(large, 'H264')).not.toBe(streamFormat(small, 'H264'));
    expect(streamFormat(H264_DELTA, 'H264')).toBeNull();

    const d = new StreamDecoder('H264');
    const drawn: number[] = [];
    d.onDrawn((f) => drawn.push(f.tMs));
    d.push(buildFrame({ key: true, tMs: 0, rtp: 0 }, small));
    d.push(buildFrame({ key: false, tMs: 33, rtp: 0 }, H264_DELTA));
    d.push(buildFrame({ key: true, tMs: 2000, rtp: 0 }, small));
    expect(FakeVideoDecoder.instances).toHaveLength(1);
    d.push(buildFrame({ key: true, tMs: 2100, rtp: 0 }, large));
    d.push(buildFrame({ key: false, tMs: 2133, rtp: 0 }, H264_DELTA));
    expect(FakeVideoDecoder.instances).toHaveLength(2);
    expect(FakeVideoDecoder.instances[0].state).toBe('closed');
    expect(FakeVideoDecoder.instances[1].chunks.map((c) => c.type)).toEqual(['key', 'delta']);
    await tick();
    expect(drawn).toContain(2133);
    expect(d.stats()).toMatchObject({ errors: 0, dropped: 0 });
  });

  it('restart (a seek) drops everything until a keyframe', () => {
    const d = new StreamDecoder();
    d.push(buildFrame({ key: true, tMs: 0, rtp: 0 }, H264_KEY));
    d.restart();
    expect(FakeVideoDecoder.instances[0].state).toBe('closed');
    d.push(buildFrame({ key: false, tMs: 33, rtp: 0 }, H264_DELTA));
    expect(d.stats().dropped).toBe(1);
    d.push(buildFrame({ key: true, tMs: 4000, rtp: 0 }, H264_KEY));
    expect(FakeVideoDecoder.instances).toHaveLength(2);
  });
});
