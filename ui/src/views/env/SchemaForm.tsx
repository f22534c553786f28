// A form generated from Porthole's JSON Schema: strings, integers, booleans, nested objects,
// lists of objects (terminals, ports), lists of strings (secrets) and string maps (env).
// Every control carries its JSON path so checker problems land on the right field.

import { useId, useState, type ReactNode } from 'react';
import { indexPath, keyPath } from '../../lib/jsonpath';

export type Schema = any;
type Obj = Record<string, unknown>;

export const FIELD_ORDER = [
  'name',
  'user',
  'install',
  'start',
  'terminals',
  'ports',
  'secrets',
  'env',
  'display',
  'machine',
  'agent',
  'build',
  'snapshot',
  'repositoryDependencies',
  'agentCanUpdateSnapshot',
];

const LABELS: Record<string, string> = {
  name: 'Name',
  user: 'User',
  install: 'Install command',
  start: 'Start command',
  terminals: 'Terminals',
  ports: 'Ports',
  secrets: 'Secrets',
  env: 'Environment variables',
  display: 'Display',
  machine: 'Machine size',
  agent: 'Default agent',
  build: 'Build from Dockerfile',
  snapshot: 'Snapshot',
  repositoryDependencies: 'Repository dependencies',
  agentCanUpdateSnapshot: 'Agent may update the snapshot',
  command: 'Command',
  description: 'Description',
  port: 'Port',
  width: 'Width',
  height: 'Height',
  cpus: 'CPUs',
  memory_mib: 'Memory (MiB)',
  disk_gib: 'Disk (GiB)',
  dockerfile: 'Dockerfile',
  context: 'Context',
};

const MONO = new Set(['install', 'start', 'command', 'snapshot', 'dockerfile', 'context']);

const SINGULAR: Record<string, string> = { terminals: 'terminal', ports: 'port', secrets: 'secret', repositoryDependencies: 'repository' };

function labelOf(key: string): string {
  return LABELS[key] ?? key.replace(/_/g, ' ').replace(/^./, (c) => c.toUpperCase());
}

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Sets a key, or removes it for undefined or an empty object, keeping key order. */
function withKey(obj: Obj, key: string, v: unknown): Obj {
  const out: Obj = { ...obj };
  const empty = v === undefined || (isObj(v) && Object.keys(v).length === 0);
  if (empty) delete out[key];
  else out[key] = v;
  return out;
}

export type Errors = Map<string, string[]>;

interface Ctx {
  errors: Errors;
  suggestions?: Record<string, string[]>;
}

function Errs({ ctx, path }: { ctx: Ctx; path: string }) {
  const list = ctx.errors.get(path);
  if (!list?.length) return null;
  return (
    <div className="field-error" role="alert" data-error-for={path}>
      {list.join('; ')}
    </div>
  );
}

function hasErr(ctx: Ctx, path: string) {
  return !!ctx.errors.get(path)?.length;
}

export function SchemaForm({ schema, value, onChange, errors, suggestions }: { schema: Schema; value: Obj; onChange: (v: Obj) => void; errors: Errors; suggestions?: Record<string, string[]> }) {
  const props: Record<string, Schema> = schema?.properties ?? {};
  const keys = [...FIELD_ORDER.filter((k) => k in props), ...Object.keys(props).filter((k) => !FIELD_ORDER.includes(k))];
  const ctx: Ctx = { errors, suggestions };
  return (
    <div className="schema-form">
      {keys.map((k) => (
        <Property key={k} name={k} schema={props[k]} required={schema.required?.includes(k)} value={value[k]} path={keyPath('', k)} ctx={ctx} onChange={(v) => onChange(withKey(value, k, v))} top />
      ))}
    </div>
  );
}

function Property(props: { name: string; schema: Schema; value: unknown; path: string; ctx: Ctx; onChange: (v: unknown) => void; required?: boolean; top?: boolean }) {
  const { schema, name, path, ctx } = props;
  const t = schema?.type;
  if (t === 'array' && schema.items?.type === 'object') return <ObjectList {...props} />;
  if (t === 'array') return <StringList {...props} />;
  if (t === 'object' && schema.properties) return <Group {...props} />;
  if (t === 'object') return <KeyValues {...props} />;
  return (
    <Scalar name={name} schema={schema} value={props.value} path={path} ctx={ctx} onChange={props.onChange} required={props.required} hint={props.top ? schema?.description : undefined} />
  );
}

