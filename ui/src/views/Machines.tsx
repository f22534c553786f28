import { useCallback, useEffect, useRef, useState, type FormEvent } from 'react';
import { backend, type AgentCompat, type CreateMachine, type EnvSetup, type Health, type Machine, type ProgressSink, type ProviderKind } from '../backend';
import { Field } from '../components/Field';
import { ConfirmDialog, Modal, Spinner } from '../components/Modal';
import { nextProgress, OpProgress, startProgress, type OpProgressState } from '../components/OpProgress';
import { StatusDot } from '../components/StatusDot';
import { useToast } from '../components/Toasts';
import { errorMessage, fieldOfError, jsonPathOfError } from '../lib/errors';
import { fmtWhen } from '../lib/format';
import { href } from '../lib/route';
import { MACHINE_NAME_RULE, machineNameError } from '../lib/validate';

type HealthEntry = { health: Health; compat: AgentCompat; environment?: EnvSetup | null } | { error: string };

const PROVIDERS: { kind: ProviderKind; label: string; hint: string }[] = [
  { kind: 'local', label: 'Local sandbox', hint: 'bubblewrap on this computer; starts in seconds' },
  { kind: 'qemu', label: 'QEMU VM', hint: 'a full virtual machine from a disk image' },
  { kind: 'remote', label: 'Remote', hint: 'an agent already running elsewhere' },
];

