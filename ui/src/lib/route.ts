// Hash routing: every view has a URL (#/machines, #/live/web-app, #/replay/s-1234, ...).

import { useEffect, useState } from 'react';

export const VIEWS = ['machines', 'live', 'replay', 'runs', 'environments', 'secrets'] as const;
export type View = (typeof VIEWS)[number];

export interface Route {
  view: View;
  /** Path segments after the view, decoded. */
  params: string[];
}

export function parseHash(hash: string): Route {
  const parts = hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  const view = (VIEWS as readonly string[]).includes(parts[0]) ? (parts[0] as View) : 'machines';
  return { view, params: view === parts[0] ? parts.slice(1) : [] };
}

export function href(view: View, ...params: string[]): string {
  return `#/${[view, ...params.map(encodeURIComponent)].join('/')}`;
}

export function navigate(view: View, ...params: string[]): void {
  window.location.hash = href(view, ...params);
}

/** `next`, unless it is the route `prev` already is (keeps React from re-rendering). */
function sameRoute(prev: Route, next: Route): Route {
  return prev.view === next.view && prev.params.join('/') === next.params.join('/') ? prev : next;
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseHash(window.location.hash));
  useEffect(() => {
    const on = () => setRoute((r) => sameRoute(r, parseHash(window.location.hash)));
    window.addEventListener('hashchange', on);
    // The hash may have changed between the first render (which read it) and this listener:
    // read it again, or `location.hash = '#/live/NAME'` right after load is lost (seen 1 in 8).
    on();
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return route;
}
