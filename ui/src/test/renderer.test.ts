import { describe, expect, it } from 'vitest';
import { BT601_LIMITED, i420Pixel, i420Planes, i420Size, nv12Planes } from '../video/renderer';

/** A known 4x2 I420 picture: the left half pure red, the right half pure blue (BT.601 limited). */
const RED = [81, 90, 240];
const BLUE = [41, 240, 110];

function knownFrame(stride: number, chromaStride: number): { buf: Uint8Array; layout: { offset: number; stride: number }[] } {
  const ySize = stride * 2;
  const cSize = chromaStride * 1;
  const buf = new Uint8Array(ySize + 2 * cSize).fill(0xee); // padding bytes must never be read
  for (let y = 0; y < 2; y++) for (let x = 0; x < 4; x++) buf[y * stride + x] = (x < 2 ? RED : BLUE)[0];
  for (let x = 0; x < 2; x++) {
    buf[ySize + x] = (x < 1 ? RED : BLUE)[1];
    buf[ySize + cSize + x] = (x < 1 ? RED : BLUE)[2];
  }
  return { buf, layout: [{ offset: 0, stride }, { offset: ySize, stride: chromaStride }, { offset: ySize + cSize, stride: chromaStride }] };
}

describe('I420 renderer', () => {
  it('lays out the planes copyTo reports, padded or packed', () => {
    for (const [stride, cstride] of [
      [4, 2],
      [16, 8],
    ]) {
      const { layout } = knownFrame(stride, cstride);
      expect(i420Planes(layout, 4, 2)).toEqual([
        { offset: 0, stride, width: 4, height: 2 },
        { offset: stride * 2, stride: cstride, width: 2, height: 1 },
        { offset: stride * 2 + cstride, stride: cstride, width: 2, height: 1 },
      ]);
    }
    // Odd sizes round the chroma planes up; a stride shorter than a row is refused.
    expect(i420Planes([{ offset: 0, stride: 5 }, { offset: 15, stride: 3 }, { offset: 21, stride: 3 }], 5, 3)?.map((p) => [p.width, p.height])).toEqual([
      [5, 3],
      [3, 2],
      [3, 2],
    ]);
    expect(i420Planes([{ offset: 0, stride: 3 }, { offset: 12, stride: 2 }, { offset: 16, stride: 2 }], 4, 2)).toBeNull();
    expect(i420Planes([{ offset: 0, stride: 4 }], 4, 2)).toBeNull();
    expect(i420Size(1280, 800)).toBe(1280 * 800 * 1.5);
    expect(nv12Planes([{ offset: 0, stride: 4 }, { offset: 8, stride: 4 }], 4, 2)).toEqual([
      { offset: 0, stride: 4, width: 4, height: 2 },
      { offset: 8, stride: 4, width: 2, height: 1 },
    ]);
  });

  it("turns a known frame into its colours with the shader's matrix", () => {
    for (const [stride, cstride] of [
      [4, 2],
      [16, 8],
    ]) {
      const { buf, layout } = knownFrame(stride, cstride);
      const planes = i420Planes(layout, 4, 2)!;
      const near = (got: number[], want: number[]) => got.forEach((v, i) => expect(Math.abs(v - want[i])).toBeLessThanOrEqual(3));
      for (const y of [0, 1]) {
        near(i420Pixel(buf, planes, 0, y), [255, 0, 0]);
        near(i420Pixel(buf, planes, 1, y), [255, 0, 0]);
        near(i420Pixel(buf, planes, 2, y), [0, 0, 255]);
        near(i420Pixel(buf, planes, 3, y), [0, 0, 255]);
      }
    }
    // Limited range: Y 16 is black, Y 235 white, chroma neutral at 128.
    const grey = (Y: number) => i420Pixel(new Uint8Array([Y, 128, 128]), [{ offset: 0, stride: 1, width: 1, height: 1 }, { offset: 1, stride: 1, width: 1, height: 1 }, { offset: 2, stride: 1, width: 1, height: 1 }], 0, 0);
    expect(grey(16)).toEqual([0, 0, 0]);
    expect(grey(235)).toEqual([255, 255, 255]);
    expect(BT601_LIMITED.r[2]).toBeCloseTo(1.402);
  });
});
