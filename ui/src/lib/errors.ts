// Turning backend errors into something shown where the user acted.

import type { BackendError } from '../backend/types';

export function errorMessage(e: unknown): string {
  if (e && typeof e === 'object' && 'message' in e) return String((e as BackendError).message);
  return String(e);
}

/**
 * If the message names one of the form's fields first (`name: ...`, `token file '...' ...`,
 * `terminals[1].command: ...`), returns that field's key. `fields` maps each key to the names
 * a message may use for it.
 */
export function fieldOfError(message: string, fields: Record<string, string[]>): string | null {
  const m = message.trim().toLowerCase();
  let best: { key: string; len: number } | null = null;
  for (const [key, names] of Object.entries(fields)) {
    for (const n of [key, ...names]) {
      const name = n.toLowerCase();
      if (m.startsWith(name) && /^($|[\s:'"`[.(=])/.test(m.slice(name.length)) && (!best || name.length > best.len)) {
        best = { key, len: name.length };
      }
    }
  }
  return best?.key ?? null;
}

/** A message whose first word is a JSON path (`terminals[1].command: ...`). */
export function jsonPathOfError(message: string): { path: string; message: string } | null {
  const m = /^([A-Za-z_$][\w$]*(?:\[\d+\]|\.[A-Za-z_$][\w$]*)*):\s*(.*)$/s.exec(message.trim());
  return m ? { path: m[1], message: m[2] } : null;
}
