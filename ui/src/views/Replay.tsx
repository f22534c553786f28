import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import { backend, type Event, type Machine, type ReplayInfo, type SessionSummary } from '../backend';
import { EventLog } from '../components/EventLog';
import { TerminalsPanel } from '../components/Terminal';
import { Field } from '../components/Field';
import { Modal, Spinner } from '../components/Modal';
import { useToast } from '../components/Toasts';
import { describe } from '../lib/describe';
import { errorMessage, fieldOfError } from '../lib/errors';
import { fmtBytes, fmtClock, fmtDuration, fmtWhen } from '../lib/format';
import { href } from '../lib/route';
import { StreamDecoder } from '../video/decoder';
import { ACTOR_COLORS, isOverlayEvent, SessionClock } from '../video/overlay';
import { VideoSurface } from '../video/VideoSurface';

export const SPEEDS = [0.5, 1, 2, 4];

export function ReplayView({ sessionId }: { sessionId: string | null }) {
  return sessionId ? <Player sessionId={sessionId} /> : <Library />;
}

function Library() {
  const toast = useToast();
  const [sessions, setSessions] = useState<SessionSummary[] | null>(null);
  const [machines, setMachines] = useState<Machine[]>([]);
  const [syncFrom, setSyncFrom] = useState('');
  const [syncing, setSyncing] = useState(false);

  const load = useCallback(async () => {
    try {
      setSessions(await backend.sessionsList());
    } catch (e) {
      toast.error(errorMessage(e));
      setSessions([]);
    }
  }, [toast]);

  useEffect(() => {
    void load();
    backend.machinesList().then(
      (ms) => {
        const running = ms.filter((m) => m.status === 'running');
        setMachines(running);
        setSyncFrom((s) => s || running[0]?.name || '');
      },
      () => undefined,
    );
  }, [load]);

  const sync = async () => {
    if (!syncFrom) return;
    setSyncing(true);
    try {
      const r = await backend.sessionsSync(syncFrom);
      toast.success(`Synced ${r.sessions} session${r.sessions === 1 ? '' : 's'} from ${syncFrom}: ${r.events} events, ${fmtBytes(r.bytes)}`);
      await load();
    } catch (e) {
      toast.error(errorMessage(e));
    } finally {
      setSyncing(false);
    }
  };

  return (
    <div className="page">
      <header className="page-head">
        <div>
          <h1>Replay</h1>
          <p className="muted">Sessions synced to this computer: video, actions and terminal output on one clock.</p>
        </div>
        <div className="actions">
          <select aria-label="Machine to sync" value={syncFrom} onChange={(e) => setSyncFrom(e.target.value)} disabled={!machines.length}>
            {machines.length === 0 && <option value="">No running machine</option>}
            {machines.map((m) => (
              <option key={m.name} value={m.name}>
                {m.name}
              </option>
            ))}
          </select>
          <button className="primary" onClick={sync} disabled={!syncFrom || syncing}>
            {syncing && <Spinner />}
            {syncing ? 'Syncing…' : 'Sync recordings'}
          </button>
        </div>
      </header>
      {!sessions ? (
        <div className="empty">
          <Spinner /> Loading sessions…
        </div>
      ) : sessions.length === 0 ? (
        <div className="empty">No sessions yet. Sync a running machine to copy its recordings here.</div>
      ) : (
        <div className="session-grid" aria-label="Sessions">
          {sessions.map((s) => (
            <a key={s.id} className="session-card" href={href('replay', s.id)} data-testid={`session-${s.id}`}>
              <div className="thumb">
                {s.thumbnail ? <img src={s.thumbnail} alt="" /> : <span className="thumb-empty">no preview</span>}
                <span className="thumb-duration">{fmtDuration(s.duration_ms)}</span>
              </div>
              <div className="session-meta">
                <div className="row-between">
                  <span className="strong">{s.machine}</span>
                  <span className={`badge state-${s.state}`}>{s.state}</span>
                </div>
                <div className="muted small">
                  {fmtWhen(s.started_at)} · {s.events} events · {fmtBytes(s.bytes)}
                </div>
                <div className="mono small muted">{s.id}</div>
              </div>
            </a>
          ))}
        </div>
      )}
    </div>
  );
}

