// Formatting helpers for the dashboard.

const PROTOS: Record<number, string> = { 1: 'icmp', 2: 'igmp', 6: 'tcp', 17: 'udp', 47: 'gre', 50: 'esp', 58: 'icmp6', 132: 'sctp' };

export function protoName(n: number): string {
  return PROTOS[n] ?? String(n);
}

// SI prefixes for powers of 1000 (the SI Brochure, 9th edition, 2019,
// table 7): k, M, G, T, P; none below 1000, so that a rate of a few packets
// a minute reads 0.0167, not 16.7 m.
const SI = ['', 'k', 'M', 'G', 'T', 'P'];

/**
 * si formats n (a count, bytes, bits/s, packets/s) with an SI prefix and at
 * most `digits` significant digits, trailing zeros dropped, then unit:
 * si(0.3, 'b') is "0.3 b", si(1500, 'b') "1.5 kb", si(2.5e9, 'B') "2.5 GB",
 * si(999_950, '') "1 M", si(0) "0". Chart axes use it with 4 digits: ECharts
 * puts ticks on multiples of 1, 2, 3 or 5 × 10^k, which need at most 3, so
 * distinct ticks get distinct labels (not 0 0 0 1 1 for 0 to 0.8). NaN and
 * infinities give ''.
 */
export function si(n: number, unit = '', digits = 4): string {
  if (!Number.isFinite(n)) return '';
  let v = Number(n);
  let i = 0;
  while (Math.abs(v) >= 1000 && i < SI.length - 1) {
    v /= 1000;
    i++;
  }
  let r = Number(v.toPrecision(digits));
  if (Math.abs(r) >= 1000 && i < SI.length - 1) {
    // 999.96 rounded up to 1000: the next prefix
    r = Number((v / 1000).toPrecision(digits));
    i++;
  }
  const u = SI[i] + unit;
  return u ? `${r} ${u}` : String(r);
}

/** bytes is a byte count for tables: 3 significant digits, SI prefixes (kB = 1000 B). */
export function bytes(n: number | null | undefined): string {
  if (n == null) return '';
  return si(n, 'B', 3);
}

export function endpoint(addr: string, port: number, proto: number): string {
  if (proto === 1 || proto === 58 || !port) return addr;
  return addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`;
}

export function time(s: string | undefined): string {
  if (!s) return '';
  return new Date(s).toISOString().replace('T', ' ').slice(0, 19);
}

export function ago(s: string | undefined): string {
  if (!s) return 'never';
  const sec = Math.max(0, (Date.now() - new Date(s).getTime()) / 1000);
  if (sec < 60) return `${Math.round(sec)} s ago`;
  if (sec < 3600) return `${Math.round(sec / 60)} min ago`;
  if (sec < 86400) return `${Math.round(sec / 3600)} h ago`;
  return `${Math.round(sec / 86400)} d ago`;
}

export function pct(part: number, whole: number): string {
  return whole ? `${((100 * part) / whole).toFixed(0)} %` : '—';
}
