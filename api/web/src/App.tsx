import { useEffect, useState } from 'react';
import { setToken, token } from './api.ts';
import { RangeProvider } from './range.tsx';
import Overview from './pages/Overview.tsx';
import Flows, { FlowDetail } from './pages/Flows.tsx';
import Alerts, { AlertDetail } from './pages/Alerts.tsx';
import Host from './pages/Host.tsx';
import Sensors from './pages/Sensors.tsx';

/**
 * The route is the URL hash: #/, #/flows (?filters), #/flows/<id>, #/alerts, #/alerts/<id>,
 * #/host/<addr>, #/sensors.
 */
function useRoute(): string[] {
  const parse = () => window.location.hash.replace(/^#\/?/, '').split('?')[0].split('/').map(decodeURIComponent);
  const [route, setRoute] = useState(parse);
  useEffect(() => {
    const on = () => setRoute(parse());
    // a new query (#/flows?addr=...) remounts the page with it
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return route;
}

const PAGES: [string, string][] = [['', 'Overview'], ['flows', 'Flows'], ['alerts', 'Alerts'], ['host', 'Host'], ['sensors', 'Sensors']];

export default function App() {
  const route = useRoute();
  const [page, arg] = [route[0] || '', route.slice(1).join('/')];
  const [tok, setTok] = useState(token());
  const [draft, setDraft] = useState('');
  return (
    <div className="app">
      <header>
        <h1><a href="#/">netwatch</a></h1>
        <nav>
          {PAGES.map(([p, label]) => (
            <a key={p} href={`#/${p}`} className={page === p ? 'active' : ''} data-testid={`nav-${p || 'overview'}`}>{label}</a>
          ))}
          <a href="/api/docs">API</a>
        </nav>
        <form
          className="login"
          onSubmit={(e) => {
            e.preventDefault();
            setToken(draft);
            setTok(draft);
            setDraft('');
            window.location.reload();
          }}
        >
          {tok ? (
            <button type="button" onClick={() => { setToken(''); setTok(''); window.location.reload(); }}>log out</button>
          ) : (
            <>
              <input type="password" placeholder="token" aria-label="token" value={draft} onChange={(e) => setDraft(e.target.value)} data-testid="token" />
              <button type="submit">log in</button>
            </>
          )}
        </form>
      </header>
      <RangeProvider>
        <main data-testid={`page-${page || 'overview'}`}>
          {page === '' && <Overview />}
          {page === 'flows' && (arg ? <FlowDetail id={arg} /> : <Flows key={window.location.hash} />)}
          {page === 'alerts' && (arg ? <AlertDetail id={arg} /> : <Alerts />)}
          {page === 'host' && <Host addr={arg} />}
          {page === 'sensors' && <Sensors />}
        </main>
      </RangeProvider>
    </div>
  );
}
