// Actions drawn over the video from events: click ripples at the screen position, typed-text
// bubbles, key-chord badges. Stateless: give it the candidate events and the session time.

import type { Actor, Event } from '../backend/types';

export const ACTOR_COLORS: Record<Actor, string> = {
  agent: '#4c8dff',
  human: '#f0a53a',
  system: '#9aa4b2',
};

/** How long an action stays on screen, in session milliseconds. */
export const OVERLAY_TTL_MS = 2500;

const CLICKS = new Set([
  'left_click',
  'right_click',
  'middle_click',
  'double_click',
  'triple_click',
  'left_mouse_down',
  'left_mouse_up',
  'left_click_drag',
]);

/** The session clock as the viewer sees it: set from frames and events, advanced at `rate`. */
export class SessionClock {
  private base = 0;
  private wall = 0;
  private rate = 1;

  set(tMs: number, rate = this.rate): void {
    this.base = tMs;
    this.wall = performance.now();
    this.rate = rate;
  }

  /** Moves forward only: a late frame or event never turns the clock back. */
  observe(tMs: number): void {
    if (tMs > this.now()) this.set(tMs);
  }

  now(): number {
    return this.base + (performance.now() - this.wall) * this.rate;
  }
}

/** Whether an event draws anything on the video. */
export function isOverlayEvent(e: Event): boolean {
  if (e.kind === 'action') return true;
  if (e.kind === 'input') return e.data?.device !== 'pointer' || e.data?.move !== true;
  return e.kind === 'control' || e.kind === 'refused';
}

interface Pt {
  x: number;
  y: number;
}

function pointOf(e: Event): Pt | null {
  const d = e.data ?? {};
  if (d.screen && typeof d.screen.x === 'number') return { x: d.screen.x, y: d.screen.y };
  if (e.kind === 'input' && typeof d.x === 'number') return { x: d.x, y: d.y };
  return null;
}

function label(e: Event): { text: string; kind: 'bubble' | 'badge' } | null {
  const d = e.data ?? {};
  if (e.kind === 'action') {
    if (d.action === 'type' && typeof d.text === 'string') return { text: d.text, kind: 'bubble' };
    if ((d.action === 'key' || d.action === 'hold_key') && typeof d.text === 'string') return { text: d.text, kind: 'badge' };
    return null;
  }
  if (e.kind === 'input') {
    // A human's keys are recorded without their characters: a count, named special keys, modifiers.
    if (d.device === 'text') return { text: typeof d.text === 'string' ? d.text : `${d.count ?? 0} characters`, kind: 'bubble' };
    if (d.device === 'key' && d.down) {
      const mods: string[] = Array.isArray(d.modifiers) ? d.modifiers : [];
      return { text: [...mods, d.key || d.code || '•'].join('+'), kind: 'badge' };
    }
    return null;
  }
  if (e.kind === 'control') return { text: `control: ${d.action ?? ''}`.trim(), kind: 'badge' };
  if (e.kind === 'refused') return { text: `refused: ${d.reason ?? d.action ?? ''}`, kind: 'badge' };
  return null;
}

