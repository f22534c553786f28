import { useEffect, useMemo, useRef, useState } from 'react';
import { backend, type EnvCheck, type EnvProblem } from '../backend';
import { Field } from '../components/Field';
import { Modal, Spinner } from '../components/Modal';
import { useToast } from '../components/Toasts';
import { errorMessage } from '../lib/errors';
import { normalizePath } from '../lib/jsonpath';
import { SchemaForm, type Errors, type Schema } from './env/SchemaForm';

/** The editor edits Porthole's own format; the checker tells the kind by this name. */
export const EDITOR_FILE = '.porthole/environment.json';
const DRAFT_KEY = 'porthole.environmentDraft';

export const SAMPLE_ENVIRONMENT = {
  name: 'todo-app',
  user: 'dev',
  install: 'npm ci',
  start: 'docker compose up -d db',
  terminals: [
    { name: 'dev', command: 'npm run dev', description: 'Vite dev server on :3000' },
    { name: 'tests', command: 'npm test -- --watch' },
  ],
  ports: [{ port: 3000, name: 'web' }],
  secrets: ['DATABASE_URL'],
  env: { NODE_ENV: 'development' },
  display: { width: 1280, height: 800 },
};

type Doc = Record<string, unknown>;

function loadDraft(): { doc: Doc; text: string } {
  const saved = localStorage.getItem(DRAFT_KEY);
  if (saved) {
    try {
      const v = JSON.parse(saved);
      if (v && typeof v === 'object' && !Array.isArray(v)) return { doc: v, text: saved };
    } catch {
      /* a draft that no longer parses: keep its text */
      return { doc: {}, text: saved };
    }
  }
  return { doc: SAMPLE_ENVIRONMENT, text: JSON.stringify(SAMPLE_ENVIRONMENT, null, 2) };
}

