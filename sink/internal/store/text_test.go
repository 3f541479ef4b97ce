package store

import (
	"context"
	"testing"
	"time"

	"netwatch/schema/pb"
	"netwatch/sink/internal/storetest"
)

func TestTextRule(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"example.org", "example.org"},
		{"a\x00b", `a\x00b`},
		{"h\xfftp", `h\xfftp`},
		{"\xc3", `\xc3`},                 // truncated 2-byte sequence
		{"\xe2\x82", `\xe2\x82`},         // truncated 3-byte sequence
		{"caf\xc3\xa9", "café"},          // valid
		{"\xef\xbf\xbd", "\uFFFD"},       // a valid U+FFFD stays
		{"\xed\xa0\x80", `\xed\xa0\x80`}, // UTF-16 surrogate: not UTF-8
		{"\x00", `\x00`},
		{`already \x41`, `already \x41`},
	} {
		if got := text(c.in); got != c.want {
			t.Errorf("text(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	for _, c := range []struct{ in, want string }{
		{``, `{}`},
		{`{"a":1}`, `{"a":1}`},
		{`{"a":"x\u0000y"}`, `{"a":"x\\x00y"}`},
		{"{\"a\":\"x\xffy\"}", `{"a":"x\\xffy"}`},
		{`{"n":12345678901234567890,"k\u0000":[1,"\u0000"]}`, `{"k\\x00":[1,"\\x00"],"n":12345678901234567890}`},
		{`not json`, `{"raw":"not json"}`},
	} {
		if got := evidenceJSON([]byte(c.in)); got != c.want {
			t.Errorf("evidenceJSON(%q) = %s, want %s", c.in, got, c.want)
		}
	}
}

// TestBadTextNeverFailsABatch: flows whose packet strings (DNS names, SNI,
// HTTP host and user agent, JA3/JA4, GeoIP names) hold NUL or invalid UTF-8
// are stored by the text rule, through the direct COPY and through the
// staging fallback, and so are alerts and metrics with such text.
func TestBadTextNeverFailsABatch(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	at := time.Date(2024, 8, 1, 8, 0, 0, 0, time.UTC)
	bad := func(port uint32) *pb.Flow {
		f := flow("s1", at, port, 0)
		f.ServerName, f.OrigName, f.RespName = "ex\x00ample.org", "me\xff.lan", "\xc0\xafetc"
		f.HttpUserAgent, f.Ja3, f.Ja4 = "Mozilla\x00/5.0 \xfe", "\x00", "t13d\xff"
		f.OrigCountry, f.OrigCity, f.OrigAsOrg, f.App = "S\xffE", "G\x00teborg", "AS\xff", "ht\x00tp"
		f.ConnState, f.History, f.CommunityId = "S\xff", "Sh\x00", "1:\xff"
		return f
	}
	// A batch of new rows (direct COPY), then one that repeats one of them
	// (unique violation: the staging way) with another bad row.
	for i, fb := range []*pb.FlowBatch{
		{Sensor: "s\x001", Flows: []*pb.Flow{bad(1), flow("s1", at, 2, 0)}},
		{Sensor: "s1", Flows: []*pb.Flow{bad(1), bad(3)}},
	} {
		res, err := s.WriteFlows(ctx, []*pb.FlowBatch{fb})
		if err != nil || res.Inserted != []int{2, 1}[i] {
			t.Fatalf("batch %d: %+v, %v", i, res, err)
		}
	}
	type strs struct{ sn, on, rn, ua, ja3, ja4, cc, city, org, app, cs, hist, cid string }
	want := strs{`ex\x00ample.org`, `me\xff.lan`, `\xc0\xafetc`, `Mozilla\x00/5.0 \xfe`, `\x00`, `t13d\xff`,
		`S\xffE`, `G\x00teborg`, `AS\xff`, `ht\x00tp`, `S\xff`, `Sh\x00`, `1:\xff`}
	rows, err := s.pool.Query(ctx, `SELECT server_name, orig_name, resp_name, http_user_agent, ja3, ja4, orig_country,
		orig_city, orig_as_org, app, conn_state, history, convert_from(community_id, 'UTF8') FROM flows WHERE orig_port IN (1, 3) ORDER BY orig_port`)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var g strs
		if err := rows.Scan(&g.sn, &g.on, &g.rn, &g.ua, &g.ja3, &g.ja4, &g.cc, &g.city, &g.org, &g.app, &g.cs, &g.hist, &g.cid); err != nil {
			t.Fatal(err)
		}
		if g != want {
			t.Errorf("row %d:\n got %q\nwant %q", n, g, want)
		}
		n++
	}
	if n != 2 {
		t.Fatalf("%d bad-text rows stored, want 2", n)
	}
	storetest.WaitRollups(t, s.pool, "bad text")
	var country string
	if err := s.pool.QueryRow(ctx, "SELECT country FROM countries_1m WHERE country <> '' LIMIT 1").Scan(&country); err != nil || country != `S\xffE` {
		t.Errorf("countries_1m country %q (%v)", country, err)
	}
	storetest.CheckRollups(t, s.pool, "bad text")

	if _, err := s.WriteAlerts(ctx, []*pb.Alert{{Id: "a\x00", TimeNs: at.UnixNano(), Sensor: "s1", Category: "dns\xfftunnel",
		Summary: "name \x00\xff", Evidence: []byte("{\"q\":\"\\u0000x\xff\"}")}}); err != nil {
		t.Fatal(err)
	}
	var id, cat, sum, ev string
	if err := s.pool.QueryRow(ctx, "SELECT id, category, summary, evidence->>'q' FROM alerts").Scan(&id, &cat, &sum, &ev); err != nil {
		t.Fatal(err)
	}
	if id != `a\x00` || cat != `dns\xfftunnel` || sum != `name \x00\xff` || ev != `\x00x\xff` {
		t.Errorf("alert text %q %q %q %q", id, cat, sum, ev)
	}
	if _, err := s.WriteMetrics(ctx, []*pb.Metrics{{Sensor: "s1", Host: "h\x00", TimeNs: at.UnixNano(), Boot: "b\xff", Seq: 1,
		Captures: []*pb.CaptureStats{{Source: "eth\x000"}}, Disks: []*pb.DiskUsage{{Mount: "/m\xff"}}}}); err != nil {
		t.Fatal(err)
	}
	var host, boot, src, mount string
	if err := s.pool.QueryRow(ctx, `SELECT host, boot, (SELECT source FROM capture_stats), disks->0->>'mount' FROM host_metrics`).
		Scan(&host, &boot, &src, &mount); err != nil {
		t.Fatal(err)
	}
	if host != `h\x00` || boot != `b\xff` || src != `eth\x000` || mount != `/m\xff` {
		t.Errorf("metrics text %q %q %q %q", host, boot, src, mount)
	}
}
