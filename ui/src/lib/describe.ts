// One line describing an event, for logs and timelines (the same wording as exported evidence).

import type { Event } from '../backend/types';
import { stripAnsi } from './format';

function clip(s: string, n: number): string {
  return s.length > n ? s.slice(0, n - 1) + '…' : s;
}

export function describe(e: Event): string {
  const d = e.data ?? {};
  switch (e.kind) {
    case 'action': {
      let s = String(d.action ?? '?');
      if (Array.isArray(d.coordinate)) s += ` at (${d.coordinate[0]}, ${d.coordinate[1]})`;
      if (typeof d.text === 'string') s += ` "${clip(d.text, 60)}"`;
      if (d.scroll_direction) s += ` ${d.scroll_direction}${d.scroll_amount ? ` ×${d.scroll_amount}` : ''}`;
      if (d.error) s += ` — ${d.error}`;
      return s;
    }
    case 'terminal':
      return `[${d.name ?? ''}] ${clip(stripAnsi(String(d.text ?? '')).trim(), 160)}`;
    case 'step':
      return `${d.step ?? ''} ${d.state ?? ''}${typeof d.exit_code === 'number' ? ` (exit ${d.exit_code})` : ''}`.trim();
    case 'control':
      return `control: ${d.action ?? ''}${d.reason ? ` (${d.reason})` : ''}`;
    case 'refused':
      return `refused: ${d.reason ?? ''}`;
    case 'input': {
      const dev = d.device ?? 'input';
      if (dev === 'pointer') return `pointer ${d.move ? 'move' : `${d.button ?? ''} ${d.down ? 'down' : 'up'}`} at (${d.x}, ${d.y})`;
      if (dev === 'key') {
        const mods = Array.isArray(d.modifiers) && d.modifiers.length ? `${d.modifiers.join('+')}+` : '';
        return `key ${mods}${d.key ?? d.code ?? '(character)'} ${d.down ? 'down' : 'up'}`;
      }
      if (dev === 'text') return typeof d.text === 'string' ? `text "${clip(d.text, 60)}"` : `text (${d.count ?? 0} characters)`;
      if (dev === 'wheel') return `wheel ${d.dx}, ${d.dy}`;
      return String(dev);
    }
    case 'exec':
      return `exec \`${clip(String(d.command ?? ''), 80)}\` → ${d.exit_code}`;
    case 'port':
      return `port ${d.port}${d.name ? ` (${d.name})` : ''} ${d.state ?? ''}`.trim();
    case 'stalled':
      return `stalled: ${d.message ?? (d.idle_ms ? `no progress for ${Math.round(d.idle_ms / 1000)} s` : '')}`;
    case 'display': {
      const from = d.from && typeof d.from.width === 'number' ? `${d.from.width}×${d.from.height} → ` : '';
      return `screen ${from}${d.width}×${d.height}${d.by === 'restore' ? ' (restored)' : ''}`;
    }
    case 'error':
      return `error: ${d.input === 'display' ? 'resize the screen: ' : ''}${d.message ?? ''}`;
    case 'session':
    case 'recording':
    case 'stream':
      return `${e.kind} ${d.state ?? ''}`.trim();
    default:
      return e.kind;
  }
}
