import { useState } from 'react';
import { ApiError, patchJSON, query } from '../api.ts';
import { time } from '../format.ts';
import { useFetch } from '../hooks.ts';
import { useRange } from '../range.tsx';
import type { Alert } from '../types.ts';

export default function Alerts() {
  const { range } = useRange();
  const [draft, setDraft] = useState({ severity: '', status: 'open,acknowledged', category: '', addr: '', all: 'true' });
  const [f, setF] = useState(draft);
  const time_ = f.all === 'true' || !range ? {} : { from: range.from, to: range.to };
  const { data, error } = useFetch<{ alerts: Alert[] }>(
    query('/api/v1/alerts', { severity: f.severity, status: f.status, category: f.category, addr: f.addr, limit: 200, ...time_ }), 15000);
  return (
    <section className="wide">
      <h2>Alerts</h2>
      <form className="filters" onSubmit={(e) => { e.preventDefault(); setF({ ...draft }); }}>
        <select aria-label="minimum severity" value={draft.severity} onChange={(e) => setDraft({ ...draft, severity: e.target.value })}>
          <option value="">any severity</option>
          {['low', 'medium', 'high', 'critical'].map((s) => <option key={s} value={s}>{s} or worse</option>)}
        </select>
        <select aria-label="status" value={draft.status} onChange={(e) => setDraft({ ...draft, status: e.target.value })}>
          <option value="open,acknowledged">not closed</option><option value="open">open</option>
          <option value="acknowledged">acknowledged</option><option value="closed">closed</option><option value="">any status</option>
        </select>
        <input placeholder="category" aria-label="category" value={draft.category} onChange={(e) => setDraft({ ...draft, category: e.target.value })} />
        <input placeholder="address or CIDR" aria-label="address" value={draft.addr} onChange={(e) => setDraft({ ...draft, addr: e.target.value })} />
        <select aria-label="time" value={draft.all} onChange={(e) => setDraft({ ...draft, all: e.target.value })}>
          <option value="true">any time</option><option value="false">in the range</option>
        </select>
        <button type="submit">filter</button>
      </form>
      {error && <p className="warn">{error}</p>}
      <div className="scroll tall">
        <table data-testid="alerts-table">
          <thead><tr><th>time</th><th>severity</th><th>category</th><th>source</th><th>target</th><th>status</th><th>summary</th></tr></thead>
          <tbody>
            {data && data.alerts.length === 0 && <tr><td colSpan={7} className="muted">no alerts</td></tr>}
            {(data?.alerts || []).map((a) => (
              <tr key={`${a.id}-${a.time}`} data-testid="alert-row" data-alert-id={a.id} className={`sev-${a.severity} link`} onClick={() => (window.location.hash = `#/alerts/${a.id}`)}>
                <td><a href={`#/alerts/${a.id}`}>{time(a.time)}</a></td><td>{a.severity}</td><td title={a.technique}>{a.category}</td>
                <td className="addr">{a.orig_addr || '—'}</td><td className="addr">{a.resp_addr || '—'}</td>
                <td>{a.status}</td><td className="summary">{a.summary}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}

export function AlertDetail({ id }: { id: string }) {
  const [n, setN] = useState(0);
  const { data: a, error } = useFetch<Alert>(`/api/v1/alerts/${encodeURIComponent(id)}?v=${n}`.replace(/\?v=0$/, ''));
  const [note, setNote] = useState('');
  const [msg, setMsg] = useState('');
  if (error) return <section className="wide"><p className="warn">{error}</p></section>;
  if (!a) return <section className="wide"><p className="muted">loading…</p></section>;
  const set = (status: string) =>
    patchJSON<Alert>(`/api/v1/alerts/${encodeURIComponent(a.id)}`, { status, note })
      .then(() => { setMsg(`${status}`); setNote(''); setN((x) => x + 1); })
      .catch((e) => setMsg(e instanceof ApiError && e.status === 403 ? 'this needs an admin token' : e instanceof ApiError && e.status === 401 ? 'log in with an admin token' : String(e.message || e)));
  const host = (x?: string) => (x ? <a href={`#/host/${encodeURIComponent(x)}`}>{x}</a> : '—');
  return (
    <section className="wide" data-testid="alert-detail" data-alert-id={a.id}>
      <h2 className={`sev-${a.severity}`}>{a.severity}: {a.summary}</h2>
      <div className="detail">
        <dl>
          <dt>category</dt><dd>{a.category} ({a.technique || 'no technique'})</dd>
          <dt>rule</dt><dd>{a.rule} (score {a.score})</dd>
          <dt>time</dt><dd>{time(a.time)}</dd>
          <dt>window</dt><dd>{time(a.window_start)} – {time(a.window_end)}</dd>
          <dt>sensor</dt><dd>{a.sensor}</dd>
          <dt>source</dt><dd className="addr">{host(a.orig_addr)}</dd>
          <dt>target</dt><dd className="addr">{host(a.resp_addr)}</dd>
          <dt>status</dt><dd data-testid="alert-status">{a.status}</dd>
          {a.status_at && <><dt>by</dt><dd>{a.status_by} at {time(a.status_at)}{a.status_note && `: ${a.status_note}`}</dd></>}
        </dl>
        <div>
          <h3>Evidence</h3>
          <pre data-testid="evidence">{JSON.stringify(a.evidence, null, 2)}</pre>
        </div>
      </div>
      <form className="filters" onSubmit={(e) => e.preventDefault()}>
        <input placeholder="note" aria-label="note" value={note} onChange={(e) => setNote(e.target.value)} data-testid="alert-note" />
        {a.status !== 'acknowledged' && <button type="button" onClick={() => set('acknowledged')} data-testid="ack-button">acknowledge</button>}
        {a.status !== 'closed' && <button type="button" onClick={() => set('closed')} data-testid="close-button">close</button>}
        {a.status !== 'open' && <button type="button" onClick={() => set('open')}>reopen</button>}
        {msg && <span className="muted" data-testid="alert-message"> {msg}</span>}
      </form>
      <p><a href="#/alerts">← alerts</a></p>
    </section>
  );
}