export function EnvironmentsView() {
  const toast = useToast();
  const [schema, setSchema] = useState<Schema | null>(null);
  const [state, setState] = useState(loadDraft);
  const [textError, setTextError] = useState<string | null>(null);
  const [problems, setProblems] = useState<EnvProblem[]>([]);
  const [checking, setChecking] = useState(false);
  const [checkedOnce, setCheckedOnce] = useState(false);
  const [importing, setImporting] = useState(false);
  const [imported, setImported] = useState<{ from: string; notMapped: string[] } | null>(null);
  const [secretNames, setSecretNames] = useState<string[]>([]);
  const checkSeq = useRef(0);

  useEffect(() => {
    backend.envSchema().then(setSchema, (e) => toast.error(errorMessage(e)));
    backend.secretsList().then(
      (r) => setSecretNames([...new Set(r.secrets.map((s) => s.name))]),
      () => undefined,
    );
  }, [toast]);

  // Check as you type (debounced); the newest answer wins.
  useEffect(() => {
    localStorage.setItem(DRAFT_KEY, state.text);
    const seq = ++checkSeq.current;
    const id = window.setTimeout(async () => {
      setChecking(true);
      try {
        const r = await backend.envCheck(state.text, EDITOR_FILE);
        if (seq === checkSeq.current) {
          setProblems(r.problems);
          setCheckedOnce(true);
        }
      } catch (e) {
        if (seq === checkSeq.current) toast.error(errorMessage(e));
      } finally {
        if (seq === checkSeq.current) setChecking(false);
      }
    }, 400);
    return () => window.clearTimeout(id);
  }, [state.text, toast]);

  const errors: Errors = useMemo(() => {
    const m: Errors = new Map();
    for (const p of problems) {
      const k = normalizePath(p.path);
      m.set(k, [...(m.get(k) ?? []), p.message]);
    }
    return m;
  }, [problems]);

  const fromForm = (doc: Doc) => {
    setState({ doc, text: JSON.stringify(doc, null, 2) });
    setTextError(null);
  };

  const fromText = (text: string) => {
    try {
      const v = JSON.parse(text);
      if (!v || typeof v !== 'object' || Array.isArray(v)) {
        setState((s) => ({ doc: s.doc, text }));
        setTextError('Expected a JSON object: { ... }');
        return;
      }
      setState({ doc: v, text });
      setTextError(null);
    } catch (e) {
      setState((s) => ({ doc: s.doc, text }));
      setTextError((e as Error).message);
    }
  };

  const focusPath = (path: string) => {
    const p = normalizePath(path).replace(/["\\]/g, '\\$&');
    const el = document.querySelector<HTMLElement>(`[data-path="${p}"]`) ?? document.querySelector<HTMLElement>(`[data-field="${p}"]`);
    el?.scrollIntoView({ block: 'center' });
    el?.focus();
  };

  const copy = async () => {
    try {
      await navigator.clipboard.writeText(state.text);
      toast.success(`Copied. Save it as ${EDITOR_FILE} in your repository.`);
    } catch {
      toast.error('Could not copy to the clipboard; select the raw JSON and copy it by hand.');
    }
  };

  const valid = checkedOnce && problems.length === 0 && !textError;

  return (
    <div className="page env-page">
      <header className="page-head">
        <div>
          <h1>Environments</h1>
          <p className="muted">
            Edit a <span className="mono">{EDITOR_FILE}</span>: install, start, terminals, ports, secrets and machine size. Checked as you type.
          </p>
        </div>
        <div className="actions">
          <span className={`check-status ${valid ? 'ok' : problems.length || textError ? 'bad' : ''}`} data-testid="env-status">
            {checking ? <Spinner /> : null}
            {textError ? 'JSON does not parse' : !checkedOnce ? 'Checking…' : problems.length ? `${problems.length} problem${problems.length === 1 ? '' : 's'}` : 'Valid'}
          </span>
          <button onClick={() => setImporting(true)}>Import…</button>
          <button onClick={() => fromForm({})}>Clear</button>
          <button className="primary" onClick={copy}>
            Copy JSON
          </button>
        </div>
      </header>

      {imported && (
        <div className="banner info" role="status">
          <div>
            Imported from <span className="mono">{imported.from}</span>.
            {imported.notMapped.length > 0 ? (
              <>
                {' '}
                Not mapped (no Porthole equivalent):{' '}
                {imported.notMapped.map((f) => (
                  <span key={f} className="mono tag">
                    {f}
                  </span>
                ))}
              </>
            ) : (
              ' Every field was mapped.'
            )}
          </div>
          <button className="icon-btn" aria-label="Dismiss" onClick={() => setImported(null)}>
            ×
          </button>
        </div>
      )}

      <div className="env-body">
        <div className="env-form">
          {problems.length > 0 && (
            <div className="problems" aria-label="Problems">
              {problems.map((p, i) => (
                <button key={i} className="problem" onClick={() => focusPath(p.path)}>
                  <span className="mono">{p.path}</span> {p.message}
                </button>
              ))}
            </div>
          )}
          {schema ? (
            <SchemaForm schema={schema} value={state.doc} onChange={fromForm} errors={errors} suggestions={{ secrets: secretNames }} />
          ) : (
            <div className="empty">
              <Spinner /> Loading the schema…
            </div>
          )}
        </div>
        <div className="env-raw">
          <div className="section-head">
            <h3>Raw JSON</h3>
          </div>
          <textarea
            aria-label="Raw JSON"
            className={`mono raw${textError ? ' invalid' : ''}`}
            value={state.text}
            onChange={(e) => fromText(e.target.value)}
            spellCheck={false}
          />
          {textError && (
            <div className="field-error" role="alert">
              {textError}
            </div>
          )}
        </div>
      </div>

      {importing && (
        <ImportDialog
          onClose={() => setImporting(false)}
          onImport={(r, from) => {
            fromForm(r.environment);
            setImported({ from, notMapped: r.not_mapped });
            setImporting(false);
          }}
        />
      )}
    </div>
  );
}

const KINDS = [
  { file: '.cursor/environment.json', label: 'Cursor environment.json' },
  { file: '.devcontainer/devcontainer.json', label: 'devcontainer.json' },
  { file: '.porthole/environment.json', label: 'Porthole environment.json' },
];

function ImportDialog({ onClose, onImport }: { onClose: () => void; onImport: (r: EnvCheck, from: string) => void }) {
  const toast = useToast();
  const [kind, setKind] = useState(KINDS[0].file);
  const [text, setText] = useState('');
  const [fileName, setFileName] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<EnvCheck | null>(null);

  const pick = async (f: File | undefined) => {
    if (!f) return;
    setText(await f.text());
    setFileName(f.name);
    setResult(null);
    if (/devcontainer\.json$/i.test(f.name)) setKind(KINDS[1].file);
  };

  const run = async () => {
    setBusy(true);
    try {
      const r = await backend.envCheck(text, kind);
      if (r.environment) onImport(r, fileName ?? kind);
      else setResult(r);
    } catch (e) {
      toast.error(errorMessage(e));
    } finally {
      setBusy(false);
    }
  };

  return (
    <Modal
      title="Import an environment"
      onClose={onClose}
      wide
      footer={
        <>
          <button onClick={onClose}>Cancel</button>
          <button className="primary" onClick={run} disabled={!text.trim() || busy}>
            {busy && <Spinner />}Import
          </button>
        </>
      }
    >
      <p className="muted">Paste or open a Cursor or dev container file. It is checked and converted to Porthole's format; fields with no equivalent are listed.</p>
      <div className="form-row">
        <Field label="Format">
          {(id) => (
            <select id={id} value={kind} onChange={(e) => setKind(e.target.value)}>
              {KINDS.map((k) => (
                <option key={k.file} value={k.file}>
                  {k.label}
                </option>
              ))}
            </select>
          )}
        </Field>
        <Field label="File" hint={fileName ?? 'or paste below'}>
          {(id) => <input id={id} type="file" accept=".json,.jsonc,application/json" onChange={(e) => void pick(e.target.files?.[0])} />}
        </Field>
      </div>
      <Field label="Contents">
        {(id) => (
          <textarea
            id={id}
            className="mono import-text"
            value={text}
            onChange={(e) => {
              setText(e.target.value);
              setResult(null);
            }}
            placeholder={'{\n  "install": "npm ci",\n  "terminals": [{ "name": "dev", "command": "npm run dev" }]\n}'}
            spellCheck={false}
          />
        )}
      </Field>
      {result && (
        <div className="banner error">
          <div>
            <strong>Not imported: the file has {result.problems.length} problem{result.problems.length === 1 ? '' : 's'}.</strong>
            <ul className="plain">
              {result.problems.map((p, i) => (
                <li key={i}>
                  <span className="mono">{p.path}</span>: {p.message}
                </li>
              ))}
            </ul>
            {result.not_mapped.length > 0 && (
              <div className="small">
                Not mapped:{' '}
                {result.not_mapped.map((f) => (
                  <span key={f} className="mono tag">
                    {f}
                  </span>
                ))}
              </div>
            )}
          </div>
        </div>
      )}
    </Modal>
  );
}
