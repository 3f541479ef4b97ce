package live

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"netwatch/api/internal/rest"
)

// replay is a request to stream the stored flows with start in [from, to)
// in packet-time order, paced at speed times real time (0: as fast as the
// client reads).
type replay struct {
	filter rest.FlowFilter
	speed  float64
}

func parseReplay(r *http.Request) (*replay, error) {
	q := query{r}
	if q.Get("from") == "" {
		if q.Get("to") != "" || q.Get("speed") != "" {
			return nil, fmt.Errorf("replay: to and speed need from")
		}
		return nil, nil
	}
	if v := q.Get("types"); v != "" {
		// stored flows only: a types filter without flows would be ignored
		f, err := ParseFilter(r)
		if err != nil {
			return nil, err
		}
		if !f.Types["flow"] {
			return nil, fmt.Errorf("types: a replay with from has flows only (stored flows); /api/v1/replay replays alerts, metrics and counters")
		}
	}
	rp := &replay{speed: 1, filter: rest.FlowFilter{Sensor: q.Get("sensor"), Port: -1, Proto: -1}}
	var err error
	if rp.filter.From, err = time.Parse(time.RFC3339Nano, q.Get("from")); err != nil {
		return nil, fmt.Errorf("from: %q is not an RFC 3339 time", q.Get("from"))
	}
	if v := q.Get("to"); v != "" {
		if rp.filter.To, err = time.Parse(time.RFC3339Nano, v); err != nil {
			return nil, fmt.Errorf("to: %q is not an RFC 3339 time", v)
		}
		if !rp.filter.From.Before(rp.filter.To) {
			return nil, fmt.Errorf("from must be before to")
		}
	}
	if v := q.Get("speed"); v != "" {
		if rp.speed, err = ParseSpeed(v); err != nil {
			return nil, err
		}
	}
	if pf, ok, err := rest.ParseAddr(q.Get("addr")); err != nil {
		return nil, err
	} else if ok {
		rp.filter.Addr = pf.String()
	}
	if v := q.Get("port"); v != "" {
		if rp.filter.Port, err = strconv.Atoi(v); err != nil || rp.filter.Port < 0 || rp.filter.Port > 65535 {
			return nil, fmt.Errorf("port: %q is not an integer from 0 to 65535", v)
		}
	}
	if rp.filter.Proto, err = rest.ParseProto(q.Get("proto")); err != nil {
		return nil, err
	}
	return rp, nil
}

// replay pages through the flows (500 at a time) and queues them to c,
// waiting for buffer space instead of dropping, then sends replay_end.
func (h *Hub) replay(ctx context.Context, c *client, rp *replay) error {
	var afterT time.Time
	var afterID string
	var t0 time.Time
	w0 := time.Now()
	sent := 0
	for {
		flows, err := rest.QueryFlows(ctx, h.pool, rp.filter, afterT, afterID, 500)
		if err != nil {
			return fmt.Errorf("query flows: %w", err)
		}
		for _, f := range flows {
			st := time.Time(f.Start)
			if t0.IsZero() {
				t0 = st
			}
			if rp.speed > 0 {
				due := w0.Add(time.Duration(float64(st.Sub(t0)) / rp.speed))
				if d := time.Until(due); d > 0 {
					t := time.NewTimer(d)
					select {
					case <-t.C:
					case <-ctx.Done():
						t.Stop()
						return ctx.Err()
					}
				}
			}
			select {
			case c.send <- flowEvent(f).data:
				h.mSent.WithLabelValues("flow").Inc()
				sent++
			case <-ctx.Done():
				return ctx.Err()
			}
			afterT, afterID = st, f.ID
		}
		if len(flows) < 500 {
			break
		}
	}
	b := []byte(fmt.Sprintf(`{"type":"replay_end","flows":%d}`, sent))
	select {
	case c.send <- b:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
