// Talking to the api: the bearer token (from the page URL's ?token= or the
// login field, kept in localStorage), JSON GETs and PATCHes, WebSocket URLs.

const TOKEN_KEY = 'netwatch.token';

export function token(): string {
  const fromURL = new URLSearchParams(window.location.search).get('token');
  if (fromURL) {
    localStorage.setItem(TOKEN_KEY, fromURL);
    return fromURL;
  }
  return localStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(t: string) {
  if (t) localStorage.setItem(TOKEN_KEY, t);
  else localStorage.removeItem(TOKEN_KEY);
}

/** ApiError carries an RFC 9457 problem's status and detail. */
export class ApiError extends Error {
  constructor(public status: number, message: string) {
    super(message);
  }
}

function headers(): Record<string, string> {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

async function answer<T>(r: Response, what: string): Promise<T> {
  if (!r.ok) {
    let detail = r.statusText;
    try {
      const p = await r.json();
      detail = p.detail || p.error || detail;
    } catch {
      /* not JSON */
    }
    throw new ApiError(r.status, `${what}: ${r.status} ${detail}`);
  }
  return r.json() as Promise<T>;
}

export async function getJSON<T>(path: string): Promise<T> {
  return answer<T>(await fetch(path, { headers: headers() }), path);
}

export async function patchJSON<T>(path: string, body: unknown): Promise<T> {
  const r = await fetch(path, {
    method: 'PATCH',
    headers: { ...headers(), 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  return answer<T>(r, path);
}

/** query builds "path?k=v&..." from the non-empty values of params. */
export function query(path: string, params: Record<string, string | number | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

export function wsURL(path: string, params: Record<string, string>): string {
  const u = new URL(path, window.location.href);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  for (const [k, v] of Object.entries(params)) if (v) u.searchParams.set(k, v);
  const t = token();
  if (t) u.searchParams.set('token', t);
  return u.toString();
}
