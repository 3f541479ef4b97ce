// useLive connects to the api's WebSocket live feed (/api/v1/live) and
// reconnects with backoff. Messages go to onMessage as parsed objects; the
// hook returns the connection status.
import { useEffect, useRef, useState } from 'react';

export function liveURL(params) {
  const u = new URL('/api/v1/live', window.location.href);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  for (const [k, v] of Object.entries(params || {})) if (v) u.searchParams.set(k, v);
  return u.toString();
}

export function useLive(params, onMessage) {
  const [status, setStatus] = useState('connecting');
  const handler = useRef(onMessage);
  handler.current = onMessage;
  const key = JSON.stringify(params || {});
  useEffect(() => {
    let ws = null;
    let closed = false;
    let wait = 500;
    let timer = null;
    const connect = () => {
      setStatus('connecting');
      ws = new WebSocket(liveURL(JSON.parse(key)));
      ws.onopen = () => {
        wait = 500;
        setStatus('live');
      };
      ws.onmessage = (ev) => {
        try {
          handler.current(JSON.parse(ev.data));
        } catch (e) {
          console.error('live message', e);
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
      if (ws) ws.close();
    };
  }, [key]);
  return status;
}
