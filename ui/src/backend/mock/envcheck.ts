// The mock's stand-in for the backend's environment checker: a small JSON Schema walker that
// reports problems by JSON path in the same words as `porthole-agent env check`, JSON with
// comments for devcontainer.json, and the devcontainer → Porthole mapping.

import type { EnvCheck, EnvProblem } from '../types';

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Schema = any;

const IDENT = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

function keyPath(parent: string, key: string): string {
  if (IDENT.test(key)) return parent ? `${parent}.${key}` : key;
  return `${parent || '$'}[${JSON.stringify(key)}]`;
}

function indexPath(parent: string, i: number): string {
  return `${parent || '$'}[${i}]`;
}

function problem(path: string, message: string): EnvProblem {
  return { path: path || '$', message };
}

export function validate(value: Json, schema: Schema, path = '', out: EnvProblem[] = []): EnvProblem[] {
  const t = schema.type;
  if (t === 'string') {
    if (typeof value !== 'string') out.push(problem(path, 'expected a string'));
    else if (schema.pattern && !new RegExp(schema.pattern).test(value)) {
      const what = path.startsWith('secrets') ? 'a secret name' : 'a value';
      out.push(problem(path, `expected ${what} matching ${schema.pattern}`));
    } else if (schema.minLength && value.length < schema.minLength) out.push(problem(path, 'expected a non-empty string'));
  } else if (t === 'integer') {
    if (typeof value !== 'number' || !Number.isInteger(value)) out.push(problem(path, 'expected an integer'));
    else if ((schema.minimum !== undefined && value < schema.minimum) || (schema.maximum !== undefined && value > schema.maximum)) {
      out.push(problem(path, `expected an integer from ${schema.minimum} to ${schema.maximum}`));
    }
  } else if (t === 'boolean') {
    if (typeof value !== 'boolean') out.push(problem(path, 'expected a boolean'));
  } else if (t === 'array') {
    if (!Array.isArray(value)) out.push(problem(path, 'expected an array'));
    else
      value.forEach((item, i) => {
        validate(item, schema.items ?? {}, indexPath(path, i), out);
        if (schema.uniqueItems) {
          const first = value.findIndex((v) => JSON.stringify(v) === JSON.stringify(item));
          if (first < i) out.push(problem(indexPath(path, i), `duplicate of ${indexPath(path, first)}`));
        }
      });
  } else if (t === 'object') {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      out.push(problem(path, 'expected an object'));
      return out;
    }
    const props: Record<string, Schema> = schema.properties ?? {};
    for (const [k, s] of Object.entries(props)) {
      if (k in value) validate(value[k], s, keyPath(path, k), out);
      else if (schema.required?.includes(k)) out.push(problem(keyPath(path, k), 'missing required field'));
    }
    for (const k of Object.keys(value)) {
      if (k in props) continue;
      if (schema.additionalProperties === false) {
        out.push(problem(keyPath(path, k), `unknown field; expected one of ${Object.keys(props).join(', ')}`));
      } else if (typeof schema.additionalProperties === 'object') {
        if (schema.propertyNames?.pattern && !new RegExp(schema.propertyNames.pattern).test(k)) {
          out.push(problem(keyPath(path, k), `invalid name; expected one matching ${schema.propertyNames.pattern}`));
        }
        validate(value[k], schema.additionalProperties, keyPath(path, k), out);
      }
    }
  }
  return out;
}

/** Strips // and /* comments and trailing commas outside strings. */
export function stripJsonc(text: string): string {
  let out = '';
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j + 1;
    } else if (c === '/' && text[i + 1] === '/') {
      while (i < text.length && text[i] !== '\n') i++;
    } else if (c === '/' && text[i + 1] === '*') {
      const end = text.indexOf('*/', i + 2);
      i = end < 0 ? text.length : end + 2;
    } else {
      out += c;
      i++;
    }
  }
  return out.replace(/,(\s*[}\]])/g, '$1');
}

function parse(text: string): { value?: Json; problem?: EnvProblem } {
  if (!text.trim()) return { problem: problem('$', 'the file is empty; expected a JSON object') };
  try {
    return { value: JSON.parse(text.replace(/^\ufeff/, '')) };
  } catch (e) {
    return { problem: problem('$', `invalid JSON: ${(e as Error).message}`) };
  }
}

