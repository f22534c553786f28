import { fireEvent, screen, waitFor, within } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { backend } from '../backend';
import { RunsView } from '../views/Runs';
import { renderView } from './util';

afterEach(() => vi.restoreAllMocks());

describe('Runs', () => {
  it('shows runs with status and a stalled badge from `stalled` events', async () => {
    renderView(<RunsView runId={null} />);
    const stalled = await screen.findByTestId('run-r-2c91');
    expect(within(stalled).getByText('Upgrade sqlx to 0.8 and fix the build')).toBeTruthy();
    await waitFor(() => expect(within(stalled).getByText('stalled')).toBeTruthy());
    expect(within(screen.getByTestId('run-r-7f3a')).queryByText('stalled')).toBeNull();
    expect(within(screen.getByTestId('run-r-0f77')).getByText(/ERESOLVE/)).toBeTruthy();
  });

  it('validates and starts a run', async () => {
    const start = vi.spyOn(backend, 'runStart');
    renderView(<RunsView runId={null} />);
    await screen.findByTestId('run-r-7f3a');
    fireEvent.click(screen.getByRole('button', { name: 'New run' }));
    const form = screen.getByRole('form', { name: 'New run' });
    fireEvent.click(within(form).getByRole('button', { name: 'Start run' }));
    expect(within(form).getByText('Give a repository path or URL')).toBeTruthy();
    expect(within(form).getByText('Describe the task')).toBeTruthy();
    expect(start).not.toHaveBeenCalled();
    fireEvent.change(within(form).getByLabelText('Repository'), { target: { value: '/home/dev/src/app' } });
    fireEvent.change(within(form).getByLabelText('Task'), { target: { value: 'Fix the login test' } });
    fireEvent.change(within(form).getByLabelText('Base branch'), { target: { value: 'develop' } });
    fireEvent.click(within(form).getByRole('button', { name: 'Start run' }));
    await waitFor(() =>
      expect(start).toHaveBeenCalledWith({ repo: '/home/dev/src/app', task: 'Fix the login test', agent: 'claude -p "$PORTHOLE_TASK"', branch: 'develop' }),
    );
  });

  it('opens a run: live view, transcript, tasks, and the diff stat after collecting', async () => {
    const collect = vi.spyOn(backend, 'runCollect');
    const start = vi.spyOn(backend, 'liveStart');
    renderView(<RunsView runId="r-7f3a" />);
    await screen.findByText('Trim todo titles and add on Enter; cover it with a test');
    await waitFor(() => expect(start).toHaveBeenCalledWith('run-7f3a', expect.any(Function), expect.any(Function), undefined));
    await waitFor(() => expect(screen.getByTestId('terminal-agent')).toBeTruthy());
    await waitFor(() => expect(screen.getByText('Trim titles in TodoInput')).toBeTruthy());
    fireEvent.click(screen.getByRole('button', { name: 'Collect' }));
    await waitFor(() => expect(collect).toHaveBeenCalledWith('r-7f3a'));
    await screen.findByText(/3 files changed, 26 insertions/);
  });
});
