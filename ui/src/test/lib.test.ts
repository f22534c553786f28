import { describe, expect, it } from 'vitest';
import { fieldOfError, jsonPathOfError } from '../lib/errors';
import { fmtBytes, fmtClock, stripAnsi } from '../lib/format';
import { normalizePath } from '../lib/jsonpath';
import { machineNameError, secretNameError } from '../lib/validate';
import { parseHash } from '../lib/route';

describe('formatting', () => {
  it('stamps the session clock as mm:ss.mmm', () => {
    expect(fmtClock(0)).toBe('00:00.000');
    expect(fmtClock(61_005)).toBe('01:01.005');
    expect(fmtClock(3_723_456)).toBe('62:03.456');
  });
  it('formats sizes and strips ANSI', () => {
    expect(fmtBytes(512)).toBe('512 B');
    expect(fmtBytes(8 * 1024 * 1024)).toBe('8.0 MiB');
    expect(stripAnsi('\x1b[1;32mok\x1b[0m done')).toBe('ok done');
  });
});

describe('machine and secret names', () => {
  it('follows the backend rule: 1–40 letters, digits, - or _, starting with a letter or digit', () => {
    expect(machineNameError('web-app_2')).toBeNull();
    expect(machineNameError('9lives')).toBeNull();
    expect(machineNameError('a'.repeat(40))).toBeNull();
    expect(machineNameError('')).toMatch(/required/);
    expect(machineNameError('a'.repeat(41))).toMatch(/Too long/);
    expect(machineNameError('-web')).toMatch(/start with a letter or digit/);
    expect(machineNameError('_web')).toMatch(/start with a letter or digit/);
    expect(machineNameError('web app')).toMatch(/letters, digits/);
    expect(machineNameError('wéb')).not.toBeNull();
  });
  it('secret names become environment variables', () => {
    expect(secretNameError('GITHUB_TOKEN')).toBeNull();
    expect(secretNameError('github_token')).not.toBeNull();
    expect(secretNameError('1TOKEN')).not.toBeNull();
  });
});

describe('errors shown where the user acted', () => {
  const fields = { name: ['machine name'], tokenFile: ['token file'], url: ['url'] };
  it('finds the field a message starts with', () => {
    expect(fieldOfError("machine name 'x y': use 1-40 letters", fields)).toBe('name');
    expect(fieldOfError('token file: a remote machine needs one', fields)).toBe('tokenFile');
    expect(fieldOfError('url: expected http[s]://host:port', fields)).toBe('url');
    expect(fieldOfError('name: taken', fields)).toBe('name');
    expect(fieldOfError('qemu is not installed', fields)).toBeNull();
    expect(fieldOfError('urlencoded body rejected', fields)).toBeNull();
  });
  it('reads a JSON path at the start of a message', () => {
    expect(jsonPathOfError('terminals[1].command: expected a string')).toEqual({ path: 'terminals[1].command', message: 'expected a string' });
    expect(jsonPathOfError('something went wrong')).toBeNull();
  });
  it('normalizes paths', () => {
    expect(normalizePath('$')).toBe('$');
    expect(normalizePath('$.name')).toBe('name');
  });
});

describe('routes', () => {
  it('gives every view a URL', () => {
    expect(parseHash('#/live/web-app')).toEqual({ view: 'live', params: ['web-app'] });
    expect(parseHash('#/replay/s-1')).toEqual({ view: 'replay', params: ['s-1'] });
    expect(parseHash('')).toEqual({ view: 'machines', params: [] });
    expect(parseHash('#/nope')).toEqual({ view: 'machines', params: [] });
  });
});
