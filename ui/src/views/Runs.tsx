import { useCallback, useEffect, useMemo, useRef, useState, type FormEvent } from 'react';
import { backend, type Event, type Run } from '../backend';
import { Field } from '../components/Field';
import { ConfirmDialog, Spinner } from '../components/Modal';
import { StatusDot } from '../components/StatusDot';
import { TerminalView } from '../components/Terminal';
import { useToast } from '../components/Toasts';
import { describe } from '../lib/describe';
import { errorMessage, fieldOfError, jsonPathOfError } from '../lib/errors';
import { fmtClock, fmtWhen } from '../lib/format';
import { href } from '../lib/route';
import { ControlBar, LiveStage } from './Live';
import { useFitDisplay } from './useFitDisplay';
import { useLive } from './useLive';

const ACTIVE = new Set(['starting', 'running', 'creating']);

function statusDot(status: string): string {
  if (ACTIVE.has(status)) return status === 'running' ? 'running' : 'creating';
  if (status === 'failed') return 'failed';
  return 'stopped';
}

export function RunsView({ runId }: { runId: string | null }) {
  return runId ? <RunDetail id={runId} /> : <RunList />;
}

/** Watches running runs' machines for `stalled` events not followed by agent activity. */
function useStalls(runs: Run[] | null): Record<string, Event | null> {
  const [stalls, setStalls] = useState<Record<string, Event | null>>({});
  const cursors = useRef<Record<string, { after: number; stall: Event | null }>>({});
  const active = useMemo(() => (runs ?? []).filter((r) => ACTIVE.has(r.status)).map((r) => `${r.id}\u0000${r.machine}`).join('\n'), [runs]);
  useEffect(() => {
    if (!active) return;
    let alive = true;
    const pairs = active.split('\n').map((l) => l.split('\u0000') as [string, string]);
    const poll = async () => {
      for (const [id, machine] of pairs) {
        const c = (cursors.current[id] ??= { after: 0, stall: null });
        try {
          for (let page = 0; page < 20; page++) {
            const r = await backend.events(machine, c.after);
            for (const e of r.events) {
              if (e.kind === 'stalled') c.stall = e;
              else if (c.stall && e.actor === 'agent' && e.t_ms > c.stall.t_ms) c.stall = null;
            }
            if (!r.events.length || r.next <= c.after) break;
            c.after = r.next;
          }
        } catch {
          /* machine gone: keep what we knew */
        }
      }
      if (alive) setStalls(Object.fromEntries(Object.entries(cursors.current).map(([k, v]) => [k, v.stall])));
    };
    void poll();
    const t = window.setInterval(poll, 5000);
    return () => {
      alive = false;
      window.clearInterval(t);
    };
  }, [active]);
  return stalls;
}

function RunList() {
  const toast = useToast();
  const [runs, setRuns] = useState<Run[] | null>(null);
  const [showForm, setShowForm] = useState(false);
  const stalls = useStalls(runs);

  const load = useCallback(async () => {
    try {
      setRuns(await backend.runsList());
    } catch (e) {
      toast.error(errorMessage(e));
      setRuns([]);
    }
  }, [toast]);

  useEffect(() => {
    void load();
    const t = window.setInterval(load, 10_000);
    return () => window.clearInterval(t);
  }, [load]);

  return (
    <div className="page">
      <header className="page-head">
        <div>
          <h1>Runs</h1>
          <p className="muted">A repository and a task go in; an agent works on its own branch in its own machine; the branch and its evidence come out.</p>
        </div>
        <div className="actions">
          <button className="primary" onClick={() => setShowForm((s) => !s)} aria-expanded={showForm}>
            {showForm ? 'Close form' : 'New run'}
          </button>
        </div>
      </header>
      {showForm && (
        <StartRunForm
          onCancel={() => setShowForm(false)}
          onStarted={(r) => {
            setShowForm(false);
            toast.success(`Run ${r.id} started on ${r.machine}`);
            void load();
          }}
        />
      )}
      {!runs ? (
        <div className="empty">
          <Spinner /> Loading runs…
        </div>
      ) : runs.length === 0 ? (
        <div className="empty">No runs yet. Start one with a repository, a task and an agent command.</div>
      ) : (
        <div className="run-grid" aria-label="Runs">
          {runs.map((r) => (
            <a key={r.id} className="run-card" href={href('runs', r.id)} data-testid={`run-${r.id}`}>
              <div className="row-between">
                <span className="run-status">
                  <StatusDot status={statusDot(r.status)} />
                  <span className="mono strong">{r.id}</span>
                  <span className="muted small">{r.status}</span>
                </span>
                {stalls[r.id] && (
                  <span className="badge warn" title={describe(stalls[r.id]!)}>
                    stalled
                  </span>
                )}
              </div>
              <div className="run-task">{r.task}</div>
              <div className="small muted">
                <span className="mono">{r.repo.split('/').filter(Boolean).pop()}</span> · <span className="mono">{r.branch}</span> from <span className="mono">{r.base}</span>
              </div>
              <div className="small muted mono ellipsis" title={r.agent}>
                {r.agent}
              </div>
              {r.error && <div className="cell-error small">{r.error}</div>}
              <div className="small muted">{fmtWhen(r.created_at)}</div>
            </a>
          ))}
        </div>
      )}
    </div>
  );
}

