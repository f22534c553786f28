// The progress of a long machine operation (create, start, snapshot): what it is doing now, a
// step bar while the work comes in numbered steps (else a busy bar), and the time so far.

import { useEffect, useState } from 'react';
import type { Progress } from '../backend/types';
import { fmtDuration } from '../lib/format';

export interface OpProgressState {
  /** Date.now() when the operation began. */
  since: number;
  /** The latest line, null before the first. */
  message: string | null;
  /** The latest numbered step: kept while unnumbered lines (tool chatter) arrive. */
  step?: number;
  steps?: number;
}

export function startProgress(): OpProgressState {
  return { since: Date.now(), message: null };
}

/** Folds one progress line into the state. */
export function nextProgress(s: OpProgressState, p: Progress): OpProgressState {
  const stepped = typeof p.step === 'number' && typeof p.steps === 'number' && p.steps > 0;
  return { ...s, message: p.message, ...(stepped ? { step: Math.min(p.step!, p.steps!), steps: p.steps } : {}) };
}

export function OpProgress({ state, label, what }: { state: OpProgressState; label: string; what: string }) {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const id = window.setInterval(() => setNow(Date.now()), 1000);
    return () => window.clearInterval(id);
  }, []);
  const stepped = state.step !== undefined && state.steps !== undefined;
  const pct = stepped ? Math.round((state.step! / state.steps!) * 100) : 0;
  return (
    <div className="op-progress" data-testid="op-progress">
      <div className="op-progress-head">
        <span>
          {label}
          {stepped && ` · step ${state.step} of ${state.steps}`}
        </span>
        <span className="op-progress-time" title="Elapsed">
          {fmtDuration(Math.max(0, now - state.since))}
        </span>
      </div>
      <div
        className={`progress${stepped ? '' : ' indeterminate'}`}
        role="progressbar"
        aria-label={what}
        aria-valuemin={stepped ? 0 : undefined}
        aria-valuemax={stepped ? state.steps : undefined}
        aria-valuenow={stepped ? state.step : undefined}
        aria-valuetext={stepped ? `step ${state.step} of ${state.steps}` : undefined}
      >
        <div className="progress-fill" style={stepped ? { width: `${pct}%` } : undefined} />
      </div>
      {state.message && (
        <div className="op-progress-msg" title={state.message}>
          {state.message}
        </div>
      )}
    </div>
  );
}