interface Pipe {
  decoder: StreamDecoder;
  clock: SessionClock;
}

/** Terminal output up to `pos`, per terminal name (replayed in step with the video). */
function useTerminalsAt(events: Event[], pos: number): Map<string, string[]> {
  const term = useMemo(() => events.filter((e) => e.kind === 'terminal' && typeof e.data?.name === 'string'), [events]);
  let lo = 0;
  let hi = term.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (term[mid].t_ms <= pos) lo = mid + 1;
    else hi = mid;
  }
  const upto = lo;
  return useMemo(() => {
    const m = new Map<string, string[]>();
    for (const e of term) if (!m.has(e.data.name)) m.set(e.data.name, []);
    for (let i = 0; i < upto; i++) m.get(term[i].data.name)!.push(String(term[i].data.text ?? ''));
    return m;
  }, [term, upto]);
}

function Player({ sessionId }: { sessionId: string }) {
  const toast = useToast();
  const [info, setInfo] = useState<ReplayInfo | null>(null);
  const [screen, setScreen] = useState<{ width: number; height: number } | null>(null);
  const [events, setEvents] = useState<Event[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [playing, setPlaying] = useState(false);
  const [speed, setSpeed] = useState(1);
  const [pos, setPos] = useState(0);
  const [showStats, setShowStats] = useState(false);
  const [exporting, setExporting] = useState(false);
  const [pipe, setPipe] = useState<Pipe | null>(null);
  const gen = useRef(0);
  const target = useRef(0);
  const pauseAtTarget = useRef(false);
  const state = useRef({ playing: false, speed: 1 });
  state.current = { playing, speed };

  const overlay = useMemo(() => events.filter(isOverlayEvent), [events]);
  const overlayEvents = useCallback(() => overlay, [overlay]);
  const terminals = useTerminalsAt(events, pos);

  useEffect(() => {
    let alive = true;
    const p: Pipe = { decoder: new StreamDecoder(), clock: new SessionClock() };
    setPipe(p);
    Promise.all([backend.replayOpen(sessionId), backend.replayEvents(sessionId)]).then(
      ([i, evs]) => {
        if (!alive) return;
        setInfo(i);
        p.decoder.setCodecHint(i.codec);
        setEvents([...evs].sort((a, b) => a.t_ms - b.t_ms || a.seq - b.seq));
      },
      (e) => alive && setError(errorMessage(e)),
    );
    return () => {
      alive = false;
      gen.current++;
      p.decoder.close();
      backend.replayStop(sessionId).catch(() => undefined);
    };
  }, [sessionId]);

  // Frames set the clock; while seeking, frames before the target are decoded but the clock waits.
  useEffect(() => {
    if (!pipe) return;
    return pipe.decoder.onDrawn((f) => {
      // A session whose display changed size has parts of different sizes: follow the pictures.
      if (f.width > 0 && f.height > 0) setScreen((s) => (s && s.width === f.width && s.height === f.height ? s : { width: f.width, height: f.height }));
      if (f.tMs + 1 < target.current) return;
      if (pauseAtTarget.current) {
        // Paused seek: keep this picture, drop whatever else is queued.
        pauseAtTarget.current = false;
        gen.current++;
        pipe.decoder.restart();
        pipe.clock.set(f.tMs, 0);
        backend.replayStop(sessionId).catch(() => undefined);
        return;
      }
      pipe.clock.set(f.tMs, state.current.playing ? state.current.speed : 0);
    });
  }, [pipe, sessionId]);

  // The position readout follows the clock.
  useEffect(() => {
    if (!pipe) return;
    const id = window.setInterval(() => {
      const t = pipe.clock.now();
      setPos(info ? Math.min(t, info.duration_ms) : t);
    }, 100);
    return () => window.clearInterval(id);
  }, [pipe, info]);

  /** Plays from `from` (or shows the picture there and stops, when `keepPlaying` is false). */
  const start = useCallback(
    (from: number, sp: number, keepPlaying: boolean) => {
      if (!pipe) return;
      const g = ++gen.current;
      target.current = from;
      pauseAtTarget.current = !keepPlaying;
      pipe.decoder.restart(from);
      pipe.clock.set(from, 0);
      setPos(from);
      setPlaying(keepPlaying);
      state.current = { playing: keepPlaying, speed: sp };
      backend
        .replayStop(sessionId)
        .catch(() => undefined)
        .then(() => {
          if (g !== gen.current) return;
          return backend.replayPlay(sessionId, from, sp, (buf) => {
            if (g === gen.current) pipe.decoder.push(buf);
          });
        })
        .then(
          () => {
            if (g === gen.current) {
              setPlaying(false);
              pipe.clock.set(pipe.clock.now(), 0);
            }
          },
          (e) => {
            if (g === gen.current) {
              setPlaying(false);
              toast.error(errorMessage(e));
            }
          },
        );
    },
    [pipe, sessionId, toast],
  );

  const seek = (t: number) => start(Math.max(0, Math.round(t)), speed, playing);
  const play = () => start(Math.round(info && pos >= info.duration_ms - 50 ? 0 : pos), speed, true);
  const pause = () => {
    gen.current++;
    pipe?.clock.set(pipe.clock.now(), 0);
    setPlaying(false);
    backend.replayStop(sessionId).catch(() => undefined);
  };
  const changeSpeed = (s: number) => {
    setSpeed(s);
    if (playing && pipe) start(Math.round(pipe.clock.now()), s, true);
  };

  // The first picture: show the start without playing.
  const openedFor = useRef<Pipe | null>(null);
  useEffect(() => {
    if (info && pipe && openedFor.current !== pipe) {
      openedFor.current = pipe;
      start(0, 1, false);
    }
  }, [info, pipe, start]);

  if (error) {
    return (
      <div className="page">
        <header className="page-head compact">
          <a className="button ghost" href={href('replay')}>
            ← Library
          </a>
        </header>
        <div className="banner error">{error}</div>
      </div>
    );
  }

  return (
    <div className="page live-page replay-page">
      <header className="page-head compact">
        <div className="head-left">
          <a className="button ghost" href={href('replay')}>
            ← Library
          </a>
          <span className="strong mono">{sessionId}</span>
          {info && (
            <span className="muted small">
              {fmtDuration(info.duration_ms)} · {info.codec} {(screen ?? info).width}×{(screen ?? info).height} · {events.length} events
            </span>
          )}
        </div>
        <div className="control-bar">
          <button className={showStats ? 'toggle on' : 'toggle'} aria-pressed={showStats} onClick={() => setShowStats((s) => !s)}>
            Stats
          </button>
          <button onClick={() => setExporting(true)} disabled={!info}>
            Export evidence
          </button>
        </div>
      </header>
      <div className="live-body">
        <div className="live-main">
          <div className="stage-wrap">
            {pipe && (
              <VideoSurface
                decoder={pipe.decoder}
                clock={pipe.clock}
                stream={screen ?? (info ? { width: info.width, height: info.height } : null)}
                overlayEvents={overlayEvents}
                showStats={showStats}
                placeholder={info ? 'Loading…' : 'Opening session…'}
                label="Recording"
              />
            )}
          </div>
          <div className="transport">
            <button className="primary play" onClick={playing ? pause : play} disabled={!info} aria-label={playing ? 'Pause' : 'Play'}>
              {playing ? 'Pause' : 'Play'}
            </button>
            <span className="mono time" data-testid="replay-position">
              {fmtClock(pos)} / {fmtClock(info?.duration_ms ?? 0)}
            </span>
            <Legend />
            <div className="segmented small" role="radiogroup" aria-label="Speed">
              {SPEEDS.map((s) => (
                <button key={s} role="radio" aria-checked={speed === s} className={speed === s ? 'seg active' : 'seg'} onClick={() => changeSpeed(s)}>
                  {s}x
                </button>
              ))}
            </div>
          </div>
          {info && <Timeline duration={info.duration_ms} events={events} pos={pos} onSeek={seek} />}
          <section className="side-panel grow terminals-panel">
            <TerminalsPanel terminals={terminals} empty="No terminal output before this point." />
          </section>
        </div>
        <aside className="live-side">
          <section className="side-panel grow">
            <h3>Events</h3>
            <EventLog events={events} onSelect={(e) => seek(e.t_ms)} currentT={pos} />
          </section>
        </aside>
      </div>
      {exporting && info && <ExportDialog sessionId={sessionId} duration={info.duration_ms} pos={pos} onClose={() => setExporting(false)} />}
    </div>
  );
}

const LOG_KINDS = new Set(['error', 'refused', 'stalled', 'step', 'control', 'port', 'session']);

export function Timeline({ duration, events, pos, onSeek }: { duration: number; events: Event[]; pos: number; onSeek: (t: number) => void }) {
  const barRef = useRef<HTMLDivElement>(null);
  const seekRef = useRef(onSeek);
  seekRef.current = onSeek;
  const d = Math.max(1, duration);
  const pct = (t: number) => `${Math.min(100, Math.max(0, (t / d) * 100))}%`;
  const seekAt = (clientX: number) => {
    const r = barRef.current?.getBoundingClientRect();
    if (!r || !r.width) return;
    onSeek(((clientX - r.left) / r.width) * d);
  };
  // Markers change with the events only; the playhead moves on its own.
  const lanes = useMemo(() => {
    const at = (t: number) => `${Math.min(100, Math.max(0, (t / d) * 100))}%`;
    const marker = (e: Event, cls: string, color?: string) => (
      <span
        key={e.seq}
        className={cls}
        style={{ left: at(e.t_ms), background: color }}
        title={`${fmtClock(e.t_ms)} ${e.actor}: ${describe(e)}`}
        onClick={(ev) => {
          ev.stopPropagation();
          seekRef.current(e.t_ms);
        }}
      />
    );
    const actions = events.filter((e) => e.kind === 'action' || (e.kind === 'input' && !e.data?.move));
    const logs = events.filter((e) => LOG_KINDS.has(e.kind));
    return (
      <>
        <div className="lane lane-actions">{actions.map((e) => marker(e, 'marker', ACTOR_COLORS[e.actor]))}</div>
        <div className="lane lane-logs">
          {logs.map((e) => marker(e, `marker log${e.kind === 'error' || e.kind === 'refused' || e.kind === 'stalled' ? ' bad' : ''}`))}
        </div>
      </>
    );
  }, [events, d]);
  const ticks: number[] = [];
  const step = d > 600_000 ? 120_000 : d > 120_000 ? 30_000 : 10_000;
  for (let t = step; t < d; t += step) ticks.push(t);
  return (
    <div className="timeline" aria-label="Timeline">
      <div ref={barRef} className="timeline-bar" onClick={(e) => seekAt(e.clientX)} data-testid="timeline">
        {lanes}
        <div className="track">
          <div className="track-fill" style={{ width: pct(pos) }} />
        </div>
        <div className="playhead" style={{ left: pct(pos) }} />
      </div>
      <div className="timeline-ticks">
        {ticks.map((t) => (
          <span key={t} style={{ left: pct(t) }}>
            {fmtClock(t).slice(0, 5)}
          </span>
        ))}
      </div>
    </div>
  );
}

function Legend() {
  return (
    <div className="legend small muted">
      <span>
        <i style={{ background: ACTOR_COLORS.agent }} /> agent
      </span>
      <span>
        <i style={{ background: ACTOR_COLORS.human }} /> human
      </span>
      <span title="Steps, control changes, ports">
        <i className="log" /> log
      </span>
      <span title="Errors, refusals, stalls">
        <i className="log bad" /> error
      </span>
    </div>
  );
}

function parseClock(s: string): number | undefined | null {
  const t = s.trim();
  if (!t) return undefined;
  const m = /^(?:(\d+):)?(\d+(?:\.\d{1,3})?)$/.exec(t);
  if (!m) return null;
  return Math.round(((m[1] ? Number(m[1]) * 60 : 0) + Number(m[2])) * 1000);
}

function ExportDialog({ sessionId, duration, pos, onClose }: { sessionId: string; duration: number; pos: number; onClose: () => void }) {
  const toast = useToast();
  const [outDir, setOutDir] = useState(() => localStorage.getItem('porthole.exportDir') ?? '');
  const [from, setFrom] = useState('');
  const [to, setTo] = useState('');
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<{ dir: string; html: string; summary: string } | null>(null);

  const submit = async () => {
    const e: Record<string, string> = {};
    const f = parseClock(from);
    const t = parseClock(to);
    if (!outDir.trim()) e.outDir = 'Choose a folder to export into';
    if (f === null) e.from = 'Use mm:ss or seconds';
    if (t === null) e.to = 'Use mm:ss or seconds';
    if (f != null && t != null && t <= f) e.to = 'The end must come after the start';
    setErrors(e);
    if (Object.keys(e).length) return;
    setBusy(true);
    try {
      const r = await backend.exportEvidence(sessionId, outDir.trim(), f ?? undefined, t ?? undefined);
      localStorage.setItem('porthole.exportDir', outDir.trim());
      setResult(r);
    } catch (err) {
      const msg = errorMessage(err);
      const field = fieldOfError(msg, { outDir: ['out dir', 'output folder', 'folder', 'out_dir'], from: ['from', 'from_ms', 'range'], to: ['to', 'to_ms'] });
      if (field) setErrors({ [field]: msg });
      else toast.error(msg);
    } finally {
      setBusy(false);
    }
  };

  return (
    <Modal
      title="Export evidence"
      onClose={onClose}
      footer={
        result ? (
          <button className="primary" onClick={onClose}>
            Done
          </button>
        ) : (
          <>
            <button onClick={onClose} disabled={busy}>
              Cancel
            </button>
            <button className="primary" onClick={submit} disabled={busy}>
              {busy && <Spinner />}
              {busy ? 'Exporting…' : 'Export'}
            </button>
          </>
        )
      }
    >
      {result ? (
        <div className="export-result">
          <p>Exported to:</p>
          <dl className="kv">
            <dt>Folder</dt>
            <dd className="mono">{result.dir}</dd>
            <dt>Report</dt>
            <dd className="mono">{result.html}</dd>
            <dt>Summary</dt>
            <dd className="mono">{result.summary}</dd>
          </dl>
        </div>
      ) : (
        <>
          <p className="muted">A report to review or attach: an HTML page and a Markdown summary of the session's actions and output, stamped with the session clock.</p>
          <Field label="Folder" error={errors.outDir}>
            {(id) => <input id={id} value={outDir} onChange={(e) => setOutDir(e.target.value)} placeholder="/home/you/evidence" spellCheck={false} />}
          </Field>
          <div className="form-row">
            <Field label="From (optional)" error={errors.from} hint="mm:ss">
              {(id) => <input id={id} value={from} onChange={(e) => setFrom(e.target.value)} placeholder="00:00" />}
            </Field>
            <Field label="To (optional)" error={errors.to} hint={`up to ${fmtClock(duration).slice(0, 5)}`}>
              {(id) => <input id={id} value={to} onChange={(e) => setTo(e.target.value)} placeholder={fmtClock(duration).slice(0, 5)} />}
            </Field>
          </div>
          <button className="link" type="button" onClick={() => setFrom(fmtClock(pos).slice(0, 9))}>
            Start at the current position ({fmtClock(pos)})
          </button>
        </>
      )}
    </Modal>
  );
}
