// The mock machine's desktop, drawn as a pure function of the session time and the events so
// far: a browser with a todo app the agent types into, a tmux terminal, the pointer, a clock.
// Live and replay draw the same picture for the same time, so seeking is visible.

import type { Event } from '../types';
import { fmtClock } from '../../lib/format';
import { LAYOUT } from './script';

type Ctx = CanvasRenderingContext2D | OffscreenCanvasRenderingContext2D;

const SGR: Record<number, string> = {
  30: '#5c6370',
  31: '#ef6b73',
  32: '#8fd16a',
  33: '#e5c07b',
  34: '#61afef',
  35: '#c678dd',
  36: '#56b6c2',
  37: '#dcdfe4',
};

interface Span {
  text: string;
  color: string;
  bold: boolean;
}

function ansiSpans(line: string): Span[] {
  const spans: Span[] = [];
  let color = '#d0d4da';
  let bold = false;
  const re = /\x1b\[([0-9;]*)m/g;
  let last = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(line))) {
    if (m.index > last) spans.push({ text: line.slice(last, m.index), color, bold });
    for (const p of (m[1] || '0').split(';').map(Number)) {
      if (p === 0) {
        color = '#d0d4da';
        bold = false;
      } else if (p === 1) bold = true;
      else if (p === 2) color = '#7f8792';
      else if (SGR[p]) color = SGR[p];
      else if (p >= 40 && p <= 47) color = SGR[p - 10] ?? color;
    }
    last = re.lastIndex;
  }
  if (last < line.length) spans.push({ text: line.slice(last), color, bold });
  return spans;
}