/** Index of the first event with t_ms >= t in a list sorted by t_ms. */
export function lowerBound(events: Event[], t: number): number {
  let lo = 0;
  let hi = events.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (events[mid].t_ms < t) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Whether `drawOverlay` would draw anything at `now` (an event in its window). */
export function overlayActive(events: Event[], now: number): boolean {
  const from = lowerBound(events, now - OVERLAY_TTL_MS);
  return from < lowerBound(events, now + 1);
}

/**
 * Draws the actions of `events` (sorted by t_ms) that happened in the last OVERLAY_TTL_MS
 * before `now`. `scale` maps stream pixels to canvas pixels.
 */
export function drawOverlay(
  ctx: CanvasRenderingContext2D,
  events: Event[],
  now: number,
  scale: number,
  size: { width: number; height: number },
): void {
  ctx.clearRect(0, 0, size.width, size.height);
  const from = lowerBound(events, now - OVERLAY_TTL_MS);
  const to = lowerBound(events, now + 1);
  let last: Pt | null = null;
  // The pointer position before the window, so a bubble can sit where typing happens.
  for (let i = from - 1; i >= 0 && i >= from - 50; i--) {
    const p = pointOf(events[i]);
    if (p) {
      last = p;
      break;
    }
  }
  const badges: { text: string; fade: number; color: string }[] = [];
  for (let i = from; i < to; i++) {
    const e = events[i];
    const age = now - e.t_ms;
    if (age < 0) continue;
    const fade = Math.max(0, 1 - age / OVERLAY_TTL_MS);
    const color = ACTOR_COLORS[e.actor] ?? ACTOR_COLORS.system;
    const p = pointOf(e);
    if (p) last = p;
    const d = e.data ?? {};
    const isClick = (e.kind === 'action' && CLICKS.has(d.action)) || (e.kind === 'input' && d.device === 'pointer' && d.down === true);
    if (p && isClick) ripple(ctx, p.x * scale, p.y * scale, age, color);
    else if (p && e.kind === 'action' && d.action === 'scroll') scrollMark(ctx, p.x * scale, p.y * scale, d.scroll_direction, fade, color);
    else if (p && e.kind === 'action' && d.action === 'mouse_move') dot(ctx, p.x * scale, p.y * scale, fade, color);
    const l = label(e);
    if (!l) continue;
    if (l.kind === 'bubble') {
      const at = last ?? { x: size.width / scale / 2, y: size.height / scale / 2 };
      bubble(ctx, at.x * scale, at.y * scale, l.text, fade, color, size);
    } else {
      badges.push({ text: l.text, fade, color });
    }
  }
  // The newest badge sits at the bottom; at most three are shown.
  badges
    .slice(-3)
    .reverse()
    .forEach((b, row) => badge(ctx, b.text, b.fade, b.color, size, row));
}

function ripple(ctx: CanvasRenderingContext2D, x: number, y: number, age: number, color: string): void {
  const t = Math.min(1, age / 900);
  ctx.save();
  ctx.globalAlpha = 1 - t;
  ctx.strokeStyle = color;
  ctx.lineWidth = 3;
  ctx.beginPath();
  ctx.arc(x, y, 6 + 28 * t, 0, Math.PI * 2);
  ctx.stroke();
  ctx.globalAlpha = Math.max(0, 0.9 - t);
  ctx.fillStyle = color;
  ctx.beginPath();
  ctx.arc(x, y, 5, 0, Math.PI * 2);
  ctx.fill();
  ctx.restore();
}

function dot(ctx: CanvasRenderingContext2D, x: number, y: number, fade: number, color: string): void {
  ctx.save();
  ctx.globalAlpha = fade * 0.8;
  ctx.fillStyle = color;
  ctx.beginPath();
  ctx.arc(x, y, 4, 0, Math.PI * 2);
  ctx.fill();
  ctx.restore();
}

function scrollMark(ctx: CanvasRenderingContext2D, x: number, y: number, dir: string, fade: number, color: string): void {
  const angle = { up: -Math.PI / 2, down: Math.PI / 2, left: Math.PI, right: 0 }[dir as 'up'] ?? Math.PI / 2;
  ctx.save();
  ctx.globalAlpha = fade;
  ctx.translate(x, y);
  ctx.rotate(angle);
  ctx.strokeStyle = color;
  ctx.lineWidth = 3;
  ctx.lineCap = 'round';
  ctx.beginPath();
  ctx.moveTo(-12, 0);
  ctx.lineTo(12, 0);
  ctx.moveTo(4, -8);
  ctx.lineTo(12, 0);
  ctx.lineTo(4, 8);
  ctx.stroke();
  ctx.restore();
}

function roundRect(ctx: CanvasRenderingContext2D, x: number, y: number, w: number, h: number, r: number): void {
  ctx.beginPath();
  ctx.moveTo(x + r, y);
  ctx.arcTo(x + w, y, x + w, y + h, r);
  ctx.arcTo(x + w, y + h, x, y + h, r);
  ctx.arcTo(x, y + h, x, y, r);
  ctx.arcTo(x, y, x + w, y, r);
  ctx.closePath();
}

function clip(text: string, max: number): string {
  const oneLine = text.replace(/\s+/g, ' ');
  return oneLine.length > max ? oneLine.slice(0, max - 1) + '…' : oneLine;
}

const FONT = '600 13px system-ui, -apple-system, "Segoe UI", sans-serif';

function bubble(
  ctx: CanvasRenderingContext2D,
  x: number,
  y: number,
  text: string,
  fade: number,
  color: string,
  size: { width: number; height: number },
): void {
  ctx.save();
  ctx.font = FONT;
  const t = clip(text, 48);
  const w = ctx.measureText(t).width + 16;
  const h = 24;
  const bx = Math.min(Math.max(4, x + 12), size.width - w - 4);
  const by = Math.min(Math.max(4, y - h - 12), size.height - h - 4);
  ctx.globalAlpha = Math.min(1, fade * 1.5);
  ctx.fillStyle = 'rgba(12, 16, 22, 0.88)';
  roundRect(ctx, bx, by, w, h, 6);
  ctx.fill();
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.stroke();
  ctx.fillStyle = '#eef2f7';
  ctx.textBaseline = 'middle';
  ctx.fillText(t, bx + 8, by + h / 2 + 1);
  ctx.restore();
}

function badge(ctx: CanvasRenderingContext2D, text: string, fade: number, color: string, size: { width: number; height: number }, row: number): void {
  ctx.save();
  ctx.font = FONT;
  const t = clip(text, 40);
  const w = ctx.measureText(t).width + 20;
  const h = 26;
  const x = (size.width - w) / 2;
  const y = size.height - 16 - h - row * (h + 8);
  ctx.globalAlpha = Math.min(1, fade * 1.5);
  ctx.fillStyle = color;
  roundRect(ctx, x, y, w, h, 13);
  ctx.fill();
  ctx.fillStyle = '#0b0e13';
  ctx.textBaseline = 'middle';
  ctx.fillText(t, x + 10, y + h / 2 + 1);
  ctx.restore();
}
