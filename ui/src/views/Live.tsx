import { useEffect, useState } from 'react';
import { backend, type InputMessage, type Machine } from '../backend';
import { EventLog } from '../components/EventLog';
import { Spinner } from '../components/Modal';
import { StatusDot } from '../components/StatusDot';
import { TerminalsPanel } from '../components/Terminal';
import { useToast } from '../components/Toasts';
import { errorMessage } from '../lib/errors';
import { fmtClock } from '../lib/format';
import { href, navigate } from '../lib/route';
import type { SessionClock } from '../video/overlay';
import { VideoSurface } from '../video/VideoSurface';
import { useFitDisplay, type FitDisplay } from './useFitDisplay';
import { useLive, type LiveSession } from './useLive';

/** Grid tiles run at this frame rate until focused. */
export const GRID_FPS = 5;

function useRunningMachines(): Machine[] | null {
  const [list, setList] = useState<Machine[] | null>(null);
  useEffect(() => {
    let alive = true;
    const load = () =>
      backend.machinesList().then(
        (ms) => alive && setList(ms.filter((m) => m.status === 'running')),
        () => alive && setList([]),
      );
    void load();
    const id = window.setInterval(load, 15_000);
    return () => {
      alive = false;
      window.clearInterval(id);
    };
  }, []);
  return list;
}

export function LiveView({ machine }: { machine: string | null }) {
  const machines = useRunningMachines();
  if (machine) return <LiveSingle name={machine} machines={machines} />;
  return <LiveGrid machines={machines} />;
}

/** Take/Release, pause/resume and the state line; shared by Live and Runs. */
export function ControlBar({ live, showStats, onToggleStats, fit }: { live: LiveSession; showStats: boolean; onToggleStats: () => void; fit?: FitDisplay }) {
  const toast = useToast();
  const [pending, setPending] = useState(false);
  const human = live.control.holder === 'human';
  const act = async (action: 'take' | 'release' | 'pause_agent' | 'resume_agent') => {
    setPending(true);
    try {
      await live.sendControl(action);
    } catch (e) {
      toast.error(errorMessage(e));
    } finally {
      setPending(false);
    }
  };
  return (
    <div className="control-bar">
      <span className={`control-state ${human ? 'human' : live.control.agent_paused ? 'paused' : 'agent'}`} data-testid="control-state">
        {human ? 'You have control · agent paused' : live.control.agent_paused ? 'Agent paused' : 'Agent in control'}
      </span>
      <button className={showStats ? 'toggle on' : 'toggle'} aria-pressed={showStats} onClick={onToggleStats}>
        Stats
      </button>
      {human && fit?.offered && <FitToggle fit={fit} />}
      {!human && (
        <button onClick={() => act(live.control.agent_paused ? 'resume_agent' : 'pause_agent')} disabled={pending || !!live.error}>
          {live.control.agent_paused ? 'Resume agent' : 'Pause agent'}
        </button>
      )}
      {human && <SendClipboard live={live} />}
      {human ? (
        <button className="human" onClick={() => act('release')} disabled={pending}>
          {pending && <Spinner />}Release control
        </button>
      ) : (
        <button className="primary" onClick={() => act('take')} disabled={pending || !!live.error}>
          {pending && <Spinner />}Take control
        </button>
      )}
    </div>
  );
}

/**
 * The host clipboard goes to the machine only when the user asks: this button, or a paste
 * (Ctrl+V, the paste command) in the picture. Never on focus or takeover: what was copied on
 * the host may be a password the agent would then read from the guest's clipboard.
 */
function SendClipboard({ live }: { live: LiveSession }) {
  const toast = useToast();
  const send = async () => {
    let text: string | undefined;
    try {
      text = await navigator.clipboard?.readText?.();
    } catch {
      text = undefined;
    }
    if (text === undefined) {
      toast.error('Could not read the clipboard here; paste into the picture with Ctrl+V instead.');
      return;
    }
    if (!text) {
      toast.error('The clipboard holds no text.');
      return;
    }
    try {
      await live.sendInput({ type: 'clipboard', text });
    } catch (e) {
      toast.error(errorMessage(e));
    }
  };
  return (
    <button onClick={() => void send()} title="Copy this computer's clipboard text into the machine's clipboard">
      Send clipboard
    </button>
  );
}

/** Opt-in: while you hold control the machine's screen takes the size of the picture's space. */
function FitToggle({ fit }: { fit: FitDisplay }) {
  const title =
    fit.resizable === false
      ? (fit.reason ?? "This machine's screen has a fixed size")
      : fit.resizable === null
        ? 'Checking whether the screen can change size…'
        : "Resize the machine's screen to this window while you have control";
  // A disabled button shows no tooltip in some engines: the wrapper carries it too.
  return (
    <span className="toggle-wrap" title={title}>
      <button
        className={fit.on && fit.resizable ? 'toggle on' : 'toggle'}
        aria-pressed={fit.on && !!fit.resizable}
        disabled={!fit.resizable}
        title={title}
        onClick={() => fit.setOn(!fit.on)}
      >
        Fit to window
      </button>
    </span>
  );
}

