// Every event of a session, stamped with the session clock, filtered by kind and actor.

import { useEffect, useMemo, useRef, useState } from 'react';
import type { Actor, Event } from '../backend/types';
import { describe } from '../lib/describe';
import { fmtClock } from '../lib/format';

const ACTORS: Actor[] = ['agent', 'human', 'system'];
const NOT_TERMINAL = '__not_terminal__';
const ALL = '__all__';

export function EventLog(props: {
  events: Event[];
  /** Makes rows clickable (replay: seek there). */
  onSelect?: (e: Event) => void;
  /** Highlights the last event at or before this time. */
  currentT?: number;
  /** Keep the newest row in view as events arrive. */
  follow?: boolean;
  limit?: number;
}) {
  const { events, currentT, follow } = props;
  const [kind, setKind] = useState<string>(NOT_TERMINAL);
  const [actors, setActors] = useState<Set<Actor>>(() => new Set(ACTORS));
  const listRef = useRef<HTMLDivElement>(null);
  const selectRef = useRef(props.onSelect);
  selectRef.current = props.onSelect;
  const clickable = !!props.onSelect;

  const kinds = useMemo(() => [...new Set(events.map((e) => e.kind))].sort(), [events]);
  const shown = useMemo(() => {
    const f = events.filter((e) => actors.has(e.actor) && (kind === ALL || (kind === NOT_TERMINAL ? e.kind !== 'terminal' : e.kind === kind)));
    return f.slice(-(props.limit ?? 2000));
  }, [events, actors, kind, props.limit]);

  // Rows depend on the events and filters only, not on the moving playhead.
  const rows = useMemo(
    () =>
      shown.map((e) => {
        const content = (
          <>
            <span className="t mono">{fmtClock(e.t_ms)}</span>
            <span className={`actor actor-${e.actor}`}>{e.actor}</span>
            <span className="kind">{e.kind}</span>
            <span className="desc">{describe(e)}</span>
          </>
        );
        const cls = `event-row${e.kind === 'error' || e.kind === 'refused' || e.kind === 'stalled' ? ' warn' : ''}`;
        return clickable ? (
          <button key={e.seq} role="listitem" className={cls} data-seq={e.seq} onClick={() => selectRef.current?.(e)} title={`${describe(e)}\nClick to seek to ${fmtClock(e.t_ms)}`}>
            {content}
          </button>
        ) : (
          <div key={e.seq} role="listitem" className={cls} data-seq={e.seq} title={describe(e)}>
            {content}
          </div>
        );
      }),
    [shown, clickable],
  );

  const currentSeq = useMemo(() => {
    if (currentT === undefined) return -1;
    let lo = 0;
    let hi = shown.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (shown[mid].t_ms <= currentT) lo = mid + 1;
      else hi = mid;
    }
    return lo > 0 ? shown[lo - 1].seq : -1;
  }, [shown, currentT]);

  useEffect(() => {
    const el = listRef.current;
    if (el && follow) el.scrollTop = el.scrollHeight;
  }, [rows, follow]);

  useEffect(() => {
    const list = listRef.current;
    if (!list) return;
    list.querySelectorAll('.event-row.current').forEach((r) => r.classList.remove('current'));
    if (currentSeq < 0) return;
    const row = list.querySelector<HTMLElement>(`[data-seq="${currentSeq}"]`);
    if (!row) return;
    row.classList.add('current');
    if (!follow) {
      const top = row.offsetTop; // .event-rows is the offset parent
      if (top < list.scrollTop || top + row.offsetHeight > list.scrollTop + list.clientHeight) list.scrollTop = top - list.clientHeight / 3;
    }
  }, [currentSeq, rows, follow]);

  const toggle = (a: Actor) =>
    setActors((s) => {
      const n = new Set(s);
      if (n.has(a)) n.delete(a);
      else n.add(a);
      return n;
    });

  return (
    <div className="event-log">
      <div className="event-filters">
        <select aria-label="Filter by kind" value={kind} onChange={(e) => setKind(e.target.value)}>
          <option value={NOT_TERMINAL}>All but terminals</option>
          <option value={ALL}>All kinds</option>
          {kinds.map((k) => (
            <option key={k} value={k}>
              {k}
            </option>
          ))}
        </select>
        <div className="chips" role="group" aria-label="Filter by actor">
          {ACTORS.map((a) => (
            <button key={a} className={`chip actor-${a}${actors.has(a) ? ' on' : ''}`} aria-pressed={actors.has(a)} onClick={() => toggle(a)}>
              {a}
            </button>
          ))}
        </div>
      </div>
      <div className="event-rows" ref={listRef} role="list" aria-label="Events">
        {shown.length === 0 && <div className="empty small">No events match.</div>}
        {rows}
      </div>
    </div>
  );
}