function quote(arg: string): string {
  return /^[A-Za-z0-9_./:=@%+-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

function command(v: Json, path: string, problems: EnvProblem[]): string | undefined {
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) {
    if (v.every((a) => typeof a === 'string')) return (v as string[]).map(quote).join(' ');
    problems.push(problem(path, 'expected a string or an array of strings'));
    return undefined;
  }
  if (v && typeof v === 'object') {
    const parts = Object.entries(v).map(([k, c]) => command(c, keyPath(path, k), problems));
    return parts.filter(Boolean).map((p) => `(${p})`).join(' && ');
  }
  problems.push(problem(path, 'expected a string, an array or an object'));
  return undefined;
}

function mapDevcontainer(value: Json): { environment: Record<string, Json>; problems: EnvProblem[]; notMapped: string[] } {
  const problems: EnvProblem[] = [];
  const notMapped: string[] = [];
  const env: Record<string, Json> = {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { environment: env, problems: [problem('$', 'expected an object')], notMapped };
  }
  for (const [key, v] of Object.entries(value)) {
    switch (key) {
      case 'name':
      case 'remoteUser':
        if (typeof v === 'string') env[key === 'name' ? 'name' : 'user'] = v;
        else problems.push(problem(key, 'expected a string'));
        break;
      case 'postCreateCommand':
      case 'postStartCommand': {
        const c = command(v, key, problems);
        if (c) env[key === 'postCreateCommand' ? 'install' : 'start'] = c;
        break;
      }
      case 'forwardPorts':
        if (!Array.isArray(v)) problems.push(problem(key, 'expected an array'));
        else {
          const ports: Json[] = [];
          v.forEach((p, i) => {
            const n = typeof p === 'number' ? p : typeof p === 'string' ? Number(p.split(':').pop()) : NaN;
            if (Number.isInteger(n) && n >= 1 && n <= 65535) ports.push({ port: n });
            else problems.push(problem(indexPath(key, i), 'expected an integer from 1 to 65535'));
          });
          env.ports = ports;
        }
        break;
      case 'containerEnv':
      case 'remoteEnv':
        if (v && typeof v === 'object' && !Array.isArray(v)) {
          const e = (env.env as Record<string, Json>) ?? {};
          for (const [k, s] of Object.entries(v)) {
            if (typeof s === 'string') e[k] = s;
            else notMapped.push(keyPath(key, k));
          }
          env.env = e;
        } else problems.push(problem(key, 'expected an object'));
        break;
      default:
        notMapped.push(keyPath('', key));
    }
  }
  return { environment: env, problems, notMapped };
}

const PORTHOLE_ONLY = ['secrets', 'env', 'display', 'machine', 'agent'];

export function kindOf(fileName: string): EnvCheck['kind'] {
  const f = fileName.replace(/\\/g, '/');
  if (/(^|\/)\.?devcontainer\.json$/.test(f)) return 'devcontainer';
  if (/(^|\/)\.cursor\/environment\.json$/.test(f)) return 'cursor';
  return 'porthole';
}

export function checkEnvironment(text: string, fileName: string, schema: Schema): EnvCheck {
  const kind = kindOf(fileName);
  const parsed = parse(kind === 'devcontainer' ? stripJsonc(text) : text);
  if (parsed.problem) return { kind, problems: [parsed.problem], not_mapped: [], environment: null };
  if (kind === 'devcontainer') {
    const m = mapDevcontainer(parsed.value!);
    const problems = [...m.problems, ...validate(m.environment, schema)];
    return { kind, problems, not_mapped: m.notMapped, environment: problems.length ? null : m.environment };
  }
  let s = schema;
  if (kind === 'cursor') {
    const properties = { ...schema.properties };
    for (const k of PORTHOLE_ONLY) delete properties[k];
    s = { ...schema, properties };
  }
  const problems = validate(parsed.value!, s);
  return { kind, problems, not_mapped: [], environment: problems.length ? null : parsed.value };
}
