import { act, fireEvent, screen, waitFor, within } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { backend, type InputMessage } from '../backend';
import { GRID_FPS, LiveView } from '../views/Live';
import { FIT_DEBOUNCE_MS, FIT_KEY } from '../views/useFitDisplay';
import { renderView } from './util';

afterEach(() => {
  vi.restoreAllMocks();
  vi.unstubAllGlobals();
});

const rect = (width: number, height: number) => ({ left: 0, top: 0, width, height, right: width, bottom: height, x: 0, y: 0, toJSON: () => ({}) }) as DOMRect;

/**
 * jsdom has no layout: the video area measures `area` (CSS pixels), and resizing it is up to
 * the test (`resize`), as a ResizeObserver would report it.
 */
function videoArea(width: number, height: number) {
  const area = { width, height };
  vi.spyOn(HTMLElement.prototype, 'getBoundingClientRect').mockImplementation(function (this: HTMLElement) {
    return this.classList.contains('video-box') ? rect(area.width, area.height) : rect(0, 0);
  });
  const observers: (() => void)[] = [];
  vi.stubGlobal(
    'ResizeObserver',
    class {
      constructor(private cb: () => void) {}
      observe() {
        observers.push(this.cb);
      }
      disconnect() {
        observers.splice(observers.indexOf(this.cb), 1);
      }
    },
  );
  return {
    resize(w: number, h: number) {
      area.width = w;
      area.height = h;
      act(() => observers.forEach((cb) => cb()));
    },
  };
}

