import { useEffect, useRef, useState } from 'react';
import { getJSON, wsURL } from './api.ts';
import type { LiveMessage } from './types.ts';

/** useFetch GETs path (null: nothing) and again every refreshMs when given. */
export function useFetch<T>(path: string | null, refreshMs = 0): { data: T | null; error: string | null; loading: boolean } {
  const [state, setState] = useState<{ data: T | null; error: string | null; loading: boolean; path: string | null }>({
    data: null, error: null, loading: !!path, path,
  });
  useEffect(() => {
    if (!path) {
      setState({ data: null, error: null, loading: false, path });
      return;
    }
    let stop = false;
    setState((s) => ({ ...s, loading: true, path, data: s.path === path ? s.data : null }));
    const load = () =>
      getJSON<T>(path)
        .then((d) => !stop && setState({ data: d, error: null, loading: false, path }))
        .catch((e) => !stop && setState({ data: null, error: String(e.message || e), loading: false, path }));
    load();
    const t = refreshMs ? setInterval(load, refreshMs) : undefined;
    return () => {
      stop = true;
      if (t) clearInterval(t);
    };
  }, [path, refreshMs]);
  return { data: state.path === path ? state.data : null, error: state.error, loading: state.loading };
}

export type LiveStatus = 'connecting' | 'live' | 'disconnected';

/**
 * useLive connects to the live feed (/api/v1/live) with params and
 * reconnects with backoff; messages go to onMessage.
 */
export function useLive(params: Record<string, string>, onMessage: (m: LiveMessage) => void): LiveStatus {
  const [status, setStatus] = useState<LiveStatus>('connecting');
  const handler = useRef(onMessage);
  handler.current = onMessage;
  const key = JSON.stringify(params);
  useEffect(() => {
    let ws: WebSocket | null = null;
    let closed = false;
    let wait = 500;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const connect = () => {
      setStatus('connecting');
      // batch=1: a busy feed may put several messages in one frame, one a line.
      ws = new WebSocket(wsURL('/api/v1/live', { ...JSON.parse(key), batch: '1' }));
      ws.onopen = () => {
        wait = 500;
        setStatus('live');
      };
      ws.onmessage = (ev) => {
        for (const line of String(ev.data).split('\n')) {
          try {
            handler.current(JSON.parse(line));
          } catch (e) {
            console.error('live message', e);
          }
        }
      };
      ws.onclose = () => {
        if (closed) return;
        setStatus('disconnected');
        timer = setTimeout(connect, wait);
        wait = Math.min(wait * 2, 10000);
      };
    };
    connect();
    return () => {
      closed = true;
      clearTimeout(timer);
      ws?.close();
    };
  }, [key]);
  return status;
}
