import { useEffect, useState } from 'react';
import { getJSON, query } from '../api.ts';
import { bytes, endpoint, protoName, time } from '../format.ts';
import { useFetch } from '../hooks.ts';
import { useRange } from '../range.tsx';
import type { Flow } from '../types.ts';

const FIELDS: [string, string][] = [
  ['addr', 'address or CIDR'], ['port', 'port'], ['proto', 'protocol'], ['app', 'application'], ['sensor', 'sensor'],
  ['country', 'country'], ['asn', 'ASN'], ['community_id', 'Community ID'],
];

export default function Flows() {
  const { range } = useRange();
  // Filters may come in the hash: #/flows?addr=10.0.0.1&port=22
  const [draft, setDraft] = useState<Record<string, string>>(() => ({
    sort: '-start', direction: '', ...Object.fromEntries(new URLSearchParams(window.location.hash.split('?')[1] || '')),
  }));
  const [filter, setFilter] = useState<Record<string, string>>(draft);
  const [flows, setFlows] = useState<Flow[]>([]);
  const [next, setNext] = useState('');
  const [error, setError] = useState('');
  const [loading, setLoading] = useState(false);
  const base = range ? query('/api/v1/flows', { ...filter, from: range.from, to: range.to, limit: 50 }) : null;
  const load = (cursor: string) => {
    if (!base) return;
    setLoading(true);
    getJSON<{ flows: Flow[]; next?: string }>(cursor ? `${base}&cursor=${encodeURIComponent(cursor)}` : base)
      .then((d) => {
        setFlows((xs) => (cursor ? [...xs, ...d.flows] : d.flows));
        setNext(d.next || '');
        setError('');
      })
      .catch((e) => setError(String(e.message || e)))
      .finally(() => setLoading(false));
  };
  useEffect(() => load(''), [base]); // eslint-disable-line react-hooks/exhaustive-deps
  return (
    <section className="wide">
      <h2>Flows</h2>
      <form
        className="filters"
        data-testid="flow-filters"
        onSubmit={(e) => {
          e.preventDefault();
          setFilter({ ...draft });
        }}
      >
        {FIELDS.map(([k, label]) => (
          <input key={k} name={k} placeholder={label} aria-label={label} value={draft[k] || ''} onChange={(e) => setDraft({ ...draft, [k]: e.target.value })} />
        ))}
        <select aria-label="direction" value={draft.direction} onChange={(e) => setDraft({ ...draft, direction: e.target.value })}>
          <option value="">any direction</option>
          {['outbound', 'inbound', 'internal', 'external'].map((d) => <option key={d}>{d}</option>)}
        </select>
        <select aria-label="sort" value={draft.sort} onChange={(e) => setDraft({ ...draft, sort: e.target.value })}>
          <option value="-start">newest first</option><option value="start">oldest first</option>
          <option value="-bytes">most bytes</option><option value="-pkts">most packets</option>
        </select>
        <button type="submit">search</button>
      </form>
      {error && <p className="warn" data-testid="flows-error">{error}</p>}
      <div className="scroll tall">
        <table data-testid="flows-table">
          <thead><tr><th>start</th><th>sensor</th><th>proto</th><th>app</th><th>originator</th><th>responder</th><th>pkts</th><th>bytes</th><th>state</th></tr></thead>
          <tbody>
            {flows.length === 0 && !loading && <tr><td colSpan={9} className="muted">no flows in this range</td></tr>}
            {flows.map((f) => (
              <tr key={f.id} data-testid="flow-row" data-flow-id={f.id} onClick={() => (window.location.hash = `#/flows/${f.id}`)} className="link">
                <td><a href={`#/flows/${f.id}`}>{time(f.start)}</a></td><td>{f.sensor}</td><td>{protoName(f.proto)}</td>
                <td>{f.app || f.server_name}</td>
                <td className="addr">{endpoint(f.orig_addr, f.orig_port, f.proto)}</td>
                <td className="addr">{endpoint(f.resp_addr, f.resp_port, f.proto)}</td>
                <td className="num">{f.orig_pkts + f.resp_pkts}</td><td className="num">{bytes(f.orig_ip_bytes + f.resp_ip_bytes)}</td>
                <td>{f.conn_state}{f.final ? '' : ' (interim)'}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {next && <button type="button" onClick={() => load(next)} disabled={loading} data-testid="flows-more">more</button>}
      <span className="muted"> {flows.length} flow records</span>
    </section>
  );
}

function Field({ k, v }: { k: string; v: React.ReactNode }) {
  return <><dt>{k}</dt><dd data-field={k}>{v === '' || v == null ? '—' : v}</dd></>;
}

function host(a: string) {
  return <a href={`#/host/${encodeURIComponent(a)}`}>{a}</a>;
}

export function FlowDetail({ id }: { id: string }) {
  const { data: f, error } = useFetch<Flow>(`/api/v1/flows/${encodeURIComponent(id)}`);
  if (error) return <section className="wide"><p className="warn">{error}</p></section>;
  if (!f) return <section className="wide"><p className="muted">loading…</p></section>;
  const geo = (c: string, city: string, asn: number, org: string) =>
    [c, city, asn ? `AS${asn} ${org}` : ''].filter(Boolean).join(' · ');
  return (
    <section className="wide" data-testid="flow-detail" data-flow-id={f.id}>
      <h2>Flow {endpoint(f.orig_addr, f.orig_port, f.proto)} → {endpoint(f.resp_addr, f.resp_port, f.proto)} ({protoName(f.proto)})</h2>
      <div className="detail">
        <dl>
          <Field k="id" v={f.id} />
          <Field k="Community ID" v={<code data-testid="community-id">{f.community_id}</code>} />
          <Field k="sensor" v={f.sensor} />
          <Field k="originator" v={<>{host(f.orig_addr)} port {f.orig_port} {f.orig_name && `(${f.orig_name})`}</>} />
          <Field k="responder" v={<>{host(f.resp_addr)} port {f.resp_port} {f.resp_name && `(${f.resp_name})`}</>} />
          <Field k="start" v={time(f.start)} />
          <Field k="end" v={time(f.end)} />
          <Field k="flow start" v={time(f.flow_start)} />
          <Field k="duration" v={`${f.duration.toFixed(3)} s`} />
          <Field k="state / history" v={`${f.conn_state} ${f.history}`} />
          <Field k="end reason" v={`${f.end_reason}${f.final ? '' : ` (interim record ${f.record_index})`}`} />
        </dl>
        <dl>
          <Field k="orig pkts / IP bytes / payload" v={`${f.orig_pkts} / ${f.orig_ip_bytes} / ${f.orig_bytes}`} />
          <Field k="resp pkts / IP bytes / payload" v={`${f.resp_pkts} / ${f.resp_ip_bytes} / ${f.resp_bytes}`} />
          <Field k="application" v={`${f.app}${f.app_from_port ? ' (from the port)' : ''}`} />
          <Field k="server name" v={f.server_name} />
          <Field k="direction" v={`${f.direction}${f.direction_guessed ? ' (guessed)' : ''}`} />
          <Field k="originator geo" v={geo(f.orig_country, f.orig_city, f.orig_asn, f.orig_as_org)} />
          <Field k="responder geo" v={geo(f.resp_country, f.resp_city, f.resp_asn, f.resp_as_org)} />
          <Field k="JA3" v={f.ja3 && <code>{f.ja3}</code>} />
          <Field k="JA4" v={f.ja4 && <code>{f.ja4}</code>} />
          <Field k="User-Agent" v={f.http_user_agent} />
          <Field k="VLAN" v={f.vlan ? `${f.vlan}${f.inner_vlan ? `/${f.inner_vlan}` : ''}` : ''} />
          <Field k="tunnel" v={f.tunnel ? `${f.tunnel} ${f.tunnel_id}` : ''} />
        </dl>
      </div>
      <p><a href="#/flows">← flows</a> · <a href={`#/flows?community_id=${encodeURIComponent(f.community_id)}`} data-testid="same-community-id">every record with this Community ID</a></p>
    </section>
  );
}