const RUN_FIELDS = {
  repo: ['repo', 'repository', '--repo'],
  branch: ['branch', 'base', '--branch', 'base branch'],
  task: ['task', '--task'],
  agent: ['agent', 'agent command', '--agent'],
  envPath: ['env', 'environment file', '--env', 'envpath'],
};

function StartRunForm({ onCancel, onStarted }: { onCancel: () => void; onStarted: (r: Run) => void }) {
  const toast = useToast();
  const [f, setF] = useState({ repo: '', branch: '', task: '', agent: 'claude -p "$PORTHOLE_TASK"', envPath: '' });
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [busy, setBusy] = useState(false);
  const set = (k: keyof typeof f, v: string) => setF((s) => ({ ...s, [k]: v }));

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const errs: Record<string, string> = {};
    if (!f.repo.trim()) errs.repo = 'Give a repository path or URL';
    if (!f.task.trim()) errs.task = 'Describe the task';
    if (!f.agent.trim()) errs.agent = 'Give the command that starts the agent';
    setErrors(errs);
    if (Object.keys(errs).length) return;
    setBusy(true);
    try {
      const r = await backend.runStart({
        repo: f.repo.trim(),
        task: f.task.trim(),
        agent: f.agent.trim(),
        ...(f.branch.trim() ? { branch: f.branch.trim() } : {}),
        ...(f.envPath.trim() ? { envPath: f.envPath.trim() } : {}),
      });
      onStarted(r);
    } catch (err) {
      const msg = errorMessage(err);
      const k = fieldOfError(msg, RUN_FIELDS) ?? (f.envPath.trim() && jsonPathOfError(msg) ? 'envPath' : null);
      if (k) setErrors({ [k]: msg });
      else toast.error(msg);
    } finally {
      setBusy(false);
    }
  };

  return (
    <form className="panel" onSubmit={submit} noValidate aria-label="New run">
      <div className="panel-head">
        <h2>New run</h2>
      </div>
      <div className="form-grid">
        <Field label="Repository" error={errors.repo} hint="A local path or a git URL">
          {(id) => <input id={id} value={f.repo} onChange={(e) => set('repo', e.target.value)} placeholder="/home/you/src/app" spellCheck={false} />}
        </Field>
        <Field label="Base branch" error={errors.branch} hint="Optional; the default branch when empty">
          {(id) => <input id={id} value={f.branch} onChange={(e) => set('branch', e.target.value)} placeholder="main" spellCheck={false} />}
        </Field>
        <Field label="Task" error={errors.task} className="span-2">
          {(id) => <textarea id={id} rows={3} value={f.task} onChange={(e) => set('task', e.target.value)} placeholder="Fix the flaky login test and explain the cause in the commit message" />}
        </Field>
        <Field label="Agent command" error={errors.agent} hint="Runs from the repository root; the task is in $PORTHOLE_TASK">
          {(id) => <input id={id} className="mono" value={f.agent} onChange={(e) => set('agent', e.target.value)} spellCheck={false} />}
        </Field>
        <Field label="Environment file" error={errors.envPath} hint="Optional; found in the repository when empty">
          {(id) => <input id={id} value={f.envPath} onChange={(e) => set('envPath', e.target.value)} placeholder=".porthole/environment.json" spellCheck={false} />}
        </Field>
      </div>
      <div className="form-actions">
        <button type="button" onClick={onCancel} disabled={busy}>
          Cancel
        </button>
        <button type="submit" className="primary" disabled={busy}>
          {busy && <Spinner />}
          {busy ? 'Starting…' : 'Start run'}
        </button>
      </div>
    </form>
  );
}

