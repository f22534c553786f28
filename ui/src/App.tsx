import { useEffect, useState, type ReactNode } from 'react';
import { backend, isTauri } from './backend';
import { ToastProvider } from './components/Toasts';
import { href, useRoute, type View } from './lib/route';
import { EnvironmentsView } from './views/Environments';
import { LiveView } from './views/Live';
import { MachinesView } from './views/Machines';
import { ReplayView } from './views/Replay';
import { RunsView } from './views/Runs';
import { SecretsView } from './views/Secrets';

const NAV: { view: View; label: string; icon: ReactNode }[] = [
  {
    view: 'machines',
    label: 'Machines',
    icon: (
      <>
        <rect x="3" y="4" width="18" height="12" rx="2" />
        <path d="M8 20h8M12 16v4" />
      </>
    ),
  },
  {
    view: 'live',
    label: 'Live',
    icon: (
      <>
        <circle cx="12" cy="12" r="3" />
        <path d="M5.6 5.6a9 9 0 0 0 0 12.8M18.4 5.6a9 9 0 0 1 0 12.8" />
      </>
    ),
  },
  {
    view: 'replay',
    label: 'Replay',
    icon: (
      <>
        <path d="M3 12a9 9 0 1 0 3-6.7" />
        <path d="M3 4v5h5" />
        <path d="M10 9l5 3-5 3z" />
      </>
    ),
  },
  {
    view: 'runs',
    label: 'Runs',
    icon: (
      <>
        <circle cx="6" cy="6" r="2" />
        <circle cx="6" cy="18" r="2" />
        <circle cx="18" cy="12" r="2" />
        <path d="M6 8v8M8 6h4a4 4 0 0 1 4 4" />
      </>
    ),
  },
  {
    view: 'environments',
    label: 'Environments',
    icon: (
      <>
        <path d="M4 6h16M4 12h16M4 18h10" />
      </>
    ),
  },
  {
    view: 'secrets',
    label: 'Secrets',
    icon: (
      <>
        <rect x="5" y="11" width="14" height="9" rx="2" />
        <path d="M8 11V8a4 4 0 0 1 8 0v3" />
      </>
    ),
  },
];

export function App() {
  const route = useRoute();
  const [version, setVersion] = useState('');
  useEffect(() => {
    backend.appVersion().then(setVersion, () => setVersion(''));
  }, []);

  let page: ReactNode;
  switch (route.view) {
    case 'live':
      page = <LiveView machine={route.params[0] ?? null} />;
      break;
    case 'replay':
      page = <ReplayView sessionId={route.params[0] ?? null} />;
      break;
    case 'runs':
      page = <RunsView runId={route.params[0] ?? null} />;
      break;
    case 'environments':
      page = <EnvironmentsView />;
      break;
    case 'secrets':
      page = <SecretsView />;
      break;
    default:
      page = <MachinesView />;
  }

  return (
    <ToastProvider>
      <div className="app">
        <nav className="sidebar" aria-label="Main">
          <div className="brand">
            <svg viewBox="0 0 24 24" width="20" height="20" aria-hidden>
              <circle cx="12" cy="12" r="9" fill="none" stroke="currentColor" strokeWidth="2" />
              <circle cx="12" cy="12" r="4" fill="currentColor" />
            </svg>
            Porthole
          </div>
          <ul>
            {NAV.map((n) => (
              <li key={n.view}>
                <a href={href(n.view)} className={route.view === n.view ? 'nav-item active' : 'nav-item'} aria-current={route.view === n.view ? 'page' : undefined}>
                  <svg viewBox="0 0 24 24" width="18" height="18" fill="none" stroke="currentColor" strokeWidth="1.8" strokeLinecap="round" strokeLinejoin="round" aria-hidden>
                    {n.icon}
                  </svg>
                  {n.label}
                </a>
              </li>
            ))}
          </ul>
          <div className="sidebar-foot">
            {version && <span>v{version}</span>}
            {!isTauri && <span className="badge subtle" title="Running in a browser against the in-memory mock backend">mock backend</span>}
          </div>
        </nav>
        <main className="main" key={route.view}>
          {page}
        </main>
      </div>
    </ToastProvider>
  );
}
