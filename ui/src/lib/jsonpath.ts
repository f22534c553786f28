// JSON paths as the environment checker writes them: `name`, `display.width`,
// `terminals[1].command`, `env["MY-VAR"]`, `$` for the whole document.

const IDENT = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

export function keyPath(parent: string, key: string): string {
  if (IDENT.test(key)) return parent ? `${parent}.${key}` : key;
  return `${parent || '$'}[${JSON.stringify(key)}]`;
}

export function indexPath(parent: string, i: number): string {
  return `${parent || '$'}[${i}]`;
}

/** Normalizes a path for comparison: `$.a` and `a` are the same, `$` is the root. */
export function normalizePath(p: string): string {
  const t = p.trim();
  if (t === '$' || t === '') return '$';
  return t.replace(/^\$\.?/, '');
}
