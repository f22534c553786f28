// Draws decoded pictures on the live canvas without `drawImage(VideoFrame)`.
//
// Why: in WebKitGTK `drawImage(VideoFrame)` converts every frame through a GStreamer
// `videoconvert ! videoscale` pipeline on the page's main thread and waits for its preroll,
// producing a 4 MB BGRx frame per draw (issue 16: the live view at 135-177% of a core).
// `VideoFrame.copyTo()` of an I420 frame is a plain per-plane copy there, so we copy the three
// planes out and let a WebGL2 shader do YUV → RGB (BT.601, limited range: what the agent's
// encoder writes, guest-agent/src/encode.rs). Where WebGL2 or the copy is not available, the
// 2D canvas and drawImage remain (other engines do that well).

/** One plane of an I420 picture inside the buffer `copyTo` filled. */
export interface Plane {
  offset: number;
  stride: number;
  width: number;
  height: number;
}

/** Y, U and V of a `width`x`height` I420 picture laid out as `layout` says (from copyTo). */
export function i420Planes(layout: readonly { offset: number; stride: number }[], width: number, height: number): Plane[] | null {
  if (layout.length !== 3) return null;
  const cw = Math.ceil(width / 2);
  const ch = Math.ceil(height / 2);
  const dims = [
    [width, height],
    [cw, ch],
    [cw, ch],
  ];
  const planes = layout.map((l, i) => ({ offset: l.offset, stride: l.stride, width: dims[i][0], height: dims[i][1] }));
  return planes.every((p) => p.stride >= p.width) ? planes : null;
}

/** Bytes `copyTo` needs for a packed I420 copy of the frame's visible picture. */
export function i420Size(width: number, height: number): number {
  return width * height + 2 * Math.ceil(width / 2) * Math.ceil(height / 2);
}

/**
 * BT.601 limited range to RGB, as the shader computes it (rows of the matrix applied to
 * [Y - 16/255, U - 128/255, V - 128/255] after scaling Y by 255/219 and chroma by 255/224).
 */
export const BT601_LIMITED = {
  yOffset: 16 / 255,
  yScale: 255 / 219,
  /** Chroma is centred on 128, not on half of 255. */
  cOffset: 128 / 255,
  cScale: 255 / 224,
  r: [1, 0, 1.402],
  g: [1, -0.344136, -0.714136],
  b: [1, 1.772, 0],
};

/** The reference for the shader, on the CPU: the RGB of pixel (x, y) of an I420 buffer. */
export function i420Pixel(buf: Uint8Array, planes: Plane[], x: number, y: number): [number, number, number] {
  const m = BT601_LIMITED;
  const Y = (buf[planes[0].offset + y * planes[0].stride + x] / 255 - m.yOffset) * m.yScale;
  const cx = x >> 1;
  const cy = y >> 1;
  const U = (buf[planes[1].offset + cy * planes[1].stride + cx] / 255 - m.cOffset) * m.cScale;
  const V = (buf[planes[2].offset + cy * planes[2].stride + cx] / 255 - m.cOffset) * m.cScale;
  const ch = (row: number[]) => Math.round(Math.max(0, Math.min(1, row[0] * Y + row[1] * U + row[2] * V)) * 255);
  return [ch(m.r), ch(m.g), ch(m.b)];
}

const VERTEX = `#version 300 es
in vec2 pos;
out vec2 uv;
void main() {
  uv = vec2((pos.x + 1.0) * 0.5, (1.0 - pos.y) * 0.5);
  gl_Position = vec4(pos, 0.0, 1.0);
}`;

const m = BT601_LIMITED;
const f = (x: number) => x.toFixed(6);
const FRAGMENT = `#version 300 es
precision mediump float;
in vec2 uv;
uniform sampler2D ty, tu, tv;
uniform int mode; // 0 I420, 1 NV12 (tu holds UV pairs), 2 RGBA in ty
out vec4 color;
void main() {
  if (mode == 2) { color = vec4(texture(ty, uv).rgb, 1.0); return; }
  float y = (texture(ty, uv).r - ${f(m.yOffset)}) * ${f(m.yScale)};
  vec2 c = mode == 1 ? texture(tu, uv).rg : vec2(texture(tu, uv).r, texture(tv, uv).r);
  float u = (c.x - ${f(m.cOffset)}) * ${f(m.cScale)};
  float v = (c.y - ${f(m.cOffset)}) * ${f(m.cScale)};
  color = vec4(clamp(vec3(y + ${f(m.r[2])} * v, y + ${f(m.g[1])} * u + ${f(m.g[2])} * v, y + ${f(m.b[1])} * u), 0.0, 1.0), 1.0);
}`;

/** Paints I420 planes with WebGL2; null where the canvas cannot have a WebGL2 context. */
export class I420Renderer {
  private tex: WebGLTexture[] = [];
  private size = { width: 0, height: 0, mode: -1 };
  private mode: WebGLUniformLocation | null = null;