export function MachinesView() {
  const toast = useToast();
  const [machines, setMachines] = useState<Machine[] | null>(null);
  const [health, setHealth] = useState<Record<string, HealthEntry>>({});
  const [busy, setBusy] = useState<Record<string, string>>({});
  const [progress, setProgress] = useState<Record<string, OpProgressState>>({});
  const [creating, setCreating] = useState<Machine | null>(null);
  const [showCreate, setShowCreate] = useState(false);
  const [snapshotOf, setSnapshotOf] = useState<string | null>(null);
  const [destroyOf, setDestroyOf] = useState<string | null>(null);
  const [loadError, setLoadError] = useState<string | null>(null);
  const alive = useRef(true);

  const load = useCallback(async () => {
    try {
      const list = await backend.machinesList();
      if (!alive.current) return;
      setMachines(list);
      setLoadError(null);
      const running = list.filter((m) => m.status === 'running');
      const entries = await Promise.all(
        running.map(async (m): Promise<[string, HealthEntry]> => {
          try {
            return [m.name, await backend.machineHealth(m.name)];
          } catch (e) {
            return [m.name, { error: errorMessage(e) }];
          }
        }),
      );
      if (alive.current) setHealth(Object.fromEntries(entries));
    } catch (e) {
      if (alive.current) setLoadError(errorMessage(e));
    }
  }, []);

  // An environment setting up (install can take minutes) is worth watching closely.
  const settingUp = Object.values(health).some((h) => !('error' in h) && h.environment?.state === 'running');
  useEffect(() => {
    alive.current = true;
    void load();
    const id = window.setInterval(load, settingUp ? 2_000 : 10_000);
    return () => {
      alive.current = false;
      window.clearInterval(id);
    };
  }, [load, settingUp]);

  /** Shows the progress of a long operation on `name` until `end`; late lines are ignored. */
  const track = (name: string) => {
    let open = true;
    setProgress((all) => ({ ...all, [name]: startProgress() }));
    return {
      onProgress: ((p) => {
        if (open) setProgress((all) => (all[name] ? { ...all, [name]: nextProgress(all[name], p) } : all));
      }) as ProgressSink,
      end: () => {
        open = false;
        setProgress((all) => {
          if (!(name in all)) return all;
          const n = { ...all };
          delete n[name];
          return n;
        });
      },
    };
  };
  const createTrack = useRef<ReturnType<typeof track> | null>(null);

  const op = async (name: string, label: string, fn: (onProgress?: ProgressSink) => Promise<unknown>, done?: string, withProgress = false) => {
    setBusy((b) => ({ ...b, [name]: label }));
    const t = withProgress ? track(name) : null;
    try {
      await fn(t?.onProgress);
      if (done) toast.success(done);
    } catch (e) {
      toast.error(errorMessage(e));
    } finally {
      t?.end();
      setBusy((b) => {
        const n = { ...b };
        delete n[name];
        return n;
      });
      void load();
    }
  };

  const rows = [...(machines ?? [])];
  if (creating && !rows.some((m) => m.name === creating.name)) rows.unshift(creating);
  const runningCount = rows.filter((m) => m.status === 'running').length;

  return (
    <div className="page">
      <header className="page-head">
        <div>
          <h1>Machines</h1>
          <p className="muted">{machines ? `${rows.length} machines, ${runningCount} running` : 'Loading…'}</p>
        </div>
        <div className="actions">
          <button onClick={() => void load()}>Refresh</button>
          <button className="primary" onClick={() => setShowCreate((s) => !s)} aria-expanded={showCreate}>
            {showCreate ? 'Close form' : 'New machine'}
          </button>
        </div>
      </header>

      {showCreate && (
        <CreateMachineForm
          onCancel={() => setShowCreate(false)}
          onStart={(m) => {
            setCreating(m);
            createTrack.current = track(m.name);
          }}
          onProgress={(p) => createTrack.current?.onProgress(p)}
          onDone={(m) => {
            createTrack.current?.end();
            createTrack.current = null;
            setCreating(null);
            if (m) {
              setShowCreate(false);
              toast.success(`Machine ${m.name} is ${m.status}`);
            }
            void load();
          }}
        />
      )}

      {loadError && <div className="banner error">{loadError}</div>}

      {machines && rows.length === 0 ? (
        <div className="empty">
          <p>No machines yet.</p>
          <button className="primary" onClick={() => setShowCreate(true)}>
            Create a machine
          </button>
        </div>
      ) : (
        <div className="table-wrap">
          <table className="table" aria-label="Machines">
            <thead>
              <tr>
                <th>Name</th>
                <th>Provider</th>
                <th>Agent</th>
                <th>Address</th>
                <th className="right">Actions</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((m) => {
                const h = health[m.name];
                // The machine being created: our placeholder row, then the listed one while it is `creating`.
                const isNew = creating?.name === m.name && (m === creating || m.status === 'creating');
                const b = busy[m.name] ?? (isNew ? 'Creating…' : undefined);
                const status = b ? 'creating' : m.status;
                const pr = b ? progress[m.name] : undefined;
                return (
                  <tr key={m.name} data-testid={`machine-${m.name}`}>
                    <td>
                      <div className="name-cell">
                        <StatusDot status={status} />
                        <div>
                          <div className="strong">{m.name}</div>
                          {pr ? (
                            <OpProgress state={pr} label={b ?? 'Working…'} what={`${(b ?? 'Working…').replace(/…$/, '')} ${m.name}`} />
                          ) : (
                            <div className="muted small">
                              {b ?? m.status} · created {fmtWhen(m.created_at)}
                            </div>
                          )}
                          {m.status === 'failed' && m.error && !pr && (
                            <div className="cell-error small clamp-2" title={m.error}>
                              {m.error}
                            </div>
                          )}
                        </div>
                      </div>
                    </td>
                    <td>{m.provider}</td>
                    <td>
                      <AgentCell machine={m} entry={h} />
                    </td>
                    <td className="mono small nowrap">{m.agent_url ?? '—'}</td>
                    <td className="right">
                      <div className="row-actions">
                        {pr ? null : b ? (
                          <span className="muted small busy">
                            <Spinner /> {b}
                          </span>
                        ) : (
                          <>
                            {m.status === 'running' && (
                              <a className="button" href={href('live', m.name)}>
                                Live
                              </a>
                            )}
                            {m.status === 'running' ? (
                              <button onClick={() => op(m.name, 'Stopping…', () => backend.machineStop(m.name), `Stopped ${m.name}`)}>Stop</button>
                            ) : (
                              <button onClick={() => op(m.name, 'Starting…', (onProgress) => backend.machineStart(m.name, onProgress), `Started ${m.name}`, true)}>Start</button>
                            )}
                            <button onClick={() => setSnapshotOf(m.name)} disabled={m.provider === 'remote'} title={m.provider === 'remote' ? 'Remote machines are snapshotted on their host' : m.provider === 'qemu' ? 'Save the VM, memory included' : 'Save the disk state'}>
                              Snapshot
                            </button>
                            <button className="danger-ghost" onClick={() => setDestroyOf(m.name)}>
                              Destroy
                            </button>
                          </>
                        )}
                      </div>
                    </td>
                  </tr>
                );
              })}
              {!machines && (
                <tr>
                  <td colSpan={5} className="muted">
                    <Spinner /> Loading machines…
                  </td>
                </tr>
              )}
            </tbody>
          </table>
        </div>
      )}

      {snapshotOf && (
        <SnapshotDialog
          machine={snapshotOf}
          provider={machines?.find((m) => m.name === snapshotOf)?.provider ?? 'local'}
          onClose={() => setSnapshotOf(null)}
          onSnapshot={(snap) => {
            const name = snapshotOf;
            setSnapshotOf(null);
            void op(name, 'Snapshotting…', (onProgress) => backend.machineSnapshot(name, snap, onProgress), `Saved snapshot ${snap} of ${name}`, true);
          }}
        />
      )}
      {destroyOf && (
        <ConfirmDialog
          title={`Destroy ${destroyOf}?`}
          confirm="Destroy"
          danger
          onCancel={() => setDestroyOf(null)}
          onConfirm={() => {
            const name = destroyOf;
            setDestroyOf(null);
            void op(name, 'Destroying…', () => backend.machineDestroy(name), `Destroyed ${name}`);
          }}
        >
          <p>
            The machine and its disk are deleted. Sessions already synced stay in the Replay library; sync first to keep the current one.
          </p>
        </ConfirmDialog>
      )}
    </div>
  );
}