const displayMessages = (spy: { mock: { calls: [string, InputMessage][] } }) => spy.mock.calls.map((c) => c[1]).filter((m) => m.type === 'display');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

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

  it('clipboard: never pushed on takeover or focus, only by "Send clipboard", Ctrl+V or a paste in the picture', async () => {
    const readText = vi.fn(async () => 'host secret');
    vi.stubGlobal('navigator', Object.assign(Object.create(navigator), { clipboard: { readText, writeText: vi.fn(async () => {}) } }));
    const input = vi.spyOn(backend, 'liveInput');
    const clipboardSent = () => input.mock.calls.map((c) => c[1]).filter((m) => m.type === 'clipboard');
    renderView(<LiveView machine="web-app" />);
    await screen.findByText(/1280×800 · session s-/, {}, { timeout: 5000 });
    const stage = halfSizeCanvas();
    expect(screen.queryByRole('button', { name: 'Send clipboard' })).toBeNull();

    fireEvent.click(screen.getByRole('button', { name: 'Take control' }));
    await screen.findByRole('button', { name: 'Release control' }, { timeout: 5000 });
    // Takeover and the window coming to the front: the host clipboard stays on the host.
    fireEvent.focus(window);
    window.dispatchEvent(new FocusEvent('focus'));
    await sleep(50);
    expect(readText).not.toHaveBeenCalled();
    expect(clipboardSent()).toEqual([]);

    // The button: one explicit send.
    fireEvent.click(screen.getByRole('button', { name: 'Send clipboard' }));
    await waitFor(() => expect(clipboardSent()).toEqual([{ type: 'clipboard', text: 'host secret' }]));

    // Ctrl+V in the picture: the clipboard first, then the keys that paste it in the guest.
    input.mockClear();
    fireEvent.keyDown(stage, { code: 'ControlLeft', key: 'Control', ctrlKey: true });
    fireEvent.keyDown(stage, { code: 'KeyV', key: 'v', ctrlKey: true });
    fireEvent.keyUp(stage, { code: 'KeyV', key: 'v', ctrlKey: true });
    fireEvent.keyUp(stage, { code: 'ControlLeft', key: 'Control' });
    await waitFor(() => expect(input.mock.calls.length).toBe(5));
    expect(input.mock.calls.map((c) => c[1])).toEqual([
      { type: 'key', code: 'ControlLeft', key: 'Control', down: true },
      { type: 'clipboard', text: 'host secret' },
      { type: 'key', code: 'KeyV', key: 'v', down: true },
      { type: 'key', code: 'KeyV', key: 'v', down: false },
      { type: 'key', code: 'ControlLeft', key: 'Control', down: false },
    ]);

    // A paste command in the picture sends what it pastes.
    input.mockClear();
    const paste = new Event('paste', { bubbles: true, cancelable: true });
    Object.assign(paste, { clipboardData: { getData: (t: string) => (t === 'text/plain' ? 'pasted text' : '') } });
    stage.dispatchEvent(paste);
    expect(clipboardSent()).toEqual([{ type: 'clipboard', text: 'pasted text' }]);
    expect(paste.defaultPrevented).toBe(true);

    // Released: no button, and a paste goes nowhere.
    fireEvent.click(screen.getByRole('button', { name: 'Release control' }));
    await screen.findByRole('button', { name: 'Take control' }, { timeout: 5000 });
    expect(screen.queryByRole('button', { name: 'Send clipboard' })).toBeNull();
    input.mockClear();
    stage.dispatchEvent(paste);
    fireEvent.focus(window);
    await sleep(50);
    expect(clipboardSent()).toEqual([]);
  }, 30_000); // a takeover and a release on a mock stream

  it('fit to window: offered only with control, sends the area size when turned on and again on resize', async () => {
    const area = videoArea(1001.7, 625.9);
    const input = vi.spyOn(backend, 'liveInput');
    renderView(<LiveView machine="web-app" />);
    await screen.findByText(/1280×800 · session s-/);
    expect(screen.queryByRole('button', { name: 'Fit to window' })).toBeNull();

    fireEvent.click(screen.getByRole('button', { name: 'Take control' }));
    const fit = await screen.findByRole('button', { name: 'Fit to window' });
    await waitFor(() => expect((fit as HTMLButtonElement).disabled).toBe(false));
    // Off by default: nothing sent.
    expect(fit.getAttribute('aria-pressed')).toBe('false');
    await sleep(FIT_DEBOUNCE_MS + 50);
    expect(displayMessages(input)).toEqual([]);

    fireEvent.click(fit);
    expect(fit.getAttribute('aria-pressed')).toBe('true');
    expect(localStorage.getItem(FIT_KEY)).toBe('on');
    // Sent once the layout has settled (within two frames), not before.
    await waitFor(() => expect(displayMessages(input)).toEqual([{ type: 'display', width: 1001, height: 625 }]));
    expect(input.mock.calls.at(-1)![0]).toBe('web-app');
    // The agent rounds down to even; the stream and the header follow.
    await screen.findByText(/1000×624 · session s-/);

    // A resize is sent once the window settles, and only when the size changed.
    area.resize(1200, 700);
    area.resize(1200, 700.4);
    expect(displayMessages(input)).toHaveLength(1);
    await waitFor(() => expect(displayMessages(input)).toEqual([
      { type: 'display', width: 1001, height: 625 },
      { type: 'display', width: 1200, height: 700 },
    ]));
    await screen.findByText(/1200×700 · session s-/);
    area.resize(1200, 700);
    // A border's worth of change is not a new screen.
    area.resize(1202, 698);
    await sleep(FIT_DEBOUNCE_MS + 50);
    expect(displayMessages(input)).toHaveLength(2);

    // Pointer coordinates are in the new screen's pixels: the picture at half size, clicked at its middle.
    const canvas = screen.getByTestId('video-canvas');
    canvas.getBoundingClientRect = () => rect(600, 350);
    fireEvent.pointerDown(screen.getByTestId('video-stage'), { clientX: 300, clientY: 175, buttons: 1 });
    expect(input.mock.calls.at(-1)![1]).toEqual({ type: 'pointer', x: 600, y: 350, buttons: 1 });
    fireEvent.pointerUp(screen.getByTestId('video-stage'), { clientX: 300, clientY: 175, buttons: 0 });

    // Releasing control: the agent restores its size, and the toggle goes away.
    fireEvent.click(screen.getByRole('button', { name: 'Release control' }));
    await screen.findByRole('button', { name: 'Take control' });
    expect(screen.queryByRole('button', { name: 'Fit to window' })).toBeNull();
    await screen.findByText(/1280×800 · session s-/);
  }, 15_000); // several debounce waits and a takeover on a mock stream

  it('fit to window, remembered: taking control sends the size at once', async () => {
    localStorage.setItem(FIT_KEY, 'on');
    videoArea(1100, 690);
    const input = vi.spyOn(backend, 'liveInput');
    renderView(<LiveView machine="web-app" />);
    await screen.findByText(/1280×800 · session s-/);
    fireEvent.click(screen.getByRole('button', { name: 'Take control' }));
    await waitFor(() => expect(displayMessages(input)).toEqual([{ type: 'display', width: 1100, height: 690 }]));
    expect(screen.getByRole('button', { name: 'Fit to window' }).getAttribute('aria-pressed')).toBe('true');

    // Turned off: back to the screen's own size.
    fireEvent.click(screen.getByRole('button', { name: 'Fit to window' }));
    expect(localStorage.getItem(FIT_KEY)).toBe('off');
    expect(displayMessages(input).at(-1)).toEqual({ type: 'display', width: 1280, height: 800 });
    fireEvent.click(screen.getByRole('button', { name: 'Release control' }));
    await screen.findByRole('button', { name: 'Take control' });
  });

  it('fit to window is disabled, with the reason, where the screen cannot change size', async () => {
    localStorage.setItem(FIT_KEY, 'on');
    videoArea(1000, 640);
    const input = vi.spyOn(backend, 'liveInput');
    renderView(<LiveView machine="gpu-box" />);
    await screen.findByText(/1280×800 · session s-/);
    fireEvent.click(screen.getByRole('button', { name: 'Take control' }));
    const fit = await screen.findByRole('button', { name: 'Fit to window' });
    await waitFor(() => expect(fit.getAttribute('title')).toMatch(/fixed 1280x800 screen \(Xvfb cannot add RandR modes\)/));
    expect((fit as HTMLButtonElement).disabled).toBe(true);
    expect(fit.getAttribute('aria-pressed')).toBe('false');
    expect(fit.parentElement!.getAttribute('title')).toBe(fit.getAttribute('title'));
    await sleep(FIT_DEBOUNCE_MS + 50);
    expect(displayMessages(input)).toEqual([]);
    fireEvent.click(screen.getByRole('button', { name: 'Release control' }));
    await screen.findByRole('button', { name: 'Take control' });
  });

  it("fit to window: a resize the agent refuses is shown to the user", async () => {
    videoArea(1000, 640);
    // The agent thinks it can; the X server then says otherwise.
    vi.spyOn(backend, 'displayInfo').mockResolvedValue({ width: 1280, height: 800, resizable: true });
    renderView(<LiveView machine="gpu-box" />);
    await screen.findByText(/1280×800 · session s-/);
    fireEvent.click(screen.getByRole('button', { name: 'Take control' }));
    const fit = await screen.findByRole('button', { name: 'Fit to window' });
    await waitFor(() => expect((fit as HTMLButtonElement).disabled).toBe(false));
    fireEvent.click(fit);
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toMatch(/^Fit to window: the X server on :99 has a fixed 1280x800 screen/);
    expect(screen.getByText(/1280×800 · session s-/)).toBeTruthy();
    fireEvent.click(screen.getByRole('button', { name: 'Release control' }));
    await screen.findByRole('button', { name: 'Take control' });
  });

  it('a failed link says reconnecting, starts the stream again until it works, and clears on the next picture', async () => {
    const real = backend.liveStart.bind(backend);
    const sinks: { onFrame: (b: ArrayBuffer) => void; onEvent: (e: import('../backend').Event) => void }[] = [];
    let failNext = 0;
    const start = vi.spyOn(backend, 'liveStart').mockImplementation(async (name, onFrame, onEvent, opts) => {
      sinks.push({ onFrame, onEvent });
      if (failNext > 0) {
        failNext--;
        throw { code: 'agent', message: 'connection refused' };
      }
      return real(name, onFrame, onEvent, opts);
    });
    renderView(<LiveView machine="gpu-box" />);
    await screen.findByText(/1280×800 · session s-/);
    expect(start).toHaveBeenCalledTimes(1);
    failNext = 1; // the agent is still down on the first try
    act(() => sinks[0].onEvent({ seq: 0, t_ms: 0, actor: 'system', kind: 'link', data: { state: 'disconnected' } }));
    expect(await screen.findByTestId('reconnecting')).toBeTruthy();
    expect(start).toHaveBeenCalledTimes(1); // disconnected may heal by itself: no restart yet
    act(() => sinks[0].onEvent({ seq: 0, t_ms: 0, actor: 'system', kind: 'link', data: { state: 'failed' } }));
    await waitFor(() => expect(start).toHaveBeenCalledTimes(3)); // a refused try, then one that works
    expect(screen.getByTestId('reconnecting')).toBeTruthy();
    // The next picture drawn ends it (a keyframe through the sink the last start got).
    const { buildFrame } = await import('../video/decoder');
    act(() => sinks[2].onFrame(buildFrame({ key: true, tMs: 5000, rtp: 0 }, new Uint8Array([0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x65, 0x88]))));
    await waitFor(() => expect(screen.queryByTestId('reconnecting')).toBeNull());
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