  static create(canvas: HTMLCanvasElement): I420Renderer | null {
    let gl: WebGL2RenderingContext | null = null;
    try {
      gl = canvas.getContext('webgl2', { alpha: false, antialias: false, depth: false, preserveDrawingBuffer: false, desynchronized: true }) as WebGL2RenderingContext | null;
    } catch {
      gl = null;
    }
    if (!gl || typeof gl.createShader !== 'function') return null;
    try {
      return new I420Renderer(gl);
    } catch {
      return null;
    }
  }

  private constructor(private gl: WebGL2RenderingContext) {
    const prog = gl.createProgram()!;
    for (const [type, src] of [
      [gl.VERTEX_SHADER, VERTEX],
      [gl.FRAGMENT_SHADER, FRAGMENT],
    ] as const) {
      const sh = gl.createShader(type)!;
      gl.shaderSource(sh, src);
      gl.compileShader(sh);
      if (!gl.getShaderParameter(sh, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(sh) ?? 'shader');
      gl.attachShader(prog, sh);
    }
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog) ?? 'link');
    gl.useProgram(prog);
    this.mode = gl.getUniformLocation(prog, 'mode');
    const vbo = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, vbo);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    const loc = gl.getAttribLocation(prog, 'pos');
    gl.enableVertexAttribArray(loc);
    gl.vertexAttribPointer(loc, 2, gl.FLOAT, false, 0, 0);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    ['ty', 'tu', 'tv'].forEach((name, i) => {
      const t = gl.createTexture()!;
      gl.activeTexture(gl.TEXTURE0 + i);
      gl.bindTexture(gl.TEXTURE_2D, t);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
      gl.uniform1i(gl.getUniformLocation(prog, name), i);
      this.tex.push(t);
    });
  }

  /** Uploads the planes (I420: 3, NV12: 2) and draws them over the canvas, sized to the picture. */
  draw(buf: Uint8Array, planes: Plane[], width: number, height: number): void {
    const gl = this.gl;
    const nv12 = planes.length === 2;
    this.begin(width, height, nv12 ? 1 : 0);
    const fresh = this.size.width !== width || this.size.height !== height || this.size.mode !== (nv12 ? 1 : 0);
    this.size = { width, height, mode: nv12 ? 1 : 0 };
    planes.forEach((p, i) => {
      const pairs = nv12 && i === 1;
      gl.activeTexture(gl.TEXTURE0 + i);
      gl.pixelStorei(gl.UNPACK_ROW_LENGTH, pairs ? p.stride / 2 : p.stride);
      const bpp = pairs ? 2 : 1;
      const view = buf.subarray(p.offset, p.offset + p.stride * (p.height - 1) + p.width * bpp);
      const [internal, format] = pairs ? [gl.RG8, gl.RG] : [gl.R8, gl.RED];
      if (fresh) gl.texImage2D(gl.TEXTURE_2D, 0, internal, p.width, p.height, 0, format, gl.UNSIGNED_BYTE, view);
      else gl.texSubImage2D(gl.TEXTURE_2D, 0, 0, 0, p.width, p.height, format, gl.UNSIGNED_BYTE, view);
    });
    gl.pixelStorei(gl.UNPACK_ROW_LENGTH, 0);
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  }

  /**
   * RGB at picture pixels of what was last drawn (for tests: the WebGL canvas has no 2D
   * context to read, and its buffer is gone after compositing). Draws the last picture again
   * from the textures it still holds and reads it back.
   */
  read(points: [number, number][]): number[][] {
    const gl = this.gl;
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
    const px = new Uint8Array(4);
    const h = (gl.canvas as HTMLCanvasElement).height;
    return points.map(([x, y]) => {
      gl.readPixels(x, h - 1 - y, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px);
      return [px[0], px[1], px[2]];
    });
  }

  /** A picture in a format we cannot copy out: the browser converts it (slow in WebKitGTK). */
  drawFrame(frame: VideoFrame): void {
    const gl = this.gl;
    this.begin(frame.displayWidth, frame.displayHeight, 2);
    this.size.mode = -1;
    gl.activeTexture(gl.TEXTURE0);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, frame);
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  }

  private begin(width: number, height: number, mode: number): void {
    const gl = this.gl;
    const c = gl.canvas as HTMLCanvasElement;
    if (c.width !== width || c.height !== height) {
      c.width = width;
      c.height = height;
    }
    gl.uniform1i(this.mode, mode);
    gl.viewport(0, 0, width, height);
  }
}

/** NV12 planes (Y, then interleaved UV) as `copyTo` laid them out. */
export function nv12Planes(layout: readonly { offset: number; stride: number }[], width: number, height: number): Plane[] | null {
  if (layout.length !== 2) return null;
  const cw = Math.ceil(width / 2);
  const ch = Math.ceil(height / 2);
  const planes = [
    { offset: layout[0].offset, stride: layout[0].stride, width, height },
    { offset: layout[1].offset, stride: layout[1].stride, width: cw, height: ch },
  ];
  return planes[0].stride >= width && planes[1].stride >= cw * 2 ? planes : null;
}