function Scalar(props: { name: string; schema: Schema; value: unknown; path: string; ctx: Ctx; onChange: (v: unknown) => void; required?: boolean; hint?: string; bare?: boolean }) {
  const id = useId();
  const { schema, value, path, ctx } = props;
  const err = hasErr(ctx, path);
  let control: ReactNode;
  if (schema?.type === 'boolean') {
    return (
      <div className={`field check-field${err ? ' has-error' : ''}`} data-path={path}>
        <label className="check">
          <input type="checkbox" checked={value === true} onChange={(e) => props.onChange(e.target.checked ? true : undefined)} data-path={path} /> {labelOf(props.name)}
        </label>
        {props.hint && <div className="field-hint">{props.hint}</div>}
        <Errs ctx={ctx} path={path} />
      </div>
    );
  }
  const shown = value === undefined || value === null ? '' : typeof value === 'string' ? value : typeof value === 'number' ? String(value) : JSON.stringify(value);
  if (schema?.type === 'integer') {
    control = (
      <input
        id={id}
        type="number"
        inputMode="numeric"
        min={schema.minimum}
        max={schema.maximum}
        value={shown}
        data-path={path}
        aria-invalid={err}
        onChange={(e) => {
          const s = e.target.value;
          props.onChange(s === '' ? undefined : Number.isFinite(Number(s)) ? Number(s) : s);
        }}
      />
    );
  } else {
    const list = ctx.suggestions?.[props.name];
    control = (
      <>
        <input
          id={id}
          className={MONO.has(props.name) ? 'mono' : undefined}
          value={shown}
          data-path={path}
          aria-invalid={err}
          spellCheck={false}
          list={list ? `${id}-list` : undefined}
          onChange={(e) => props.onChange(e.target.value === '' && !props.required ? undefined : e.target.value)}
        />
        {list && (
          <datalist id={`${id}-list`}>
            {list.map((s) => (
              <option key={s} value={s} />
            ))}
          </datalist>
        )}
      </>
    );
  }
  return (
    <div className={`field${err ? ' has-error' : ''}`} data-field={path}>
      {!props.bare && (
        <label htmlFor={id} title={schema?.description}>
          {labelOf(props.name)}
          {props.required && <span className="req"> *</span>}
        </label>
      )}
      {control}
      <Errs ctx={ctx} path={path} />
      {!err && props.hint && <div className="field-hint">{props.hint}</div>}
    </div>
  );
}

function SectionHead({ name, schema, path, ctx, action }: { name: string; schema: Schema; path: string; ctx: Ctx; action?: ReactNode }) {
  return (
    <div className="section-head">
      <div>
        <h3>{labelOf(name)}</h3>
        {schema?.description && <div className="field-hint">{schema.description}</div>}
      </div>
      {action}
      <Errs ctx={ctx} path={path} />
    </div>
  );
}

function Group(props: { name: string; schema: Schema; value: unknown; path: string; ctx: Ctx; onChange: (v: unknown) => void }) {
  const { schema, path, ctx } = props;
  const value = isObj(props.value) ? props.value : {};
  const sub: Record<string, Schema> = schema.properties;
  return (
    <fieldset className={`group${hasErr(ctx, path) ? ' has-error' : ''}`} data-field={path}>
      <SectionHead name={props.name} schema={schema} path={path} ctx={ctx} />
      <div className="group-fields">
        {Object.keys(sub).map((k) => (
          <Scalar key={k} name={k} schema={sub[k]} required={schema.required?.includes(k)} value={value[k]} path={keyPath(path, k)} ctx={ctx} onChange={(v) => props.onChange(withKey(value, k, v))} />
        ))}
      </div>
    </fieldset>
  );
}

function ObjectList(props: { name: string; schema: Schema; value: unknown; path: string; ctx: Ctx; onChange: (v: unknown) => void }) {
  const { schema, path, ctx, name } = props;
  const items = Array.isArray(props.value) ? (props.value as unknown[]) : [];
  const itemSchema = schema.items;
  const sub: Record<string, Schema> = itemSchema.properties ?? {};
  const order = Object.keys(sub).sort((a, b) => (a === 'name' ? -1 : b === 'name' ? 1 : 0));
  const set = (next: unknown[]) => props.onChange(next.length ? next : undefined);
  const blank = () => Object.fromEntries((itemSchema.required ?? []).map((k: string) => [k, sub[k]?.type === 'integer' ? 0 : '']));
  return (
    <fieldset className={`group list${hasErr(ctx, path) ? ' has-error' : ''}`} data-field={path}>
      <SectionHead
        name={name}
        schema={schema}
        path={path}
        ctx={ctx}
        action={
          <button type="button" className="small" onClick={() => set([...items, blank()])}>
            Add {SINGULAR[name] ?? 'item'}
          </button>
        }
      />
      {items.length === 0 && <div className="muted small">None.</div>}
      {items.map((item, i) => {
        const ip = indexPath(path, i);
        const obj = isObj(item) ? item : {};
        return (
          <div key={i} className={`list-item${hasErr(ctx, ip) ? ' has-error' : ''}`} data-field={ip}>
            <div className="list-index mono">{i + 1}</div>
            <div className="list-fields" data-count={order.length}>
              {order.map((k) => (
                <Scalar
                  key={k}
                  name={k}
                  schema={sub[k]}
                  required={itemSchema.required?.includes(k)}
                  value={obj[k]}
                  path={keyPath(ip, k)}
                  ctx={ctx}
                  onChange={(v) => set(items.map((it, j) => (j === i ? withKey(obj, k, v) : it)))}
                />
              ))}
              <Errs ctx={ctx} path={ip} />
            </div>
            <button type="button" className="icon-btn" aria-label={`Remove ${SINGULAR[name] ?? 'item'} ${i + 1}`} title="Remove" onClick={() => set(items.filter((_, j) => j !== i))}>
              ×
            </button>
          </div>
        );
      })}
    </fieldset>
  );
}