interface TaskItem {
  text: string;
  done: boolean;
}

function RunDetail({ id }: { id: string }) {
  const toast = useToast();
  const [run, setRun] = useState<Run | null | undefined>(undefined);
  const [machineUp, setMachineUp] = useState<boolean | null>(null);
  const [tab, setTab] = useState<'tasks' | 'diff'>('tasks');
  const [collect, setCollect] = useState<Record<string, unknown> | null>(null);
  const [collecting, setCollecting] = useState(false);
  const [stopAsk, setStopAsk] = useState(false);
  const [stopping, setStopping] = useState(false);
  const [showStats, setShowStats] = useState(false);

  const load = useCallback(async () => {
    try {
      const [runs, machines] = await Promise.all([backend.runsList(), backend.machinesList()]);
      const r = runs.find((x) => x.id === id) ?? null;
      setRun(r);
      setMachineUp(!!r && machines.some((m) => m.name === r.machine && m.status === 'running'));
    } catch (e) {
      toast.error(errorMessage(e));
    }
  }, [id, toast]);

  useEffect(() => {
    void load();
  }, [load]);

  const live = useLive(machineUp && run ? run.machine : null);
  const fit = useFitDisplay(machineUp && run ? run.machine : null, live);
  const transcript = live.terminals.get('agent') ?? [];
  const tasks: TaskItem[] | null = useMemo(() => {
    for (let i = live.events.length - 1; i >= 0; i--) {
      const e = live.events[i];
      if (e.kind === 'tasks' && Array.isArray(e.data?.items)) return e.data.items as TaskItem[];
    }
    return null;
  }, [live.events]);

  const doCollect = async () => {
    setCollecting(true);
    try {
      const r = await backend.runCollect(id);
      setCollect(r ?? {});
      setTab('diff');
      toast.success(`Collected ${String(r?.branch ?? run?.branch ?? 'the branch')}`);
    } catch (e) {
      toast.error(errorMessage(e));
    } finally {
      setCollecting(false);
    }
  };

  const doStop = async () => {
    setStopping(true);
    try {
      await backend.runStop(id);
      toast.success(`Stopped ${id}; its branch keeps every commit`);
      setStopAsk(false);
      await load();
    } catch (e) {
      toast.error(errorMessage(e));
    } finally {
      setStopping(false);
    }
  };

  if (run === undefined) {
    return (
      <div className="page">
        <div className="empty">
          <Spinner /> Loading run…
        </div>
      </div>
    );
  }
  if (run === null) {
    return (
      <div className="page">
        <header className="page-head compact">
          <a className="button ghost" href={href('runs')}>
            ← Runs
          </a>
        </header>
        <div className="banner error">No run {id}.</div>
      </div>
    );
  }

  const diffStat = typeof collect?.diff_stat === 'string' ? (collect.diff_stat as string) : typeof collect?.stat === 'string' ? (collect.stat as string) : null;

  return (
    <div className="page live-page">
      <header className="page-head compact">
        <div className="head-left">
          <a className="button ghost" href={href('runs')}>
            ← Runs
          </a>
          <StatusDot status={statusDot(run.status)} />
          <span className="mono strong">{run.id}</span>
          <span className="muted small">{run.status}</span>
          {live.stalled && (
            <span className="badge warn" title={describe(live.stalled)}>
              stalled since {fmtClock(live.stalled.t_ms)}
            </span>
          )}
          <span className="mono small muted ellipsis">{run.branch}</span>
        </div>
        <div className="control-bar">
          {machineUp && <ControlBar live={live} showStats={showStats} onToggleStats={() => setShowStats((s) => !s)} fit={fit} />}
          <button onClick={doCollect} disabled={collecting}>
            {collecting && <Spinner />}Collect
          </button>
          {ACTIVE.has(run.status) && (
            <button className="danger-ghost" onClick={() => setStopAsk(true)}>
              Stop run
            </button>
          )}
        </div>
      </header>
      <div className="live-body">
        <div className="live-main">
          {machineUp ? (
            <LiveStage name={run.machine} live={live} showStats={showStats} onAreaResize={fit.onArea} />
          ) : (
            <div className="stage-wrap">
              <div className="video-box">
                <div className="empty">
                  <p>The run's machine ({run.machine}) is not running.</p>
                  <a className="button" href={href('replay')}>
                    Find its recording in Replay
                  </a>
                </div>
              </div>
            </div>
          )}
          <section className="side-panel grow">
            <div className="tabs" role="tablist" aria-label="Run details">
              {(['tasks', 'diff'] as const).map((t) => (
                <button key={t} role="tab" aria-selected={tab === t} className={tab === t ? 'tab active' : 'tab'} onClick={() => setTab(t)}>
                  {t === 'tasks' ? 'Tasks' : 'Diff'}
                </button>
              ))}
            </div>
            <div className="tab-body">
              {tab === 'tasks' &&
                (tasks ? (
                  <ul className="tasks">
                    {tasks.map((t, i) => (
                      <li key={i} className={t.done ? 'done' : ''}>
                        <span className="box" aria-hidden>
                          {t.done ? '✓' : ''}
                        </span>
                        {t.text}
                      </li>
                    ))}
                  </ul>
                ) : (
                  <div className="empty small">The agent has not published a task list.</div>
                ))}
              {tab === 'diff' &&
                (collect ? (
                  <div className="collect">
                    {diffStat ? <pre className="diffstat mono">{diffStat}</pre> : <div className="muted small">No diff stat in the collect report.</div>}
                    <dl className="kv">
                      {['branch', 'commits', 'patch', 'summary'].map((k) =>
                        collect[k] !== undefined ? (
                          <div key={k} className="kv-pair">
                            <dt>{k}</dt>
                            <dd className="mono">{String(collect[k])}</dd>
                          </div>
                        ) : null,
                      )}
                    </dl>
                  </div>
                ) : (
                  <div className="empty small">
                    <p>Collect brings the run's branch into the repository (without touching its working tree) and shows what changed.</p>
                    <button onClick={doCollect} disabled={collecting}>
                      {collecting && <Spinner />}Collect now
                    </button>
                  </div>
                ))}
            </div>
          </section>
        </div>
        <aside className="live-side">
          <section className="side-panel">
            <h3>Task</h3>
            <p className="run-task-full">{run.task}</p>
            <div className="small muted mono">{run.agent}</div>
            {run.error && <div className="cell-error small">{run.error}</div>}
          </section>
          <section className="side-panel grow">
            <h3>Transcript</h3>
            {transcript.length ? (
              <TerminalView name="agent" chunks={transcript} active />
            ) : (
              <div className="empty small">{machineUp ? 'No output from the agent yet.' : 'The transcript is in the recording.'}</div>
            )}
          </section>
        </aside>
      </div>
      {stopAsk && (
        <ConfirmDialog title={`Stop run ${run.id}?`} confirm="Stop run" danger busy={stopping} onCancel={() => setStopAsk(false)} onConfirm={doStop}>
          <p>The run's machine is synced and destroyed. The branch {run.branch} keeps every commit the agent made.</p>
        </ConfirmDialog>
      )}
    </div>
  );
}