function AgentCell({ machine, entry }: { machine: Machine; entry?: HealthEntry }) {
  if (machine.status !== 'running') return <span className="muted">—</span>;
  if (!entry) return <span className="muted small">checking…</span>;
  if ('error' in entry) return <span className="badge warn" title={entry.error}>unreachable</span>;
  const { health, compat } = entry;
  return (
    <div className="agent-cell">
      <span className="mono small">{compat.agent_version || health.version}</span>
      {!compat.ok && (
        <span className="badge warn" title={compat.message ?? `This app (${compat.app_version}) needs a newer agent`}>
          upgrade the agent
        </span>
      )}
      <EnvBadge env={entry.environment} />
      {health.status === 'degraded' ? (
        <span className="badge degraded" title={health.problems.join('\n')}>
          degraded: {health.problems[0] ?? 'see details'}
        </span>
      ) : (
        compat.ok && <span className="badge ok">healthy</span>
      )}
    </div>
  );
}

/** The environment's setup at a glance: which step runs, which failed, or that it is ready. */
function EnvBadge({ env }: { env?: EnvSetup | null }) {
  if (!env || env.state === 'none') return null;
  const steps = env.steps ?? [];
  const label = env.name ? `environment ${env.name}` : 'environment';
  if (env.state === 'running') {
    const i = steps.findIndex((s) => s.state === 'running');
    const step = i >= 0 ? steps[i] : null;
    return (
      <span className="badge setup" title={`${label}: setting up`} data-testid="env-setup">
        <Spinner /> {step ? `${step.name} (${i + 1}/${steps.length})` : 'setting up'}
      </span>
    );
  }
  if (env.state === 'failed') {
    const step = steps.find((s) => s.state === 'failed');
    const what = step ? `${step.name} failed${step.exit_code != null ? ` (exit ${step.exit_code})` : ''}` : 'setup failed';
    return (
      <span className="badge warn" title={step?.message ?? `${label}: ${what}`} data-testid="env-setup">
        {what}
      </span>
    );
  }
  return (
    <span className="badge subtle" title={`${label}: ${steps.map((s) => `${s.name} ${s.state}`).join(', ')}`} data-testid="env-setup">
      env ready
    </span>
  );
}