function StringList(props: { name: string; schema: Schema; value: unknown; path: string; ctx: Ctx; onChange: (v: unknown) => void }) {
  const { schema, path, ctx, name } = props;
  const items = Array.isArray(props.value) ? (props.value as unknown[]) : [];
  const [draft, setDraft] = useState('');
  const set = (next: unknown[]) => props.onChange(next.length ? next : undefined);
  const listId = useId();
  const suggestions = ctx.suggestions?.[name];
  const add = () => {
    if (!draft.trim()) return;
    set([...items, draft.trim()]);
    setDraft('');
  };
  return (
    <fieldset className={`group${hasErr(ctx, path) ? ' has-error' : ''}`} data-field={path}>
      <SectionHead name={name} schema={schema} path={path} ctx={ctx} />
      <div className="chip-list">
        {items.map((v, i) => {
          const ip = indexPath(path, i);
          return (
            <span key={i} className={`value-chip${hasErr(ctx, ip) ? ' has-error' : ''}`} data-field={ip} title={ctx.errors.get(ip)?.join('; ')}>
              <span className="mono">{String(v)}</span>
              <button type="button" className="icon-btn" aria-label={`Remove ${String(v)}`} onClick={() => set(items.filter((_, j) => j !== i))}>
                ×
              </button>
            </span>
          );
        })}
        <input
          className="chip-input mono"
          value={draft}
          placeholder={`Add ${SINGULAR[name] ?? 'value'}…`}
          aria-label={`Add ${SINGULAR[name] ?? 'value'}`}
          list={suggestions ? listId : undefined}
          onChange={(e) => setDraft(e.target.value)}
          onKeyDown={(e) => {
            if (e.key === 'Enter') {
              e.preventDefault();
              add();
            }
          }}
          onBlur={add}
          spellCheck={false}
        />
        {suggestions && (
          <datalist id={listId}>
            {suggestions.filter((s) => !items.includes(s)).map((s) => (
              <option key={s} value={s} />
            ))}
          </datalist>
        )}
      </div>
      {items.map((_, i) => (
        <Errs key={i} ctx={ctx} path={indexPath(path, i)} />
      ))}
    </fieldset>
  );
}

function KeyValues(props: { name: string; schema: Schema; value: unknown; path: string; ctx: Ctx; onChange: (v: unknown) => void }) {
  const { schema, path, ctx, name } = props;
  const obj = isObj(props.value) ? props.value : {};
  const entries = Object.entries(obj);
  const set = (pairs: [string, unknown][]) => props.onChange(pairs.length ? Object.fromEntries(pairs) : undefined);
  return (
    <fieldset className={`group${hasErr(ctx, path) ? ' has-error' : ''}`} data-field={path}>
      <SectionHead
        name={name}
        schema={schema}
        path={path}
        ctx={ctx}
        action={
          <button type="button" className="small" onClick={() => !('' in obj) && set([...entries, ['', '']])} disabled={'' in obj}>
            Add variable
          </button>
        }
      />
      {entries.length === 0 && <div className="muted small">None.</div>}
      {entries.map(([k, v], i) => {
        const kp = keyPath(path, k);
        return (
          <div key={i} className="kv-row" data-field={kp}>
            <input
              className="mono"
              aria-label="Variable name"
              value={k}
              placeholder="NAME"
              data-path={kp}
              aria-invalid={hasErr(ctx, kp)}
              spellCheck={false}
              onChange={(e) => {
                const nk = e.target.value;
                if (nk !== k && nk in obj) return;
                set(entries.map(([ek, ev], j) => (j === i ? [nk, ev] : [ek, ev])));
              }}
            />
            <span className="muted">=</span>
            <input
              className="mono"
              aria-label={`Value of ${k || 'variable'}`}
              value={typeof v === 'string' ? v : JSON.stringify(v)}
              placeholder="value"
              spellCheck={false}
              onChange={(e) => set(entries.map(([ek, ev], j) => (j === i ? [ek, e.target.value] : [ek, ev])))}
            />
            <button type="button" className="icon-btn" aria-label={`Remove ${k || 'variable'}`} onClick={() => set(entries.filter((_, j) => j !== i))}>
              ×
            </button>
            <Errs ctx={ctx} path={kp} />
          </div>
        );
      })}
    </fieldset>
  );
}
