package fleet_test

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/synadia-io/orbit.go/pcgroups"

	"netwatch/ctl/internal/perms"
	"netwatch/schema"
	"netwatch/testkit"
)

// TestGroupMembership drives netwatchctl group against the enrichers'
// consumer group as the enricher creates it (pcgroups on PACKETS, 16
// partitions on netwatch.packets.<sensor>.<bucket>): three members added,
// every partition owned by exactly one; one deleted (a scale-down), its
// partitions then owned by the two others and it is no longer listed;
// no member has a consumer (none runs). A bad flag is exit status 2.
func TestGroupMembership(t *testing.T) {
	url, _, js := testkit.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := schema.Provision(ctx, js, schema.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	// enricher/internal/consume: CreateElastic with the group filter.
	const partitions = 16
	if _, err := pcgroups.CreateElastic(ctx, js, schema.StreamPackets, perms.EnricherGroup, partitions,
		[]pcgroups.PartitioningFilter{{Filter: schema.PacketsPrefix + ".*.*", PartitioningWildcards: []int{1, 2}}}, 0, 0); err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`(?m)^member (\S+): (\d+) partitions, (.*)$`)
	members := func(out string) map[string]int {
		got := map[string]int{}
		total := 0
		for _, m := range line.FindAllStringSubmatch(out, -1) {
			n, _ := strconv.Atoi(m[2])
			got[m[1]] = n
			total += n
			if m[3] != "no consumer (not running)" {
				t.Errorf("member %s: %s, want not running", m[1], m[3])
			}
		}
		if total != partitions {
			t.Errorf("members own %d partitions, want %d:\n%s", total, partitions, out)
		}
		return got
	}
	out := ctl(t, "group", "-nats.url", url, "-add", "m0,m1,m2")
	t.Logf("after -add m0,m1,m2:\n%s", out)
	if got := members(out); len(got) != 3 || got["m0"] == 0 || got["m1"] == 0 || got["m2"] == 0 {
		t.Errorf("members %v, want m0, m1, m2 each with partitions", got)
	}
	out = ctl(t, "group", "-nats.url", url, "-remove", "m2")
	t.Logf("after -remove m2:\n%s", out)
	if got := members(out); len(got) != 2 || got["m0"] == 0 || got["m1"] == 0 {
		t.Errorf("members %v, want m0 and m1 with all partitions", got)
	}
	c, err := pcgroups.GetElasticConsumerGroupConfig(ctx, js, schema.StreamPackets, perms.EnricherGroup)
	if err != nil || c.IsInMembership("m2") {
		t.Errorf("m2 still in the group's membership (%v)", err)
	}
	var o, e bytes.Buffer
	if rc := runCtl([]string{"group", "-nats.url", url, "-bogus"}, &o, &e); rc != 2 {
		t.Errorf("netwatchctl group -bogus: exit %d, want 2 (%s)", rc, e.String())
	}
}
