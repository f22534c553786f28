import { fireEvent, screen, waitFor, within } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { backend } from '../backend';
import { ReplayView } from '../views/Replay';
import { renderView } from './util';

afterEach(() => vi.restoreAllMocks());

const SESSION = 's-6746a1c0';

describe('Replay', () => {
  it('lists synced sessions', async () => {
    renderView(<ReplayView sessionId={null} />);
    const card = await screen.findByTestId(`session-${SESSION}`);
    expect(within(card).getByText('web-app')).toBeTruthy();
    expect(within(card).getByText('3m 12s')).toBeTruthy();
    expect(within(card).getByText('ended')).toBeTruthy();
    expect(card.getAttribute('href')).toBe(`#/replay/${SESSION}`);
    expect(screen.getByTestId('session-s-67450b77').textContent).toContain('interrupted');
  });

  it('syncs a running machine into the library', async () => {
    const sync = vi.spyOn(backend, 'sessionsSync');
    renderView(<ReplayView sessionId={null} />);
    await screen.findByTestId(`session-${SESSION}`);
    await waitFor(() => expect((screen.getByLabelText('Machine to sync') as HTMLSelectElement).value).toBe('web-app'));
    fireEvent.click(screen.getByRole('button', { name: 'Sync recordings' }));
    await waitFor(() => expect(sync).toHaveBeenCalledWith('web-app'));
    await screen.findByText(/Synced 1 session from web-app/);
  });

  it('clicking an event seeks there: replayPlay from its t_ms', async () => {
    const play = vi.spyOn(backend, 'replayPlay');
    const stop = vi.spyOn(backend, 'replayStop');
    renderView(<ReplayView sessionId={SESSION} />);
    const log = await screen.findByRole('list', { name: 'Events' });
    // Opening shows the first picture.
    await waitFor(() => expect(play).toHaveBeenCalledWith(SESSION, 0, 1, expect.any(Function)));

    const events = await backend.replayEvents(SESSION);
    const target = events.find((e) => e.kind === 'action' && e.data.action === 'type')!;
    const row = log.querySelector<HTMLElement>(`[data-seq="${target.seq}"]`)!;
    expect(row.textContent).toContain(`type "${target.data.text}"`);
    fireEvent.click(row);
    await waitFor(() => expect(play).toHaveBeenLastCalledWith(SESSION, target.t_ms, 1, expect.any(Function)));
    expect(stop).toHaveBeenCalledWith(SESSION);
    expect(screen.getByTestId('replay-position').textContent).toMatch(/^\d\d:\d\d\.\d\d\d \/ 03:12\.000$/);

    // Speed applies to the next play.
    fireEvent.click(screen.getByRole('radio', { name: '4x' }));
    fireEvent.click(screen.getByRole('button', { name: 'Play' }));
    await waitFor(() => expect(play.mock.calls.at(-1)![2]).toBe(4));

    // Timeline markers seek too.
    const human = events.find((e) => e.actor === 'human' && e.kind === 'control')!;
    const marker = [...screen.getByTestId('timeline').querySelectorAll<HTMLElement>('.marker')].find((m) => m.title.startsWith(`${formatT(human.t_ms)} human`))!;
    fireEvent.click(marker);
    await waitFor(() => expect(play).toHaveBeenLastCalledWith(SESSION, human.t_ms, 4, expect.any(Function)));
  });

  it('exports evidence to a folder', async () => {
    const exp = vi.spyOn(backend, 'exportEvidence');
    renderView(<ReplayView sessionId={SESSION} />);
    await screen.findByRole('list', { name: 'Events' });
    fireEvent.click(await screen.findByRole('button', { name: 'Export evidence' }));
    const dialog = screen.getByRole('dialog', { name: 'Export evidence' });
    fireEvent.click(within(dialog).getByRole('button', { name: 'Export' }));
    expect(within(dialog).getByText('Choose a folder to export into')).toBeTruthy();
    fireEvent.change(within(dialog).getByLabelText('Folder'), { target: { value: '/tmp/evidence' } });
    fireEvent.change(within(dialog).getByLabelText('From (optional)'), { target: { value: '00:30' } });
    fireEvent.click(within(dialog).getByRole('button', { name: 'Export' }));
    await waitFor(() => expect(exp).toHaveBeenCalledWith(SESSION, '/tmp/evidence', 30000, undefined));
    await within(dialog).findByText(`/tmp/evidence/${SESSION}/index.html`);
  });
});

function formatT(ms: number) {
  const m = Math.floor(ms / 60000);
  const s = Math.floor(ms / 1000) % 60;
  return `${String(m).padStart(2, '0')}:${String(s).padStart(2, '0')}.${String(ms % 1000).padStart(3, '0')}`;
}
