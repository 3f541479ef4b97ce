package server_test

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func TestReplay(t *testing.T) {
	e := newEnv(t)
	seedFlows(t, e)
	u := "ws" + strings.TrimPrefix(e.url, "http") + "/api/v1/live?" + url.Values{
		"from":  {"2024-05-01T12:01:00Z"},
		"to":    {"2024-05-01T12:04:00Z"},
		"speed": {"0"},
	}.Encode()
	c, _, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var ids []string
	for {
		m := next(t, c)
		if m.Type == "replay_end" {
			break
		}
		if m.Type != "flow" {
			t.Fatalf("unexpected %+v", m)
		}
		ids = append(ids, untid(m.Flow["id"].(string)))
	}
	if fmt.Sprint(ids) != "[id1 id2 id3]" {
		t.Errorf("replayed %v, want id1 id2 id3 in packet-time order", ids)
	}

	// Filtered, paced replay.
	u = "ws" + strings.TrimPrefix(e.url, "http") + "/api/v1/live?" + url.Values{
		"from": {"2024-05-01T12:00:00Z"}, "to": {"2024-05-01T12:02:00Z"}, "speed": {"120"}, "proto": {"tcp"},
	}.Encode()
	c2, _, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if m := next(t, c2); m.Flow["id"] != tid("id0") {
		t.Fatalf("first replayed %+v", m)
	}
	if m := next(t, c2); m.Type != "replay_end" {
		t.Fatalf("proto=tcp in [12:00, 12:02) has only id0; got %+v", m)
	}

	// Bad replay parameters are 400 before the upgrade.
	var body map[string]any
	for _, q := range []string{"?from=x", "?from=2024-05-01T12:00:00Z&speed=-1", "?to=2024-05-01T12:00:00Z",
		"?from=2024-05-01T12:00:00Z&to=2024-05-01T11:00:00Z"} {
		if code := e.get(t, "/api/v1/live"+q, &body); code != 400 || body["detail"] == "" || body["status"] != 400.0 {
			t.Errorf("%s: %d %v", q, code, body)
		}
	}
}

// TestFlowsPaginationTies: rows sharing a start time are ordered by id, and
// rows inserted while paging do not shift later pages.
func TestFlowsPaginationTies(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 7; i++ {
		e.exec(t, `INSERT INTO flows (id, sensor, community_id, proto, orig_addr, orig_port, resp_addr, resp_port,
			start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes)
			VALUES ($1, 's1', '', 6, '10.0.0.1', 1, '10.0.0.2', 2, $2, $2, $2, 1, 1, 0, 0, 0, 0)`,
			tid(fmt.Sprintf("t%d", i)), base)
	}
	var got []string
	q := "/api/v1/flows?limit=3"
	for pages := 0; ; pages++ {
		var p flowsPage
		if code := e.get(t, q, &p); code != 200 {
			t.Fatalf("status %d", code)
		}
		for _, f := range p.Flows {
			got = append(got, untid(f["id"].(string)))
		}
		if pages == 0 {
			// A newer row arrives between pages: it belongs before page 1.
			e.exec(t, `INSERT INTO flows (id, sensor, community_id, proto, orig_addr, orig_port, resp_addr, resp_port,
				start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes)
				VALUES ($2, 's1', '', 6, '10.0.0.1', 1, '10.0.0.2', 2, $1, $1, $1, 1, 1, 0, 0, 0, 0)`, base.Add(time.Hour), tid("new"))
		}
		if p.Next == "" {
			break
		}
		q = "/api/v1/flows?limit=3&cursor=" + url.QueryEscape(p.Next)
	}
	if fmt.Sprint(got) != "[t6 t5 t4 t3 t2 t1 t0]" {
		t.Errorf("paged %v", got)
	}
}
