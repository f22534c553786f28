import { fireEvent, screen, waitFor, within } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { backend } from '../backend';
import { SecretsView } from '../views/Secrets';
import { renderView } from './util';

afterEach(() => vi.restoreAllMocks());

const VALUE = 'ghp_never-show-me-again-42';

describe('Secrets', () => {
  it('lists names, scopes and the storage backend, never values', async () => {
    renderView(<SecretsView />);
    const table = await screen.findByRole('table', { name: 'Secrets' });
    await within(table).findByText('GITHUB_TOKEN');
    expect(within(table).getAllByText('global').length).toBe(2);
    expect(within(table).getAllByText('todo-app').length).toBe(2);
    expect(screen.getByTestId('secrets-backend').textContent).toContain('encrypted file (no OS keychain)');
    expect(document.body.innerHTML).not.toContain('not-a-real-secret');
  });

  it('saves a value write-only: it is never rendered back', async () => {
    const set = vi.spyOn(backend, 'secretSet');
    renderView(<SecretsView />);
    await screen.findByText('GITHUB_TOKEN');
    const form = screen.getByRole('form', { name: 'Add a secret' });
    const value = within(form).getByLabelText('Value') as HTMLInputElement;
    expect(value.type).toBe('password');
    fireEvent.change(within(form).getByLabelText('Name'), { target: { value: 'npm_token' } });
    fireEvent.change(value, { target: { value: VALUE } });
    fireEvent.click(within(form).getByRole('button', { name: 'Save secret' }));
    await waitFor(() => expect(set).toHaveBeenCalledWith('NPM_TOKEN', '', VALUE));
    await screen.findByText('NPM_TOKEN');
    expect(value.value).toBe('');
    expect(document.body.innerHTML).not.toContain(VALUE);
    expect(document.body.textContent).not.toContain(VALUE);
  });

  it('scopes a secret to an environment', async () => {
    const set = vi.spyOn(backend, 'secretSet');
    renderView(<SecretsView />);
    await screen.findByText('GITHUB_TOKEN');
    const form = screen.getByRole('form', { name: 'Add a secret' });
    fireEvent.change(within(form).getByLabelText('Name'), { target: { value: 'SENTRY_DSN' } });
    fireEvent.change(within(form).getByLabelText('Scope'), { target: { value: 'todo-app' } });
    fireEvent.change(within(form).getByLabelText('Value'), { target: { value: 'x' } });
    fireEvent.click(within(form).getByRole('button', { name: 'Save secret' }));
    await waitFor(() => expect(set).toHaveBeenCalledWith('SENTRY_DSN', 'todo-app', 'x'));
  });

  it('replaces a value without showing the old one, and deletes after confirming', async () => {
    const set = vi.spyOn(backend, 'secretSet');
    const del = vi.spyOn(backend, 'secretDelete');
    renderView(<SecretsView />);
    const row = (await screen.findByText('DATABASE_URL')).closest('tr')!;
    fireEvent.click(within(row).getByRole('button', { name: 'Replace value' }));
    const dialog = screen.getByRole('dialog', { name: 'Replace DATABASE_URL' });
    const input = within(dialog).getByLabelText('New value') as HTMLInputElement;
    expect(input.type).toBe('password');
    expect(input.value).toBe('');
    fireEvent.change(input, { target: { value: VALUE } });
    fireEvent.click(within(dialog).getByRole('button', { name: 'Save' }));
    await waitFor(() => expect(set).toHaveBeenCalledWith('DATABASE_URL', 'todo-app', VALUE));
    await waitFor(() => expect(screen.queryByRole('dialog')).toBeNull());
    expect(document.body.innerHTML).not.toContain(VALUE);

    fireEvent.click(within(row).getByRole('button', { name: 'Delete' }));
    fireEvent.click(within(screen.getByRole('dialog')).getByRole('button', { name: 'Delete' }));
    await waitFor(() => expect(del).toHaveBeenCalledWith('DATABASE_URL', 'todo-app'));
    await waitFor(() => expect(screen.queryByText('DATABASE_URL')).toBeNull());
  });

  it('shows a name rejected by the backend on the name field', async () => {
    vi.spyOn(backend, 'secretSet').mockRejectedValue({ code: 'invalid', message: "secret name 'A-B': use capitals, digits and '_'" });
    renderView(<SecretsView />);
    await screen.findByText('GITHUB_TOKEN');
    const form = screen.getByRole('form', { name: 'Add a secret' });
    fireEvent.change(within(form).getByLabelText('Name'), { target: { value: 'AB' } });
    fireEvent.change(within(form).getByLabelText('Value'), { target: { value: VALUE } });
    fireEvent.click(within(form).getByRole('button', { name: 'Save secret' }));
    const err = await within(form).findByText(/secret name 'A-B'/);
    expect(err.closest('.field')!.querySelector('label')!.textContent).toBe('Name');
    expect(document.body.innerHTML).not.toContain(VALUE);
  });
});
