import { fireEvent, screen, waitFor, within } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { backend } from '../backend';
import { EnvironmentsView } from '../views/Environments';
import { renderView } from './util';

afterEach(() => vi.restoreAllMocks());

const raw = () => screen.getByLabelText('Raw JSON') as HTMLTextAreaElement;
const field = (path: string) => {
  const el = document.querySelector<HTMLElement>(`[data-field="${path}"]`);
  if (!el) throw new Error(`no field ${path}`);
  return el;
};

async function ready() {
  renderView(<EnvironmentsView />);
  await screen.findByText('Terminals');
  await waitFor(() => expect(screen.getByTestId('env-status').textContent).toBe('Valid'));
}

describe('Environments', () => {
  it('builds the form from the JSON Schema', async () => {
    await ready();
    for (const label of ['Name', 'User', 'Install command', 'Start command']) expect(screen.getAllByText(label).length).toBeGreaterThan(0);
    for (const section of ['Terminals', 'Ports', 'Secrets', 'Environment variables', 'Display', 'Machine size']) expect(screen.getByText(section)).toBeTruthy();
    expect((within(field('terminals[0]')).getByLabelText(/Command/) as HTMLInputElement).value).toBe('npm run dev');
    expect((within(field('ports[0]')).getByLabelText(/Port/) as HTMLInputElement).value).toBe('3000');
    expect(within(field('secrets')).getByText('DATABASE_URL')).toBeTruthy();
    expect((within(field('env.NODE_ENV')).getByLabelText('Value of NODE_ENV') as HTMLInputElement).value).toBe('development');
  });

  it('shows a checker problem on the field at its JSON path', async () => {
    await ready();
    const check = vi.spyOn(backend, 'envCheck');
    // A number where a command belongs, typed into the raw JSON.
    const doc = JSON.parse(raw().value);
    doc.terminals[1].command = 42;
    fireEvent.change(raw(), { target: { value: JSON.stringify(doc, null, 2) } });
    await waitFor(() => expect(check).toHaveBeenCalled());
    const err = await within(field('terminals[1].command')).findByText('expected a string');
    expect(err.getAttribute('data-error-for')).toBe('terminals[1].command');
    expect(within(field('terminals[0]')).queryByRole('alert')).toBeNull();
    expect(within(field('terminals[1].name')).queryByRole('alert')).toBeNull();
    expect(within(field('terminals[1].command')).getByRole('textbox').getAttribute('aria-invalid')).toBe('true');
    expect(screen.getByTestId('env-status').textContent).toBe('1 problem');
  });

  it('puts problems the backend reports on the right field (mocked answer)', async () => {
    vi.spyOn(backend, 'envCheck').mockResolvedValue({
      kind: 'porthole',
      problems: [
        { path: 'terminals[1].command', message: 'expected a string' },
        { path: 'display.width', message: 'expected an integer from 320 to 7680' },
      ],
      not_mapped: [],
      environment: null,
    });
    renderView(<EnvironmentsView />);
    const err = await within(await waitFor(() => field('terminals[1].command'))).findByText('expected a string');
    expect(err).toBeTruthy();
    expect(within(field('display.width')).getByText(/320 to 7680/)).toBeTruthy();
    expect(within(field('display.height')).queryByRole('alert')).toBeNull();
  });

  it('keeps the form and the raw JSON in sync both ways', async () => {
    await ready();
    fireEvent.change(within(field('name')).getByRole('textbox'), { target: { value: 'my-env' } });
    expect(JSON.parse(raw().value).name).toBe('my-env');

    fireEvent.click(within(field('terminals')).getByRole('button', { name: 'Add terminal' }));
    expect(JSON.parse(raw().value).terminals).toHaveLength(3);
    expect(JSON.parse(raw().value).terminals[2]).toEqual({ command: '' });

    const doc = JSON.parse(raw().value);
    doc.user = 'root';
    doc.ports = [{ port: 8080, name: 'api' }];
    fireEvent.change(raw(), { target: { value: JSON.stringify(doc, null, 2) } });
    expect((within(field('user')).getByRole('textbox') as HTMLInputElement).value).toBe('root');
    expect((within(field('ports[0]')).getByLabelText(/Port/) as HTMLInputElement).value).toBe('8080');

    // Text that does not parse leaves the form as it was and says why.
    fireEvent.change(raw(), { target: { value: '{ "user": ' } });
    expect(screen.getByText(/JSON does not parse/)).toBeTruthy();
    expect((within(field('user')).getByRole('textbox') as HTMLInputElement).value).toBe('root');
  });

  it('imports a devcontainer.json and lists what was not mapped', async () => {
    await ready();
    fireEvent.click(screen.getByRole('button', { name: 'Import…' }));
    const dialog = screen.getByRole('dialog', { name: 'Import an environment' });
    fireEvent.change(within(dialog).getByLabelText('Format'), { target: { value: '.devcontainer/devcontainer.json' } });
    fireEvent.change(within(dialog).getByLabelText('Contents'), {
      target: {
        value: `{
  // JSON with comments, as devcontainer.json allows
  "name": "api",
  "image": "mcr.microsoft.com/devcontainers/rust:1",
  "postCreateCommand": ["cargo", "fetch"],
  "forwardPorts": [8080],
  "features": {},
}`,
      },
    });
    fireEvent.click(within(dialog).getByRole('button', { name: 'Import' }));
    await waitFor(() => expect(screen.queryByRole('dialog')).toBeNull());
    const banner = screen.getByText(/Not mapped/).closest('.banner')!;
    expect(within(banner as HTMLElement).getByText('image')).toBeTruthy();
    expect(within(banner as HTMLElement).getByText('features')).toBeTruthy();
    const doc = JSON.parse(raw().value);
    expect(doc).toEqual({ name: 'api', install: 'cargo fetch', ports: [{ port: 8080 }] });
  });
});
