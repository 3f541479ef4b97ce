package schema

import (
	"testing"

	"netwatch/schema/pb"
)

func TestNames(t *testing.T) {
	// Expected names written out by hand from the api contract (issue 2) and
	// the proto's enum comments.
	sev := map[pb.Severity]string{0: "unknown", 1: "info", 2: "low", 3: "medium", 4: "high", 5: "critical", 9: "unknown"}
	for v, want := range sev {
		if got := SeverityName(v); got != want {
			t.Errorf("SeverityName(%d) = %q, want %q", v, got, want)
		}
	}
	end := map[pb.EndReason]string{0: "", 1: "idle", 2: "active", 3: "fin", 4: "rst", 5: "eof", 6: "shutdown", 7: "evicted", 8: ""}
	for v, want := range end {
		if got := EndReasonName(v); got != want {
			t.Errorf("EndReasonName(%d) = %q, want %q", v, got, want)
		}
	}
	tun := map[pb.Tunnel]string{0: "", 1: "gre", 2: "erspan", 3: "vxlan", 4: "geneve", 5: "ipip", 15: "other", 7: "other"}
	for v, want := range tun {
		if got := TunnelName(v); got != want {
			t.Errorf("TunnelName(%d) = %q, want %q", v, got, want)
		}
	}
}