const FIELD_NAMES: Record<string, string[]> = {
  name: ['machine name', 'name', '--name'],
  url: ['url', '--url', 'agent url'],
  tokenFile: ['token file', 'token_file', '--token-file', 'tokenfile'],
  fingerprint: ['fingerprint', '--fingerprint'],
  envPath: ['environment file', 'env file', 'env', '--env', 'envpath', 'env_path'],
  workspace: ['workspace', '--workspace'],
};

type Errors = Partial<Record<keyof typeof FIELD_NAMES, string>>;

export function validateCreate(f: CreateMachine): Errors {
  const e: Errors = {};
  const n = machineNameError(f.name);
  if (n) e.name = n;
  if (f.provider === 'remote') {
    if (!f.url) e.url = 'A remote machine needs the agent URL';
    else if (!/^https?:\/\/[^/\s]+\/?$/.test(f.url)) e.url = 'Expected http[s]://host:port';
    if (!f.tokenFile) e.tokenFile = 'A remote machine needs a token file';
  }
  return e;
}

function CreateMachineForm(props: { onCancel: () => void; onStart: (m: Machine) => void; onProgress: ProgressSink; onDone: (m: Machine | null) => void }) {
  const toast = useToast();
  const [f, setF] = useState<CreateMachine>({ name: '', provider: 'local', envPath: '', workspace: '', url: '', tokenFile: '', fingerprint: '', browser: true });
  const [errors, setErrors] = useState<Errors>({});
  const [tried, setTried] = useState(false);
  const [pending, setPending] = useState(false);

  const set = (patch: Partial<CreateMachine>) => {
    const next = { ...f, ...patch };
    setF(next);
    if (tried) setErrors(validateCreate(next));
  };

  const submit = async (ev: FormEvent) => {
    ev.preventDefault();
    setTried(true);
    const errs = validateCreate(f);
    setErrors(errs);
    if (Object.keys(errs).length) return;
    const remote = f.provider === 'remote';
    const req: CreateMachine = { name: f.name, provider: f.provider };
    if (f.envPath) req.envPath = f.envPath;
    if (!remote && f.workspace) req.workspace = f.workspace;
    if (remote) {
      req.url = f.url!.replace(/\/+$/, '');
      req.tokenFile = f.tokenFile;
      if (f.fingerprint) req.fingerprint = f.fingerprint;
    } else {
      req.browser = f.browser;
    }
    setPending(true);
    props.onStart({ name: f.name, provider: f.provider, status: 'creating', agent_url: null, spec: {}, created_at: Date.now() });
    try {
      const m = await backend.machineCreate(req, props.onProgress);
      props.onDone(m);
    } catch (e) {
      const msg = errorMessage(e);
      // A problem in the environment file reads `terminals[1].command: ...`.
      const field = fieldOfError(msg, FIELD_NAMES) ?? (req.envPath && jsonPathOfError(msg) ? 'envPath' : null);
      if (field) setErrors({ [field]: msg });
      else toast.error(msg);
      props.onDone(null);
    } finally {
      setPending(false);
    }
  };

  const remote = f.provider === 'remote';
  return (
    <form className="panel create-form" onSubmit={submit} noValidate aria-label="New machine">
      <div className="panel-head">
        <h2>New machine</h2>
      </div>
      <div className="segmented" role="radiogroup" aria-label="Provider">
        {PROVIDERS.map((p) => (
          <button
            type="button"
            key={p.kind}
            role="radio"
            aria-checked={f.provider === p.kind}
            className={f.provider === p.kind ? 'seg active' : 'seg'}
            onClick={() => set({ provider: p.kind })}
            title={p.hint}
          >
            {p.label}
          </button>
        ))}
      </div>
      <p className="muted small">{PROVIDERS.find((p) => p.kind === f.provider)?.hint}</p>
      <div className="form-grid">
        <Field label="Name" error={errors.name} hint={MACHINE_NAME_RULE}>
          {(id) => <input id={id} value={f.name} onChange={(e) => set({ name: e.target.value })} placeholder="web-app" autoComplete="off" spellCheck={false} aria-invalid={!!errors.name} />}
        </Field>
        <Field label="Environment file" error={errors.envPath} hint="Optional: .porthole/environment.json or .cursor/environment.json">
          {(id) => <input id={id} value={f.envPath} onChange={(e) => set({ envPath: e.target.value })} placeholder="/home/you/src/app/.porthole/environment.json" spellCheck={false} aria-invalid={!!errors.envPath} />}
        </Field>
        {!remote && (
          <Field label="Workspace" error={errors.workspace} hint="Optional: a folder shared into the machine">
            {(id) => <input id={id} value={f.workspace} onChange={(e) => set({ workspace: e.target.value })} placeholder="/home/you/src/app" spellCheck={false} aria-invalid={!!errors.workspace} />}
          </Field>
        )}
        {remote && (
          <>
            <Field label="Agent URL" error={errors.url} hint="http[s]://host:port, no path">
              {(id) => <input id={id} value={f.url} onChange={(e) => set({ url: e.target.value })} placeholder="https://build-box.lan:7443" spellCheck={false} aria-invalid={!!errors.url} />}
            </Field>
            <Field label="Token file" error={errors.tokenFile} hint="A file holding the agent's bearer token">
              {(id) => <input id={id} value={f.tokenFile} onChange={(e) => set({ tokenFile: e.target.value })} placeholder="/home/you/.config/porthole/build-box.token" spellCheck={false} aria-invalid={!!errors.tokenFile} />}
            </Field>
            <Field label="TLS fingerprint" error={errors.fingerprint} hint="Optional: pin the agent's certificate (sha256)">
              {(id) => <input id={id} value={f.fingerprint} onChange={(e) => set({ fingerprint: e.target.value })} placeholder="sha256:…" spellCheck={false} aria-invalid={!!errors.fingerprint} />}
            </Field>
          </>
        )}
      </div>
      {!remote && (
        <label className="check">
          <input type="checkbox" checked={!!f.browser} onChange={(e) => set({ browser: e.target.checked })} /> Start a browser on the desktop
        </label>
      )}
      <div className="form-actions">
        <button type="button" onClick={props.onCancel} disabled={pending}>
          Cancel
        </button>
        <button type="submit" className="primary" disabled={pending}>
          {pending && <Spinner />}
          {pending ? 'Creating…' : 'Create machine'}
        </button>
      </div>
    </form>
  );
}

function SnapshotDialog(props: { machine: string; provider: string; onClose: () => void; onSnapshot: (name: string) => void }) {
  const [name, setName] = useState(`${props.machine}-${new Date().toISOString().slice(0, 10)}`.slice(0, 40));
  // The same rule as crates/core's valid_name.
  const error = /^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$/.test(name) ? null : "Use up to 40 letters, digits, '-' or '_', starting with a letter or digit";
  return (
    <Modal
      title={`Snapshot ${props.machine}`}
      onClose={props.onClose}
      footer={
        <>
          <button onClick={props.onClose}>Cancel</button>
          <button className="primary" disabled={!!error} onClick={() => props.onSnapshot(name)}>
            Save snapshot
          </button>
        </>
      }
    >
      <p className="muted">
        {props.provider === 'qemu'
          ? 'The disk and the running VM (memory included) are saved; machines made from it resume where this one is now.'
          : 'Only the disk is saved; running processes are not. New machines can start from it.'}
      </p>
      <Field label="Snapshot name" error={name ? error : null}>
        {(id) => <input id={id} value={name} onChange={(e) => setName(e.target.value)} spellCheck={false} />}
      </Field>
    </Modal>
  );
}
