// The one way the UI reaches the backend: Tauri commands inside the app, the in-memory mock
// in a plain browser (`npm run dev`) and in tests.

import { createMockBackend } from './mock';
import { createTauriBackend } from './tauri';
import type { Backend } from './types';

export * from './types';

declare global {
  interface Window {
    __TAURI_INTERNALS__?: unknown;
  }
}

export const isTauri = typeof window !== 'undefined' && window.__TAURI_INTERNALS__ !== undefined;

function choose(): Backend {
  if (isTauri) return createTauriBackend();
  if (import.meta.env.MODE === 'test') return createMockBackend({ latency: 0, frames: 'none' });
  return createMockBackend();
}

export const backend: Backend = choose();
