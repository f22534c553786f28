/// <reference types="vitest/config" />
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// Tauri serves `dist/` in release builds and the dev server in `tauri dev`.
export default defineConfig({
  plugins: [react()],
  clearScreen: false,
  base: './',
  // The mock backend serves Porthole's real environment schema from crates/envfile.
  server: { port: 5173, strictPort: false, host: '127.0.0.1', fs: { allow: ['.', '../crates/envfile/schema'] } },
  build: { outDir: 'dist', target: 'es2022', chunkSizeWarningLimit: 1500 },
  test: {
    environment: 'jsdom',
    setupFiles: ['./src/test/setup.ts'],
    css: false,
    // Role queries walk the accessibility tree of a large DOM (terminals, event log): measured
    // 5-6 s a test in live.test while a cargo build shared the 2 cores, against 5 s and 1 s
    // defaults. These bound how long a test waits for a state, they time nothing.
    testTimeout: 30_000,
  },
});
