import { fireEvent, screen, waitFor, within } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { backend } from '../backend';
import { GRID_FPS, LiveView } from '../views/Live';
import { renderView } from './util';

afterEach(() => vi.restoreAllMocks());

/** The canvas shows the 1280x800 stream at half size, 640x400 CSS pixels, at the page origin. */
function halfSizeCanvas() {
  const canvas = screen.getByTestId('video-canvas');
  canvas.getBoundingClientRect = () => ({ left: 0, top: 0, width: 640, height: 400, right: 640, bottom: 400, x: 0, y: 0, toJSON: () => ({}) }) as DOMRect;
  return screen.getByTestId('video-stage');
}

describe('Live', () => {
  it('shows the session, its terminals and its log', async () => {
    renderView(<LiveView machine="web-app" />);
    await screen.findByText(/1280×800 · session s-/);
    const tabs = await screen.findByRole('tablist', { name: 'Terminals' });
    for (const name of ['install', 'dev', 'tests', 'agent']) expect(within(tabs).getByRole('tab', { name })).toBeTruthy();
    const log = screen.getByRole('list', { name: 'Events' });
    await waitFor(() => expect(within(log).getAllByText('left_click', { exact: false }).length).toBeGreaterThan(0));
    expect(within(log).getAllByText(/^\d\d:\d\d\.\d\d\d$/).length).toBeGreaterThan(0);
    fireEvent.click(screen.getByRole('button', { name: 'agent' }));
    expect(within(log).queryAllByText(/left_click/)).toHaveLength(0);
  });

  it('takeover: control("take") first, then pointer and keys in stream pixels', async () => {
    const control = vi.spyOn(backend, 'control');
    const input = vi.spyOn(backend, 'liveInput');
    renderView(<LiveView machine="web-app" />);
    await screen.findByText(/1280×800 · session s-/);
    const stage = halfSizeCanvas();

    // Not interactive before taking control.
    fireEvent.pointerDown(stage, { clientX: 100, clientY: 50, buttons: 1 });
    expect(input).not.toHaveBeenCalled();

    fireEvent.click(screen.getByRole('button', { name: 'Take control' }));
    await waitFor(() => expect(control).toHaveBeenCalledWith('web-app', 'take'));
    await screen.findByRole('button', { name: 'Release control' });
    expect(screen.getByTestId('control-state').textContent).toMatch(/You have control/);

    fireEvent.pointerDown(stage, { clientX: 100, clientY: 50, buttons: 1 });
    fireEvent.pointerUp(stage, { clientX: 101, clientY: 51, buttons: 0 });
    fireEvent.keyDown(stage, { code: 'KeyS', key: 's' });
    fireEvent.keyUp(stage, { code: 'KeyS', key: 's' });
    fireEvent.wheel(stage, { deltaX: 0, deltaY: 120, deltaMode: 0 });

    expect(input.mock.calls.map((c) => c[1])).toEqual([
      { type: 'pointer', x: 200, y: 100, buttons: 1 },
      { type: 'pointer', x: 202, y: 102, buttons: 0 },
      { type: 'key', code: 'KeyS', key: 's', down: true },
      { type: 'key', code: 'KeyS', key: 's', down: false },
      { type: 'wheel', dx: 0, dy: 120 },
    ]);
    expect(input.mock.calls.every((c) => c[0] === 'web-app')).toBe(true);
    expect(control.mock.invocationCallOrder[0]).toBeLessThan(input.mock.invocationCallOrder[0]);

    // Coordinates clamp to the stream.
    fireEvent.pointerDown(stage, { clientX: 900, clientY: -5, buttons: 1 });
    expect(input.mock.calls.at(-1)![1]).toEqual({ type: 'pointer', x: 1279, y: 0, buttons: 1 });

    fireEvent.click(screen.getByRole('button', { name: 'Release control' }));
    await waitFor(() => expect(control).toHaveBeenLastCalledWith('web-app', 'release'));
    await screen.findByRole('button', { name: 'Take control' });
    const calls = input.mock.calls.length;
    fireEvent.pointerDown(stage, { clientX: 10, clientY: 10, buttons: 1 });
    expect(input.mock.calls.length).toBe(calls);
  });

  it('grid: every running machine at a reduced rate, the focused one at full rate', async () => {
    const start = vi.spyOn(backend, 'liveStart');
    renderView(<LiveView machine={null} />);
    const tile = await screen.findByTestId('tile-gpu-box');
    await waitFor(() => expect(start.mock.calls.length).toBeGreaterThanOrEqual(5));
    const names = new Set(start.mock.calls.map((c) => c[0]));
    expect([...names].sort()).toEqual(['ci-runner', 'gpu-box', 'run-2c91', 'run-7f3a', 'web-app']);
    expect(start.mock.calls.every((c) => c[3]?.maxFps === GRID_FPS)).toBe(true);

    fireEvent.click(tile);
    await waitFor(() => expect(start.mock.calls.some((c) => c[0] === 'gpu-box' && c[3] === undefined)).toBe(true));
    expect(within(tile).getByText('full rate')).toBeTruthy();
  });
});