function upTo(events: Event[], t: number): number {
  let lo = 0;
  let hi = events.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (events[mid].t_ms <= t) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

interface SceneState {
  pointer: { x: number; y: number };
  todos: string[];
  typing: string;
  checked: boolean;
  lines: string[];
  humanHolds: boolean;
}

function stateAt(events: Event[], t: number): SceneState {
  const n = upTo(events, t);
  const s: SceneState = { pointer: { x: 640, y: 400 }, todos: [], typing: '', checked: false, lines: [], humanHolds: false };
  let pointerAt = -1;
  let prev: { x: number; y: number } | null = null;
  for (let i = 0; i < n; i++) {
    const e = events[i];
    const d = e.data ?? {};
    const pos = d.screen ?? (e.kind === 'input' && typeof d.x === 'number' ? { x: d.x, y: d.y } : null);
    if (pos) {
      prev = pointerAt >= 0 ? s.pointer : null;
      s.pointer = pos;
      pointerAt = e.t_ms;
      if (pos.x < 120 && pos.y > LAYOUT.listTop && d.action === 'left_click') s.checked = !s.checked;
    }
    if (e.kind === 'action' && d.action === 'type') {
      const dur = d.duration_ms ?? 0;
      if (t < e.t_ms + dur) s.typing = String(d.text).slice(0, Math.floor(((t - e.t_ms) / Math.max(1, dur)) * d.text.length));
      else s.todos.push(String(d.text));
    }
    // A human's text is recorded as a count only; the picture shows that much was typed.
    if (e.kind === 'input' && d.device === 'text') s.todos.push(typeof d.text === 'string' ? d.text : '•'.repeat(Math.min(40, d.count ?? 0)));
    if (e.kind === 'control' && d.state) s.humanHolds = d.state.holder === 'human';
    if (e.kind === 'terminal' && d.name === 'agent') {
      for (const l of String(d.text).split(/\r?\n/)) if (l) s.lines.push(l);
      if (s.lines.length > 40) s.lines.splice(0, s.lines.length - 40);
    }
  }
  if (prev && t - pointerAt < 200) {
    const k = (t - pointerAt) / 200;
    s.pointer = { x: prev.x + (s.pointer.x - prev.x) * k, y: prev.y + (s.pointer.y - prev.y) * k };
  }
  return s;
}

function rr(ctx: Ctx, x: number, y: number, w: number, h: number, r: number) {
  ctx.beginPath();
  ctx.moveTo(x + r, y);
  ctx.arcTo(x + w, y, x + w, y + h, r);
  ctx.arcTo(x + w, y + h, x, y + h, r);
  ctx.arcTo(x, y + h, x, y, r);
  ctx.arcTo(x, y, x + w, y, r);
  ctx.closePath();
}

const SANS = 'system-ui, "DejaVu Sans", sans-serif';
const MONO = '"DejaVu Sans Mono", ui-monospace, monospace';

/**
 * Draws the desktop at session time `t` into a `width`x`height` picture of a `screen`-sized
 * guest screen (the windows keep their place; a larger screen shows more desktop around them).
 */
export function drawScene(
  ctx: Ctx,
  width: number,
  height: number,
  t: number,
  events: Event[],
  machine: string,
  screen: { width: number; height: number } = LAYOUT,
): void {
  const s = stateAt(events, t);
  ctx.save();
  ctx.scale(width / screen.width, height / screen.height);
  const W = screen.width;
  const H = screen.height;

  // Desktop.
  const bg = ctx.createLinearGradient(0, 0, W, H);
  bg.addColorStop(0, '#1f3347');
  bg.addColorStop(1, '#0e1822');
  ctx.fillStyle = bg;
  ctx.fillRect(0, 0, W, H);
  ctx.fillStyle = '#0b1016';
  ctx.fillRect(0, 0, W, 28);
  ctx.font = `13px ${SANS}`;
  ctx.textBaseline = 'middle';
  ctx.fillStyle = '#c9d1d9';
  ctx.fillText('Activities    Chromium — Todos', 12, 14);
  ctx.textAlign = 'right';
  ctx.fillText(`${machine}   ${fmtClock(t)}`, W - 12, 14);
  ctx.textAlign = 'left';

  // Browser window.
  const b = LAYOUT.browser;
  ctx.fillStyle = 'rgba(0,0,0,0.35)';
  rr(ctx, b.x + 4, b.y + 6, b.w, b.h, 10);
  ctx.fill();
  ctx.fillStyle = '#f6f7f9';
  rr(ctx, b.x, b.y, b.w, b.h, 10);
  ctx.fill();
  ctx.fillStyle = '#dfe3e8';
  ctx.fillRect(b.x, b.y + 10, b.w, 62);
  rr(ctx, b.x, b.y, b.w, 20, 10);
  ctx.fill();
  ['#ff5f57', '#febc2e', '#28c840'].forEach((c, i) => {
    ctx.fillStyle = c;
    ctx.beginPath();
    ctx.arc(b.x + 18 + i * 18, b.y + 18, 6, 0, Math.PI * 2);
    ctx.fill();
  });
  ctx.fillStyle = '#fff';
  rr(ctx, b.x + 12, b.y + 36, b.w - 24, 28, 14);
  ctx.fill();
  ctx.fillStyle = '#3c4043';
  ctx.font = `13px ${SANS}`;
  ctx.fillText('localhost:3000/todos', b.x + 28, b.y + 50);

  ctx.fillStyle = '#1f2328';
  ctx.font = `bold 26px ${SANS}`;
  ctx.fillText('Todos', LAYOUT.input.x, b.y + 112);
  ctx.fillStyle = '#6e7781';
  ctx.font = `13px ${SANS}`;
  ctx.fillText(`${s.todos.length} items`, LAYOUT.input.x + 100, b.y + 114);

  const inp = LAYOUT.input;
  ctx.fillStyle = '#fff';
  ctx.strokeStyle = s.typing ? '#4c8dff' : '#c8ced6';
  ctx.lineWidth = 2;
  rr(ctx, inp.x, inp.y, inp.w, inp.h, 6);
  ctx.fill();
  ctx.stroke();
  ctx.font = `15px ${SANS}`;
  ctx.fillStyle = s.typing ? '#1f2328' : '#9aa1a9';
  ctx.fillText(s.typing ? s.typing + (Math.floor(t / 400) % 2 ? '|' : '') : 'What needs doing?', inp.x + 12, inp.y + inp.h / 2);
  const ab = LAYOUT.addButton;
  ctx.fillStyle = '#2f6fed';
  rr(ctx, ab.x, ab.y, ab.w, ab.h, 6);
  ctx.fill();
  ctx.fillStyle = '#fff';
  ctx.textAlign = 'center';
  ctx.fillText('Add', ab.x + ab.w / 2, ab.y + ab.h / 2);
  ctx.textAlign = 'left';

  const shown = s.todos.slice(-9);
  shown.forEach((text, i) => {
    const y = LAYOUT.listTop + i * LAYOUT.rowH;
    ctx.fillStyle = i % 2 ? '#f6f7f9' : '#eef1f4';
    ctx.fillRect(inp.x, y, 612, LAYOUT.rowH - 4);
    const done = i === 0 && s.checked;
    ctx.strokeStyle = '#8c959f';
    ctx.lineWidth = 1.5;
    ctx.strokeRect(inp.x + 12, y + 10, 16, 16);
    if (done) {
      ctx.fillStyle = '#2f6fed';
      ctx.fillRect(inp.x + 12, y + 10, 16, 16);
    }
    ctx.fillStyle = done ? '#8c959f' : '#1f2328';
    ctx.font = `15px ${SANS}`;
    ctx.fillText(text, inp.x + 40, y + 18);
  });

  // A progress strip that always moves, so every frame differs a little.
  const px = b.x + 32 + ((t / 12) % (b.w - 160));
  ctx.fillStyle = '#e6e9ed';
  ctx.fillRect(b.x + 32, b.y + b.h - 28, b.w - 64, 6);
  ctx.fillStyle = '#2f6fed';
  ctx.fillRect(px, b.y + b.h - 28, 96, 6);

  // Terminal window (tmux, the agent's window).
  const tw = LAYOUT.terminal;
  ctx.fillStyle = 'rgba(0,0,0,0.35)';
  rr(ctx, tw.x + 4, tw.y + 6, tw.w, tw.h, 8);
  ctx.fill();
  ctx.fillStyle = '#14171c';
  rr(ctx, tw.x, tw.y, tw.w, tw.h, 8);
  ctx.fill();
  ctx.fillStyle = '#23272e';
  rr(ctx, tw.x, tw.y, tw.w, 26, 8);
  ctx.fill();
  ctx.fillRect(tw.x, tw.y + 14, tw.w, 12);
  ctx.fillStyle = '#aab2bd';
  ctx.font = `12px ${SANS}`;
  ctx.fillText('agent — tmux', tw.x + 12, tw.y + 13);
  ctx.font = `12px ${MONO}`;
  const rows = Math.floor((tw.h - 60) / 17);
  const lines = s.lines.slice(-rows);
  lines.forEach((line, i) => {
    let x = tw.x + 10;
    const y = tw.y + 42 + i * 17;
    for (const sp of ansiSpans(line)) {
      ctx.fillStyle = sp.color;
      ctx.font = `${sp.bold ? 'bold ' : ''}12px ${MONO}`;
      const text = sp.text.length > 60 ? sp.text.slice(0, 60) : sp.text;
      ctx.fillText(text, x, y);
      x += ctx.measureText(text).width;
      if (x > tw.x + tw.w - 12) break;
    }
  });
  ctx.fillStyle = '#2d6a3e';
  ctx.fillRect(tw.x, tw.y + tw.h - 20, tw.w, 20);
  ctx.fillStyle = '#e6ffe9';
  ctx.font = `11px ${MONO}`;
  ctx.fillText('[porthole] 0:install 1:dev 2:tests 3:agent*', tw.x + 8, tw.y + tw.h - 10);

  // Pointer, drawn into the picture as the real agent does.
  const { x, y } = s.pointer;
  ctx.fillStyle = '#fff';
  ctx.strokeStyle = '#000';
  ctx.lineWidth = 1.2;
  ctx.beginPath();
  ctx.moveTo(x, y);
  ctx.lineTo(x, y + 18);
  ctx.lineTo(x + 5, y + 14);
  ctx.lineTo(x + 9, y + 22);
  ctx.lineTo(x + 12, y + 20);
  ctx.lineTo(x + 8, y + 13);
  ctx.lineTo(x + 14, y + 13);
  ctx.closePath();
  ctx.fill();
  ctx.stroke();
  ctx.restore();
}
