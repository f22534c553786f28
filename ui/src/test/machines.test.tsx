import { act, fireEvent, screen, waitFor, within } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { backend, type Machine, type Progress, type ProgressSink } from '../backend';
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

  it("shows each environment's setup: the running step, a failed one with its exit code, or ready", async () => {
    renderView(<MachinesView />);
    const web = await screen.findByTestId('machine-web-app');
    await waitFor(() => expect(within(web).getByTestId('env-setup').textContent).toBe('env ready'));
    const ci = screen.getByTestId('machine-ci-runner');
    await waitFor(() => expect(within(ci).getByTestId('env-setup').textContent).toMatch(/install \(1\/2\)/));

    const health = backend.machineHealth.bind(backend);
    vi.spyOn(backend, 'machineHealth').mockImplementation(async (name) => {
      const h = await health(name);
      if (name !== 'ci-runner') return h;
      return { ...h, environment: { state: 'failed', name: 'ci', steps: [{ name: 'install', state: 'failed', exit_code: 2, message: 'npm ci: ENOTFOUND' }, { name: 'start', state: 'skipped' }] } };
    });
    fireEvent.click(screen.getByRole('button', { name: 'Refresh' }));
    const badge = await waitFor(() => {
      const b = within(screen.getByTestId('machine-ci-runner')).getByTestId('env-setup');
      expect(b.textContent).toBe('install failed (exit 2)');
      return b;
    });
    expect(badge.getAttribute('title')).toBe('npm ci: ENOTFOUND');
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

  it("shows a create's progress in its row: a step bar for numbered steps, kept through chatter, gone at the end", async () => {
    let emit: ProgressSink = () => {};
    let finish: (m: Machine) => void = () => {};
    const create = vi.spyOn(backend, 'machineCreate').mockImplementation((_req, onProgress) => {
      emit = onProgress!;
      return new Promise<Machine>((resolve) => (finish = resolve));
    });
    const form = await openForm();
    fireEvent.click(within(form).getByRole('radio', { name: 'QEMU VM' }));
    fireEvent.change(within(form).getByLabelText('Name'), { target: { value: 'vm-1' } });
    fireEvent.click(within(form).getByRole('button', { name: 'Create machine' }));
    await waitFor(() => expect(create).toHaveBeenCalledTimes(1));
    expect(create.mock.calls[0][1]).toEqual(expect.any(Function));

    const row = screen.getByTestId('machine-vm-1');
    // Before the first line: busy, no step yet, and the time so far.
    const bar = within(row).getByRole('progressbar', { name: 'Creating vm-1' });
    expect(bar.classList.contains('indeterminate')).toBe(true);
    expect(bar.getAttribute('aria-valuenow')).toBeNull();
    expect(within(row).getByTitle('Elapsed').textContent).toBe('0s');

    const line = (message: string, step?: number, steps?: number): Progress => ({ machine: 'vm-1', op: 'create', message, ...(step ? { step, steps } : {}) });
    act(() => emit(line('creating a qemu machine')));
    expect(within(row).getByText('creating a qemu machine')).toBeTruthy();
    expect(bar.getAttribute('aria-valuenow')).toBeNull();

    act(() => emit(line('install desktop, Chromium, tmux, kernel (22:10:03)', 2, 6)));
    expect(within(row).getByText('install desktop, Chromium, tmux, kernel (22:10:03)')).toBeTruthy();
    expect(within(row).getByText('Creating… · step 2 of 6')).toBeTruthy();
    expect(bar.classList.contains('indeterminate')).toBe(false);
    expect(bar.getAttribute('aria-valuenow')).toBe('2');
    expect(bar.getAttribute('aria-valuemax')).toBe('6');
    expect((bar.firstElementChild as HTMLElement).style.width).toBe('33%');

    // apt's chatter replaces the line but not the step.
    act(() => emit(line('Get:214 http://deb.debian.org/debian bookworm/main amd64 chromium [78.4 MB]')));
    expect(within(row).getByText(/^Get:214 /)).toBeTruthy();
    expect(within(row).queryByText(/install desktop/)).toBeNull();
    expect(bar.getAttribute('aria-valuenow')).toBe('2');
    expect(within(row).getByText('Creating… · step 2 of 6')).toBeTruthy();

    act(() => emit(line('clean the apt cache (22:14:40)', 5, 6)));
    expect(bar.getAttribute('aria-valuenow')).toBe('5');
    act(() => emit(line('booting the VM (tcg, emulated: ~15 s)')));
    expect(bar.getAttribute('aria-valuenow')).toBe('5');

    await act(async () => finish({ name: 'vm-1', provider: 'qemu', status: 'running', agent_url: 'http://127.0.0.1:17010', spec: {}, created_at: Date.now() }));
    expect(screen.queryByRole('progressbar')).toBeNull();
    expect(screen.queryByTestId('op-progress')).toBeNull();
    // A line arriving after the end changes nothing.
    act(() => emit(line('waiting for the agent')));
    expect(screen.queryByText('waiting for the agent')).toBeNull();
  });

  it("shows a start's progress on the machine's row until it is running", async () => {
    let emit: ProgressSink = () => {};
    let finish: () => void = () => {};
    const real = backend.machineStart.bind(backend);
    const start = vi.spyOn(backend, 'machineStart').mockImplementation((name, onProgress) => {
      emit = onProgress!;
      return new Promise<void>((r) => (finish = r)).then(() => real(name));
    });
    renderView(<MachinesView />);
    const row = await screen.findByTestId('machine-broken-vm');
    fireEvent.click(within(row).getByRole('button', { name: 'Start' }));
    expect(start).toHaveBeenCalledWith('broken-vm', expect.any(Function));
    act(() => emit({ machine: 'broken-vm', op: 'start', message: 'booting the VM (tcg, emulated: ~15 s)' }));
    expect(within(row).getByRole('progressbar', { name: 'Starting broken-vm' })).toBeTruthy();
    expect(within(row).getByText('booting the VM (tcg, emulated: ~15 s)')).toBeTruthy();
    expect(within(row).getByText('Starting…')).toBeTruthy();
    // The old failure is not shown while it starts again.
    expect(within(row).queryByText(/Permission denied/)).toBeNull();
    await act(async () => finish());
    await waitFor(() => expect(within(screen.getByTestId('machine-broken-vm')).queryByRole('progressbar')).toBeNull());
    await waitFor(() => expect(screen.getByTestId('machine-broken-vm').querySelector('.dot-running')).toBeTruthy());
  });

  it('the mock backend reports realistic progress: the image recipe\'s steps, chatter, the boot', async () => {
    const lines: Progress[] = [];
    const m = await backend.machineCreate({ name: 'vm-progress', provider: 'qemu' }, (p) => lines.push(p));
    expect(m.status).toBe('running');
    expect(lines[0]).toEqual({ machine: 'vm-progress', op: 'create', message: 'creating a qemu machine' });
    const steps = lines.filter((p) => p.step !== undefined);
    expect(steps.map((p) => p.step)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(steps.every((p) => p.steps === 6 && !p.message.startsWith('['))).toBe(true);
    expect(lines.filter((p) => p.step === undefined).length).toBeGreaterThan(4);
    expect(lines.at(-1)!.message).toBe('waiting for the agent');

    const snap: Progress[] = [];
    await backend.machineSnapshot('vm-progress', 'clean', (p) => snap.push(p));
    expect(snap.map((p) => p.message)).toContain("flushing the guest's disks");
    expect(snap.some((p) => /^saving memory: \d+ of \d+ MiB$/.test(p.message))).toBe(true);
    expect(snap.every((p) => p.op === 'snapshot')).toBe(true);
  });

  it('validateCreate mirrors the rules', () => {
    expect(validateCreate({ name: 'ok', provider: 'local' })).toEqual({});
    expect(Object.keys(validateCreate({ name: 'ok', provider: 'remote' }))).toEqual(['url', 'tokenFile']);
    expect(validateCreate({ name: 'ok', provider: 'remote', url: 'ftp://x', tokenFile: 't' }).url).toMatch(/http/);
  });
});
