import { fireEvent, screen, waitFor, within } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { backend } from '../backend';
import { MachinesView, validateCreate } from '../views/Machines';
import { renderView } from './util';

afterEach(() => vi.restoreAllMocks());

async function openForm() {
  renderView(<MachinesView />);
  await screen.findByTestId('machine-web-app');
  fireEvent.click(screen.getByRole('button', { name: 'New machine' }));
  return screen.getByRole('form', { name: 'New machine' });
}

describe('Machines', () => {
  it('lists machines with status, agent version and health at a glance', async () => {
    renderView(<MachinesView />);
    const web = await screen.findByTestId('machine-web-app');
    expect(within(web).getByText('local')).toBeTruthy();
    expect(within(web).getByText('http://10.88.0.2:7680')).toBeTruthy();
    await waitFor(() => expect(within(web).getByText('healthy')).toBeTruthy());
    expect(within(web).getByText('0.1.0')).toBeTruthy();

    const ci = screen.getByTestId('machine-ci-runner');
    await waitFor(() => expect(within(ci).getByText('upgrade the agent')).toBeTruthy());
    expect(within(ci).getByText(/degraded: disk/)).toBeTruthy();

    const broken = screen.getByTestId('machine-broken-vm');
    expect(within(broken).getByText(/Permission denied/)).toBeTruthy();
    expect(broken.querySelector('.dot-failed')).toBeTruthy();
    expect(screen.getByTestId('machine-old-vm').querySelector('.dot-stopped')).toBeTruthy();
    expect(within(screen.getByTestId('machine-old-vm')).getByRole('button', { name: 'Start' })).toBeTruthy();
    expect(screen.getByText('7 machines, 5 running')).toBeTruthy();
  });

  it('validates names: 1–40 letters, digits, - or _, starting with a letter or digit', async () => {
    const create = vi.spyOn(backend, 'machineCreate');
    const form = await openForm();
    const name = within(form).getByLabelText('Name');
    const submit = within(form).getByRole('button', { name: 'Create machine' });

    fireEvent.click(submit);
    expect(within(form).getByText('Name is required')).toBeTruthy();

    fireEvent.change(name, { target: { value: '-web' } });
    expect(within(form).getByText(/Must start with a letter or digit/)).toBeTruthy();

    fireEvent.change(name, { target: { value: 'web app' } });
    expect(within(form).getByText(/Use 1–40 letters/)).toBeTruthy();

    fireEvent.change(name, { target: { value: 'x'.repeat(41) } });
    expect(within(form).getByText(/Too long/)).toBeTruthy();
    expect(create).not.toHaveBeenCalled();

    fireEvent.change(name, { target: { value: 'new-box_1' } });
    expect(within(form).queryByRole('alert')).toBeNull();
    fireEvent.change(within(form).getByLabelText('Workspace'), { target: { value: '/home/dev/src/app' } });
    fireEvent.click(submit);
    await waitFor(() => expect(create).toHaveBeenCalledTimes(1));
    expect(create.mock.calls[0][0]).toEqual({ name: 'new-box_1', provider: 'local', workspace: '/home/dev/src/app', browser: true });
    await waitFor(() => expect(screen.getByTestId('machine-new-box_1')).toBeTruthy());
  });

  it('a remote machine needs a URL and a token file', async () => {
    const create = vi.spyOn(backend, 'machineCreate');
    const form = await openForm();
    fireEvent.click(within(form).getByRole('radio', { name: 'Remote' }));
    fireEvent.change(within(form).getByLabelText('Name'), { target: { value: 'build-box' } });
    fireEvent.click(within(form).getByRole('button', { name: 'Create machine' }));
    expect(within(form).getByText('A remote machine needs the agent URL')).toBeTruthy();
    expect(within(form).getByText('A remote machine needs a token file')).toBeTruthy();
    expect(create).not.toHaveBeenCalled();

    fireEvent.change(within(form).getByLabelText('Agent URL'), { target: { value: 'https://build-box.lan:7443' } });
    fireEvent.change(within(form).getByLabelText('Token file'), { target: { value: '/home/dev/build-box.token' } });
    fireEvent.click(within(form).getByRole('button', { name: 'Create machine' }));
    await waitFor(() => expect(create).toHaveBeenCalled());
    expect(create.mock.calls[0][0]).toEqual({ name: 'build-box', provider: 'remote', url: 'https://build-box.lan:7443', tokenFile: '/home/dev/build-box.token' });
  });

  it('shows a backend error on the field it names', async () => {
    vi.spyOn(backend, 'machineCreate').mockRejectedValue({ code: 'exists', message: "machine name 'web-app' is taken; destroy that machine or pick another name" });
    const form = await openForm();
    fireEvent.change(within(form).getByLabelText('Name'), { target: { value: 'web-app' } });
    fireEvent.click(within(form).getByRole('button', { name: 'Create machine' }));
    const err = await within(form).findByText(/is taken/);
    expect(err.closest('.field')!.querySelector('label')!.textContent).toBe('Name');
  });

  it('shows a problem in the environment file on the environment file field', async () => {
    vi.spyOn(backend, 'machineCreate').mockRejectedValue({ code: 'invalid', message: 'terminals[1].command: expected a string' });
    const form = await openForm();
    fireEvent.change(within(form).getByLabelText('Name'), { target: { value: 'box' } });
    fireEvent.change(within(form).getByLabelText('Environment file'), { target: { value: '/src/app/.porthole/environment.json' } });
    fireEvent.click(within(form).getByRole('button', { name: 'Create machine' }));
    const err = await within(form).findByText('terminals[1].command: expected a string');
    expect(err.closest('.field')!.querySelector('label')!.textContent).toBe('Environment file');
  });

  it('asks before destroying', async () => {
    const destroy = vi.spyOn(backend, 'machineDestroy');
    renderView(<MachinesView />);
    const row = await screen.findByTestId('machine-old-vm');
    fireEvent.click(within(row).getByRole('button', { name: 'Destroy' }));
    const dialog = screen.getByRole('dialog', { name: 'Destroy old-vm?' });
    fireEvent.click(within(dialog).getByRole('button', { name: 'Cancel' }));
    expect(destroy).not.toHaveBeenCalled();
    fireEvent.click(within(row).getByRole('button', { name: 'Destroy' }));
    fireEvent.click(within(screen.getByRole('dialog')).getByRole('button', { name: 'Destroy' }));
    await waitFor(() => expect(destroy).toHaveBeenCalledWith('old-vm'));
    await waitFor(() => expect(screen.queryByTestId('machine-old-vm')).toBeNull());
  });

  it('validateCreate mirrors the rules', () => {
    expect(validateCreate({ name: 'ok', provider: 'local' })).toEqual({});
    expect(Object.keys(validateCreate({ name: 'ok', provider: 'remote' }))).toEqual(['url', 'tokenFile']);
    expect(validateCreate({ name: 'ok', provider: 'remote', url: 'ftp://x', tokenFile: 't' }).url).toMatch(/http/);
  });
});