/** The picture with its input wiring. */
export function LiveStage({ name, live, showStats, onAreaResize }: { name: string; live: LiveSession; showStats: boolean; onAreaResize?: (size: { width: number; height: number }) => void }) {
  const human = live.control.holder === 'human';
  const onInput = (msg: InputMessage) => {
    backend.liveInput(name, msg).catch(() => undefined);
  };
  if (live.error) return <div className="video-box"><div className="banner error">{live.error}</div></div>;
  if (!live.decoder || !live.clock) return <div className="video-box" />;
  return (
    <div className={`stage-wrap${human ? ' taken' : ''}`}>
      <VideoSurface
        decoder={live.decoder}
        clock={live.clock}
        stream={live.screen}
        overlayEvents={live.overlayEvents}
        showStats={showStats}
        interactive={human}
        onInput={onInput}
        onAreaResize={onAreaResize}
        placeholder={live.info ? 'Waiting for the first keyframe…' : 'Connecting…'}
        label={`${name} desktop`}
      />
      {live.reconnecting && (
        <div className="reconnecting" role="status" data-testid="reconnecting">
          <Spinner />
          Connection to {name} lost · reconnecting…
        </div>
      )}
      {human && <div className="taken-hint">Your pointer and keyboard go to {name}. Release control to hand it back to the agent.</div>}
    </div>
  );
}

/** The session clock as the viewer sees it, ticking. */
function ClockReadout({ clock }: { clock: SessionClock | null }) {
  const [t, setT] = useState<number | null>(null);
  useEffect(() => {
    if (!clock) return;
    const id = window.setInterval(() => setT(clock.now()), 250);
    return () => window.clearInterval(id);
  }, [clock]);
  if (t === null || t <= 0) return null;
  return (
    <span className="mono small muted" title="Session clock">
      {fmtClock(t).slice(0, 7)}
    </span>
  );
}

function LiveSingle({ name, machines }: { name: string; machines: Machine[] | null }) {
  const live = useLive(name);
  const fit = useFitDisplay(name, live);
  const [showStats, setShowStats] = useState(false);
  return (
    <div className="page live-page">
      <header className="page-head compact">
        <div className="head-left">
          <a className="button ghost" href={href('live')} title="All running machines">
            ← Grid
          </a>
          <select aria-label="Machine" value={name} onChange={(e) => navigate('live', e.target.value)}>
            {!machines?.some((m) => m.name === name) && <option value={name}>{name}</option>}
            {machines?.map((m) => (
              <option key={m.name} value={m.name}>
                {m.name}
              </option>
            ))}
          </select>
          {live.info && (
            <span className="muted small">
              {live.info.codec} · {(live.screen ?? live.info).width}×{(live.screen ?? live.info).height} · session {live.info.sessionId}
            </span>
          )}
          <ClockReadout clock={live.clock} />
        </div>
        <ControlBar live={live} showStats={showStats} onToggleStats={() => setShowStats((s) => !s)} fit={fit} />
      </header>
      <div className="live-body">
        <div className={fit.active ? 'live-main fitting' : 'live-main'}>
          <LiveStage name={name} live={live} showStats={showStats} onAreaResize={fit.onArea} />
          <section className="side-panel grow terminals-panel">
            <TerminalsPanel terminals={live.terminals} empty="No terminal output yet." />
          </section>
        </div>
        <aside className="live-side">
          <section className="side-panel grow">
            <h3>Log</h3>
            <EventLog events={live.events} follow limit={500} />
          </section>
        </aside>
      </div>
    </div>
  );
}

function LiveGrid({ machines }: { machines: Machine[] | null }) {
  const [focused, setFocused] = useState<string | null>(null);
  if (!machines) {
    return (
      <div className="page">
        <header className="page-head">
          <h1>Live</h1>
        </header>
        <div className="empty">
          <Spinner /> Loading machines…
        </div>
      </div>
    );
  }
  return (
    <div className="page">
      <header className="page-head">
        <div>
          <h1>Live</h1>
          <p className="muted">
            {machines.length} running · tiles at {GRID_FPS} fps; the focused one at full rate. Double-click to open.
          </p>
        </div>
      </header>
      {machines.length === 0 ? (
        <div className="empty">
          <p>No machine is running.</p>
          <a className="button primary" href={href('machines')}>
            Go to Machines
          </a>
        </div>
      ) : (
        <div className="live-grid">
          {machines.map((m) => (
            <GridTile key={m.name} machine={m} focused={focused === m.name} onFocus={() => setFocused(m.name)} />
          ))}
        </div>
      )}
    </div>
  );
}

function GridTile({ machine, focused, onFocus }: { machine: Machine; focused: boolean; onFocus: () => void }) {
  const live = useLive(machine.name, focused ? undefined : GRID_FPS);
  const human = live.control.holder === 'human';
  return (
    <div
      className={`tile${focused ? ' focused' : ''}`}
      onClick={onFocus}
      onFocus={onFocus}
      onDoubleClick={() => navigate('live', machine.name)}
      tabIndex={0}
      onKeyDown={(e) => e.key === 'Enter' && navigate('live', machine.name)}
      aria-label={`${machine.name}${focused ? ' (focused)' : ''}`}
      data-testid={`tile-${machine.name}`}
    >
      <div className="tile-head">
        <StatusDot status={machine.status} />
        <span className="strong">{machine.name}</span>
        <span className="muted small">{machine.provider}</span>
        {human && <span className="badge human">human</span>}
        {live.stalled && <span className="badge warn">stalled</span>}
        {live.reconnecting && <span className="badge warn">reconnecting</span>}
        <span className="spacer" />
        <span className="muted small">{focused ? 'full rate' : `${GRID_FPS} fps`}</span>
        <a className="button small" href={href('live', machine.name)} onClick={(e) => e.stopPropagation()}>
          Open
        </a>
      </div>
      {live.error ? (
        <div className="banner error">{live.error}</div>
      ) : live.decoder && live.clock ? (
        <VideoSurface
          decoder={live.decoder}
          clock={live.clock}
          stream={live.screen}
          overlayEvents={live.overlayEvents}
          placeholder="Connecting…"
          className="tile-video"
          label={`${machine.name} desktop`}
        />
      ) : null}
    </div>
  );
}
