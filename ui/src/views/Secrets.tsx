import { useCallback, useEffect, useState, type FormEvent } from 'react';
import { backend, type SecretInfo } from '../backend';
import { Field } from '../components/Field';
import { ConfirmDialog, Modal, Spinner } from '../components/Modal';
import { useToast } from '../components/Toasts';
import { errorMessage, fieldOfError } from '../lib/errors';
import { fmtWhen } from '../lib/format';
import { SECRET_NAME_RULE, secretNameError } from '../lib/validate';

/** The backend's scope for secrets every machine gets. */
export const GLOBAL_SCOPE = '';
const OTHER = '\u0000other';

function scopeLabel(scope: string): string {
  return scope === GLOBAL_SCOPE ? 'global' : scope;
}

const FIELDS = { name: ['secret name', 'name'], scope: ['scope', 'environment'], value: ['value', 'secret value'] };

export function SecretsView() {
  const toast = useToast();
  const [list, setList] = useState<SecretInfo[] | null>(null);
  const [storage, setStorage] = useState('');
  const [editing, setEditing] = useState<SecretInfo | null>(null);
  const [deleting, setDeleting] = useState<SecretInfo | null>(null);
  const [deleteBusy, setDeleteBusy] = useState(false);

  const load = useCallback(async () => {
    try {
      const r = await backend.secretsList();
      setList(r.secrets);
      setStorage(r.backend);
    } catch (e) {
      toast.error(errorMessage(e));
      setList([]);
    }
  }, [toast]);

  useEffect(() => {
    void load();
  }, [load]);

  const scopes = [...new Set((list ?? []).map((s) => s.scope).filter((s) => s !== GLOBAL_SCOPE))].sort();

  const remove = async () => {
    if (!deleting) return;
    setDeleteBusy(true);
    try {
      await backend.secretDelete(deleting.name, deleting.scope);
      toast.success(`Deleted ${deleting.name} (${scopeLabel(deleting.scope)})`);
      setDeleting(null);
      await load();
    } catch (e) {
      toast.error(errorMessage(e));
    } finally {
      setDeleteBusy(false);
    }
  };

  return (
    <div className="page">
      <header className="page-head">
        <div>
          <h1>Secrets</h1>
          <p className="muted">Values are write-only: once saved they are never shown again, and they are redacted from everything a machine sends back.</p>
        </div>
        {storage && (
          <div className="storage-label" data-testid="secrets-backend">
            <span className="muted">Storage:</span> {storage}
          </div>
        )}
      </header>

      <AddSecret scopes={scopes} onSaved={load} />

      <div className="table-wrap">
        <table className="table" aria-label="Secrets">
          <thead>
            <tr>
              <th>Name</th>
              <th>Scope</th>
              <th>Value</th>
              <th>Updated</th>
              <th className="right">Actions</th>
            </tr>
          </thead>
          <tbody>
            {!list && (
              <tr>
                <td colSpan={5} className="muted">
                  <Spinner /> Loading…
                </td>
              </tr>
            )}
            {list?.length === 0 && (
              <tr>
                <td colSpan={5} className="muted">
                  No secrets yet.
                </td>
              </tr>
            )}
            {list?.map((s) => (
              <tr key={`${s.scope}\u0000${s.name}`}>
                <td className="mono strong">{s.name}</td>
                <td>
                  <span className={`badge ${s.scope === GLOBAL_SCOPE ? 'subtle' : 'scope'}`}>{scopeLabel(s.scope)}</span>
                </td>
                <td className="muted small">
                  <span className="masked" aria-hidden>
                    ••••••••
                  </span>{' '}
                  write-only
                </td>
                <td className="muted small">{fmtWhen(s.updated_at)}</td>
                <td className="right">
                  <div className="row-actions">
                    <button onClick={() => setEditing(s)}>Replace value</button>
                    <button className="danger-ghost" onClick={() => setDeleting(s)}>
                      Delete
                    </button>
                  </div>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>

      {editing && <ReplaceSecret secret={editing} onClose={() => setEditing(null)} onSaved={load} />}
      {deleting && (
        <ConfirmDialog title={`Delete ${deleting.name}?`} confirm="Delete" danger busy={deleteBusy} onCancel={() => setDeleting(null)} onConfirm={remove}>
          <p>
            Machines started from now on no longer get <span className="mono">{deleting.name}</span> ({scopeLabel(deleting.scope)}). Running machines keep the value they have.
          </p>
        </ConfirmDialog>
      )}
    </div>
  );
}

function AddSecret({ scopes, onSaved }: { scopes: string[]; onSaved: () => void }) {
  const toast = useToast();
  const [name, setName] = useState('');
  const [scopeChoice, setScopeChoice] = useState(GLOBAL_SCOPE);
  const [otherScope, setOtherScope] = useState('');
  const [value, setValue] = useState('');
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [busy, setBusy] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const scope = scopeChoice === OTHER ? otherScope.trim() : scopeChoice;
    const errs: Record<string, string> = {};
    const n = secretNameError(name);
    if (n) errs.name = n;
    if (scopeChoice === OTHER && !scope) errs.scope = 'Name the environment';
    if (!value) errs.value = 'Enter the value';
    setErrors(errs);
    if (Object.keys(errs).length) return;
    setBusy(true);
    try {
      await backend.secretSet(name, scope, value);
      toast.success(`Saved ${name} (${scopeLabel(scope)})`);
      setName('');
      onSaved();
    } catch (err) {
      const msg = errorMessage(err);
      const f = fieldOfError(msg, FIELDS);
      if (f) setErrors({ [f]: msg });
      else toast.error(msg);
    } finally {
      // The value never outlives the attempt to save it.
      setValue('');
      setBusy(false);
    }
  };

  return (
    <form className="panel secret-form" onSubmit={submit} noValidate aria-label="Add a secret">
      <div className="form-row align-start">
        <Field label="Name" error={errors.name} hint={SECRET_NAME_RULE} className="grow">
          {(id) => <input id={id} className="mono" value={name} onChange={(e) => setName(e.target.value.toUpperCase())} placeholder="GITHUB_TOKEN" autoComplete="off" spellCheck={false} />}
        </Field>
        <Field label="Scope" error={errors.scope} hint="Every machine, or one environment">
          {(id) => (
            <div className="scope-pick">
              <select id={id} value={scopeChoice} onChange={(e) => setScopeChoice(e.target.value)}>
                <option value={GLOBAL_SCOPE}>Global</option>
                {scopes.map((s) => (
                  <option key={s} value={s}>
                    Environment: {s}
                  </option>
                ))}
                <option value={OTHER}>Another environment…</option>
              </select>
              {scopeChoice === OTHER && <input aria-label="Environment name" value={otherScope} onChange={(e) => setOtherScope(e.target.value)} placeholder="environment name" spellCheck={false} />}
            </div>
          )}
        </Field>
        <Field label="Value" error={errors.value} hint="Write-only" className="grow">
          {(id) => <input id={id} type="password" value={value} onChange={(e) => setValue(e.target.value)} autoComplete="new-password" spellCheck={false} />}
        </Field>
        <div className="field field-submit">
          <button type="submit" className="primary" disabled={busy}>
            {busy && <Spinner />}Save secret
          </button>
        </div>
      </div>
    </form>
  );
}

function ReplaceSecret({ secret, onClose, onSaved }: { secret: SecretInfo; onClose: () => void; onSaved: () => void }) {
  const toast = useToast();
  const [value, setValue] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const save = async () => {
    if (!value) {
      setError('Enter the new value');
      return;
    }
    setBusy(true);
    try {
      await backend.secretSet(secret.name, secret.scope, value);
      toast.success(`Replaced ${secret.name} (${scopeLabel(secret.scope)})`);
      onSaved();
      onClose();
    } catch (e) {
      const msg = errorMessage(e);
      if (fieldOfError(msg, FIELDS) === 'value') setError(msg);
      else toast.error(msg);
    } finally {
      setValue('');
      setBusy(false);
    }
  };
  return (
    <Modal
      title={`Replace ${secret.name}`}
      onClose={onClose}
      footer={
        <>
          <button onClick={onClose} disabled={busy}>
            Cancel
          </button>
          <button className="primary" onClick={save} disabled={busy}>
            {busy && <Spinner />}Save
          </button>
        </>
      }
    >
      <p className="muted">
        Scope: {scopeLabel(secret.scope)}. The current value is not shown; the new one replaces it for machines started from now on.
      </p>
      <Field label="New value" error={error}>
        {(id) => (
          <input
            id={id}
            type="password"
            value={value}
            onChange={(e) => setValue(e.target.value)}
            onKeyDown={(e) => e.key === 'Enter' && void save()}
            autoComplete="new-password"
          />
        )}
      </Field>
    </Modal>
  );
}
