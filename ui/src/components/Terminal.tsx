// One terminal's output (ANSI kept) in xterm.js; read-only. Falls back to plain text where
// xterm cannot run (no layout engine, as under jsdom).

import { useEffect, useRef, useState } from 'react';
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import { stripAnsi } from '../lib/format';

const THEME = {
  background: '#0c0f14',
  foreground: '#d0d6de',
  cursor: '#0c0f14',
  selectionBackground: '#2b4a7a',
  black: '#1c2027',
  red: '#ef6b73',
  green: '#8fd16a',
  yellow: '#e5c07b',
  blue: '#61afef',
  magenta: '#c678dd',
  cyan: '#56b6c2',
  white: '#d0d6de',
  brightBlack: '#5c6370',
};

export function TerminalView({ chunks, active, name }: { chunks: string[]; active: boolean; name: string }) {
  const hostRef = useRef<HTMLDivElement>(null);
  const termRef = useRef<{ term: Terminal; fit: FitAddon } | null>(null);
  const written = useRef(0);
  const [fallback, setFallback] = useState(false);

  useEffect(() => {
    const host = hostRef.current;
    if (!host) return;
    let term: Terminal | null = null;
    try {
      term = new Terminal({
        convertEol: true,
        disableStdin: true,
        cursorBlink: false,
        cursorInactiveStyle: 'none',
        fontFamily: '"DejaVu Sans Mono", ui-monospace, Menlo, Consolas, monospace',
        fontSize: 12,
        lineHeight: 1.15,
        scrollback: 5000,
        theme: THEME,
      });
      const fit = new FitAddon();
      term.loadAddon(fit);
      term.open(host);
      termRef.current = { term, fit };
      written.current = 0;
    } catch {
      term?.dispose();
      setFallback(true);
      return;
    }
    const ro = typeof ResizeObserver !== 'undefined' ? new ResizeObserver(() => safeFit(termRef.current?.fit)) : null;
    ro?.observe(host);
    return () => {
      ro?.disconnect();
      termRef.current?.term.dispose();
      termRef.current = null;
    };
  }, []);

  useEffect(() => {
    const t = termRef.current;
    if (!t) return;
    if (chunks.length < written.current) {
      t.term.reset();
      written.current = 0;
    }
    for (let i = written.current; i < chunks.length; i++) t.term.write(chunks[i]);
    written.current = chunks.length;
  }, [chunks]);

  useEffect(() => {
    if (active) safeFit(termRef.current?.fit);
  }, [active]);

  return (
    <div className="terminal" hidden={!active} data-testid={`terminal-${name}`}>
      {fallback ? <pre className="terminal-fallback">{stripAnsi(chunks.join(''))}</pre> : <div ref={hostRef} className="terminal-host" />}
    </div>
  );
}

function safeFit(fit: FitAddon | undefined) {
  try {
    fit?.fit();
  } catch {
    /* not laid out yet */
  }
}

/** Tabs of terminals by name, each fed from `terminal` events. */
export function TerminalsPanel({ terminals, empty }: { terminals: Map<string, string[]>; empty?: string }) {
  const names = [...terminals.keys()];
  const [active, setActive] = useState<string | null>(null);
  const current = active && terminals.has(active) ? active : (names[0] ?? null);
  if (!names.length) return <div className="empty small">{empty ?? 'No terminal output yet.'}</div>;
  return (
    <div className="terminals">
      <div className="tabs" role="tablist" aria-label="Terminals">
        {names.map((n) => (
          <button key={n} role="tab" aria-selected={n === current} className={n === current ? 'tab active' : 'tab'} onClick={() => setActive(n)}>
            {n}
          </button>
        ))}
      </div>
      <div className="terminal-stack">
        {names.map((n) => (
          <TerminalView key={n} name={n} chunks={terminals.get(n)!} active={n === current} />
        ))}
      </div>
    </div>
  );
}
