// The time range shared by every page: a span ending now or at the newest
// stored flow ("latest data", so that a replayed capture from any year
// shows up), or a custom from/to. Ranges are resolved to whole minutes, so
// that the api answers from its per-minute rollups.
import { createContext, useCallback, useContext, useEffect, useState, type ReactNode } from 'react';
import { getJSON } from './api.ts';
import type { Flow } from './types.ts';

export interface Range {
  from: string; // RFC 3339
  to: string;
  step: string; // a time-series step for about 60-120 points, whole minutes
}

interface Choice {
  span: number; // seconds
  anchor: 'data' | 'now' | 'custom';
  from?: string;
  to?: string;
}

const SPANS: [string, number][] = [['15 min', 900], ['1 h', 3600], ['6 h', 21600], ['24 h', 86400], ['7 d', 604800]];
const KEY = 'netwatch.range';

const MIN = 60_000;
const floorMin = (ms: number) => Math.floor(ms / MIN) * MIN;
const iso = (ms: number) => new Date(ms).toISOString().replace('.000Z', 'Z');

function stepFor(spanMs: number): string {
  return `${Math.max(1, Math.round(spanMs / MIN / 90))}m`;
}

async function resolve(c: Choice): Promise<Range> {
  if (c.anchor === 'custom' && c.from && c.to) {
    const f = floorMin(Date.parse(c.from));
    const t = floorMin(Date.parse(c.to) + MIN - 1);
    return { from: iso(f), to: iso(t), step: stepFor(t - f) };
  }
  let end = Date.now();
  if (c.anchor === 'data') {
    try {
      const d = await getJSON<{ flows: Flow[] }>('/api/v1/flows?limit=1');
      if (d.flows.length) end = Date.parse(d.flows[0].start);
    } catch {
      /* fall back to now */
    }
  }
  const to = floorMin(end) + MIN;
  return { from: iso(to - c.span * 1000), to: iso(to), step: stepFor(c.span * 1000) };
}

const Ctx = createContext<{ range: Range | null; refresh: () => void }>({ range: null, refresh: () => {} });

export function useRange() {
  return useContext(Ctx);
}

function load(): Choice {
  try {
    const c = JSON.parse(localStorage.getItem(KEY) || '');
    if (c && typeof c.span === 'number') return c;
  } catch {
    /* default */
  }
  return { span: 3600, anchor: 'data' };
}

export function RangeProvider({ children }: { children: ReactNode }) {
  const [choice, setChoice] = useState<Choice>(load);
  const [range, setRange] = useState<Range | null>(null);
  const [n, setN] = useState(0);
  useEffect(() => {
    let stop = false;
    localStorage.setItem(KEY, JSON.stringify(choice));
    resolve(choice).then((r) => !stop && setRange(r));
    return () => {
      stop = true;
    };
  }, [choice, n]);
  const refresh = useCallback(() => setN((x) => x + 1), []);
  return (
    <Ctx.Provider value={{ range, refresh }}>
      <RangePicker choice={choice} setChoice={setChoice} range={range} refresh={refresh} />
      {children}
    </Ctx.Provider>
  );
}

function local(s?: string): string {
  if (!s) return '';
  const d = new Date(s);
  return new Date(d.getTime() - d.getTimezoneOffset() * MIN).toISOString().slice(0, 16);
}

function rangeText(r: Range): string {
  const f = r.from.replace('T', ' ').replace('Z', '');
  const t = r.to.replace('T', ' ').replace('Z', '');
  return `${f} – ${t.slice(0, 10) === f.slice(0, 10) ? t.slice(11) : t} UTC`;
}

function RangePicker({ choice, setChoice, range, refresh }: {
  choice: Choice; setChoice: (c: Choice) => void; range: Range | null; refresh: () => void;
}) {
  const [from, setFrom] = useState(local(choice.from || range?.from));
  const [to, setTo] = useState(local(choice.to || range?.to));
  useEffect(() => {
    if (range && choice.anchor !== 'custom') {
      setFrom(local(range.from));
      setTo(local(range.to));
    }
  }, [range, choice.anchor]);
  return (
    <div className="range" data-testid="range" data-from={range?.from} data-to={range?.to} data-step={range?.step}>
      <select
        aria-label="span"
        data-testid="range-span"
        value={choice.anchor === 'custom' ? 'custom' : String(choice.span)}
        onChange={(e) => e.target.value !== 'custom' && setChoice({ ...choice, span: Number(e.target.value), anchor: choice.anchor === 'custom' ? 'data' : choice.anchor })}
      >
        {SPANS.map(([label, s]) => <option key={s} value={s}>{label}</option>)}
        {choice.anchor === 'custom' && <option value="custom">custom</option>}
      </select>
      <select
        aria-label="ending"
        data-testid="range-anchor"
        value={choice.anchor}
        onChange={(e) => setChoice({ ...choice, anchor: e.target.value as Choice['anchor'] })}
      >
        <option value="data">ending at the latest data</option>
        <option value="now">ending now</option>
        <option value="custom">custom</option>
      </select>
      {choice.anchor === 'custom' && (
        <form
          className="custom"
          onSubmit={(e) => {
            e.preventDefault();
            if (from && to) setChoice({ ...choice, anchor: 'custom', from: new Date(from).toISOString(), to: new Date(to).toISOString() });
          }}
        >
          <input type="datetime-local" aria-label="from" value={from} onChange={(e) => setFrom(e.target.value)} />
          <input type="datetime-local" aria-label="to" value={to} onChange={(e) => setTo(e.target.value)} />
          <button type="submit">apply</button>
        </form>
      )}
      <button type="button" onClick={refresh} title="re-read the range">↻</button>
      <span className="muted range-text">{range ? rangeText(range) : '…'}</span>
    </div>
  );
}
