package server_test

import (
	"encoding/hex"
	"net/url"
	"strings"
	"testing"
)

// Since sink migration 00011 flows.id is a uuid: the pipeline's ids are 32
// hex digits (schema.FlowID). The tests name their flows with short labels
// ("id3") and store them as tid(label), the label's bytes in hex padded
// with zeros; untid reads a label back from the api's 32-hex id. Both keep
// the labels' order.

// tid is label (at most 16 bytes) as a 32-hex-digit flow id.
func tid(label string) string {
	h := hex.EncodeToString([]byte(label))
	return h + strings.Repeat("0", 32-len(h))
}

// untid is the label of a tid id; any other id as it is.
func untid(id string) string {
	b, err := hex.DecodeString(id)
	if err != nil || len(id) != 32 {
		return id
	}
	return strings.TrimRight(string(b), "\x00")
}

// TestCommunityIDStoredCompact: a flow stored as the sink stores it since
// its migration 00011 (id uuid, a Community ID v1 as the byte 1 and the 20
// bytes of its SHA-1: the Community ID spec's TCP example, decoded here by
// PostgreSQL's own base64) reads back with the same id and Community ID
// text, and a search by that Community ID finds it.
func TestCommunityIDStoredCompact(t *testing.T) {
	e := newEnv(t)
	const cid = "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
	id := tid("spec-tcp")
	e.exec(t, `INSERT INTO flows (id, sensor, community_id, proto, orig_addr, orig_port, resp_addr, resp_port,
		start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes)
		VALUES ($1, 's1', '\x01'::bytea || decode('LQU9qZlK+B5F3KDmev6m5PMibrg=', 'base64'), 6, '128.232.110.120', 34855,
			'66.35.250.204', 80, $2, $2, $2, 1, 60, 0, 1, 60, 0),
		($3, 's1', convert_to('1:other', 'UTF8'), 6, '10.0.0.1', 1, '10.0.0.2', 2, $2, $2, $2, 1, 60, 0, 1, 60, 0)`,
		id, base, tid("other"))
	var p flowsPage
	if code := e.get(t, "/api/v1/flows?community_id="+url.QueryEscape(cid), &p); code != 200 || len(p.Flows) != 1 ||
		p.Flows[0]["id"] != id || p.Flows[0]["community_id"] != cid {
		t.Fatalf("search by %s: %d %v", cid, code, p.Flows)
	}
	var f map[string]any
	if code := e.get(t, "/api/v1/flows/"+tid("other"), &f); code != 200 || f["community_id"] != "1:other" {
		t.Errorf("flow other: %d %v", code, f)
	}
	if code := e.get(t, "/api/v1/flows/"+strings.ToUpper(id), &f); code != 200 || f["id"] != id {
		t.Errorf("flow by upper-case id: %d %v", code, f)
	}
	if code := e.get(t, "/api/v1/flows/abc", nil); code != 404 {
		t.Errorf("flow abc (not 32 hex digits): %d, want 404", code)
	}
}
