import { useMemo, useState } from 'react';
import Chart, { barOption, lineOption } from '../Chart.tsx';
import { query } from '../api.ts';
import { bytes, si, time } from '../format.ts';
import { useFetch } from '../hooks.ts';
import { useRange } from '../range.tsx';
import type { Alert } from '../types.ts';

interface Point { time: string; bps: number; pps: number }
interface Pair { addr: string; peer: string; bytes: number; sent_bytes: number; recv_bytes: number; flows: number }
interface Port { name: string; port: number; bytes: number }
interface Country { country: string; bytes: number }

export default function Host({ addr }: { addr: string }) {
  const { range } = useRange();
  const [draft, setDraft] = useState(addr);
  const go = (e: React.FormEvent) => {
    e.preventDefault();
    window.location.hash = `#/host/${encodeURIComponent(draft.trim())}`;
  };
  const r = range && addr ? { from: range.from, to: range.to, addr } : null;
  const tsURL = r ? query('/api/v1/timeseries', { ...r, step: range!.step }) : null;
  const portsURL = r ? query('/api/v1/ports', { ...r, limit: 10 }) : null;
  const countriesURL = r ? query('/api/v1/countries', { ...r, limit: 10 }) : null;
  const peersURL = r ? query('/api/v1/top-talkers', { ...r, side: 'pair', limit: 20 }) : null;
  const ts = useFetch<{ points: Point[] }>(tsURL);
  const ports = useFetch<{ ports: Port[] }>(portsURL);
  const countries = useFetch<{ countries: Country[] }>(countriesURL);
  const peers = useFetch<{ talkers: Pair[] }>(peersURL);
  const alerts = useFetch<{ alerts: Alert[] }>(addr ? query('/api/v1/alerts', { addr, limit: 50 }) : null);
  const tsOption = useMemo(() => ts.data && lineOption(
    [{ name: 'bits/s', data: ts.data.points.map((p) => [p.time, p.bps]), area: true },
      { name: 'packets/s', data: ts.data.points.map((p) => [p.time, p.pps]), axis: 1 }],
    [{ name: 'bits/s', fmt: (v) => si(v, 'b') }, { name: 'pkts/s', fmt: (v) => si(v, '') }]), [ts.data]);
  const portsOption = useMemo(() => ports.data && barOption('bytes',
    ports.data.ports.map((p) => `${p.name}/${p.port}`), ports.data.ports.map((p) => p.bytes), (v) => si(v, 'B')), [ports.data]);
  const countriesOption = useMemo(() => countries.data && barOption('bytes',
    countries.data.countries.map((c) => c.country || 'unknown'), countries.data.countries.map((c) => c.bytes), (v) => si(v, 'B')), [countries.data]);
  const err = ts.error || ports.error || countries.error || peers.error;
  return (
    <div className="grid">
      <section className="wide">
        <form className="filters" onSubmit={go}>
          <input placeholder="IP address" aria-label="address" value={draft} onChange={(e) => setDraft(e.target.value)} data-testid="host-addr" />
          <button type="submit">show</button>
        </form>
        {!addr && <p className="muted">Enter an address, or follow one from a table.</p>}
        {err && <p className="warn">{err}</p>}
      </section>
      {addr && (
        <>
          <section className="wide">
            <h2>Traffic of <span className="addr" data-testid="host-title">{addr}</span> · <a href={`#/flows?addr=${encodeURIComponent(addr)}`}>its flows</a></h2>
            <Chart testid="host-traffic-chart" option={tsOption} src={tsURL || undefined} map="points.bps;points.pps" />
          </section>
          <section>
            <h2>Destination ports</h2>
            <Chart testid="host-ports-chart" option={portsOption} src={portsURL || undefined} map="ports.bytes" />
          </section>
          <section>
            <h2>Countries</h2>
            <Chart testid="host-countries-chart" option={countriesOption} src={countriesURL || undefined} map="countries.bytes" />
          </section>
          <section>
            <h2>Peers</h2>
            <div className="scroll">
              <table data-testid="host-peers">
                <thead><tr><th>peer</th><th>role</th><th>bytes</th><th>flows</th></tr></thead>
                <tbody>
                  {(peers.data?.talkers || []).map((p) => {
                    const out = p.addr === addr;
                    const peer = out ? p.peer : p.addr;
                    return (
                      <tr key={`${p.addr}-${p.peer}`} data-testid="peer-row">
                        <td className="addr"><a href={`#/host/${encodeURIComponent(peer)}`}>{peer}</a></td>
                        <td>{out ? 'responder' : 'originator'}</td>
                        <td className="num">{bytes(p.bytes)}</td><td className="num">{p.flows}</td>
                      </tr>
                    );
                  })}
                </tbody>
              </table>
            </div>
          </section>
          <section>
            <h2>Alerts</h2>
            <div className="scroll">
              <table data-testid="host-alerts">
                <thead><tr><th>time</th><th>severity</th><th>category</th><th>status</th></tr></thead>
                <tbody>
                  {alerts.data && alerts.data.alerts.length === 0 && <tr><td colSpan={4} className="muted">no alerts</td></tr>}
                  {(alerts.data?.alerts || []).map((a) => (
                    <tr key={`${a.id}-${a.time}`} data-testid="alert-row" className={`sev-${a.severity}`}>
                      <td><a href={`#/alerts/${a.id}`}>{time(a.time)}</a></td><td>{a.severity}</td><td>{a.category}</td><td>{a.status}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </section>
        </>
      )}
    </div>
  );
}
