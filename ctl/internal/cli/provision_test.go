package cli

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/pcgroups"

	"netwatch/schema"
	"netwatch/testkit"
)

// TestProvisionGroupsStartAtCreation: FLOWS holds 5 flow batches and
// PACKETS 5 packet batches before the groups are provisioned (a site that
// ran one detector and one enricher). After provisioning, one more
// message each: every group's work queue receives that one only (a
// source delivers in stream order, so the 5 older ones, had they been
// sourced, would be there before it; before this change the queues held
// 6). A second provision keeps each start time and stream configuration.
// The work-queue transforms equal the ones pcgroups.CreateElastic makes
// itself (a scratch group on each stream).
func TestProvisionGroupsStartAtCreation(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	flowSubj := func(i int) string { return fmt.Sprintf("%s.s1.%d.%d", schema.FlowsPrefix, i, i+1) }
	pktSubj := func(i int) string { return fmt.Sprintf("%s.s1.%d", schema.PacketsPrefix, i) }
	for i := 0; i < 5; i++ {
		if _, err := js.Publish(ctx, flowSubj(i), []byte("old")); err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, pktSubj(i), []byte("old")); err != nil {
			t.Fatal(err)
		}
	}
	groups := map[string]string{ // work-queue stream -> the stream it sources
		schema.StreamPackets + "-" + schema.EnricherGroup:                           schema.StreamPackets,
		schema.StreamFlows + "-" + schema.DetectorGroup:                             schema.StreamFlows,
		schema.StreamFlows + "-" + schema.DetectorTargetGroup(schema.DetectorGroup): schema.StreamFlows,
	}
	before := time.Now()
	starts, err := provisionStageState(ctx, js, 1, 4, 8)
	if err != nil {
		t.Fatal(err)
	}
	if len(starts) != 3 {
		t.Fatalf("starts %v, want 3 groups", starts)
	}
	for g, st := range starts {
		if st == nil || st.Before(before.Add(-time.Second)) || st.After(time.Now().Add(time.Second)) {
			t.Errorf("group %s: source start %v, want the provisioning time (%v)", g, st, before)
		}
	}
	if _, err := js.Publish(ctx, flowSubj(9), []byte("new")); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, pktSubj(9), []byte("new")); err != nil {
		t.Fatal(err)
	}
	configs := map[string]jetstream.StreamConfig{}
	for wq := range groups {
		s, err := js.Stream(ctx, wq)
		if err != nil {
			t.Fatal(err)
		}
		var info *jetstream.StreamInfo
		testkit.Eventually(t, 10*time.Second, func() bool {
			info, err = s.Info(ctx)
			return err == nil && info.State.Msgs >= 1
		}, wq+": the message published after provisioning not sourced")
		if info.State.Msgs != 1 {
			t.Errorf("%s holds %d messages, want 1 (the one published after the group was created)", wq, info.State.Msgs)
		}
		m, err := s.GetMsg(ctx, info.State.FirstSeq)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Data) != "new" {
			t.Errorf("%s: first message %q, want \"new\"", wq, m.Data)
		}
		configs[wq] = info.Config
	}

	// Provision again: nothing moves.
	again, err := provisionStageState(ctx, js, 1, 4, 8)
	if err != nil {
		t.Fatal(err)
	}
	for g, st := range starts {
		if again[g] == nil || !again[g].Equal(*st) {
			t.Errorf("group %s: start %v after a second provision, was %v", g, again[g], st)
		}
	}
	for wq, c := range configs {
		s, err := js.Stream(ctx, wq)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(s.CachedInfo().Config, c) {
			t.Errorf("%s: config changed by the second provision:\n%+v\nwas\n%+v", wq, s.CachedInfo().Config, c)
		}
	}
	// A group that exists with other partitions is still refused.
	if _, err := provisionStageState(ctx, js, 1, 4, 16); err == nil {
		t.Error("provision with other detector partitions: no error")
	}

	// pcgroups' own stream for the same groups: the same transforms.
	for wq, stream := range groups {
		parts, f := uint(8), pcgroups.PartitioningFilter{Filter: schema.DetectorGroupFilterSubject, PartitioningWildcards: schema.DetectorOrigWildcards}
		switch wq {
		case schema.StreamPackets + "-" + schema.EnricherGroup:
			parts, f = 4, pcgroups.PartitioningFilter{Filter: schema.GroupFilterSubject, PartitioningWildcards: schema.GroupPartitioningWildcards}
		case schema.StreamFlows + "-" + schema.DetectorTargetGroup(schema.DetectorGroup):
			f.PartitioningWildcards = schema.DetectorTargetWildcards
		}
		if _, err := pcgroups.CreateElastic(ctx, js, stream, "scratch", parts, []pcgroups.PartitioningFilter{f}, 0, 0); err != nil {
			t.Fatal(err)
		}
		s, err := js.Stream(ctx, stream+"-scratch")
		if err != nil {
			t.Fatal(err)
		}
		theirs := s.CachedInfo().Config.Sources[0].SubjectTransforms
		if ours := configs[wq].Sources[0].SubjectTransforms; !reflect.DeepEqual(ours, theirs) {
			t.Errorf("%s: transforms %v, pcgroups makes %v", wq, ours, theirs)
		}
		if err := pcgroups.DeleteElastic(ctx, js, stream, "scratch"); err != nil {
			t.Fatal(err)
		}
	}
}

// TestProvisionKeepsOlderGroup: a detector group pcgroups created before
// (no start on its source, as a stage starting first or an older
// netwatchctl made it) is kept as it is by provisioning: no error, start
// nil (printed as "from its first message"), configuration unchanged.
func TestProvisionKeepsOlderGroup(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := pcgroups.PartitioningFilter{Filter: schema.DetectorGroupFilterSubject, PartitioningWildcards: schema.DetectorOrigWildcards}
	if _, err := pcgroups.CreateElastic(ctx, js, schema.StreamFlows, schema.DetectorGroup, 8, []pcgroups.PartitioningFilter{f}, 0, 0); err != nil {
		t.Fatal(err)
	}
	wq := schema.StreamFlows + "-" + schema.DetectorGroup
	s, err := js.Stream(ctx, wq)
	if err != nil {
		t.Fatal(err)
	}
	was := s.CachedInfo().Config
	starts, err := provisionStageState(ctx, js, 1, 4, 8)
	if err != nil {
		t.Fatal(err)
	}
	if st, ok := starts[schema.DetectorGroup]; !ok || st != nil {
		t.Errorf("older group: start %v (listed %v), want nil", st, ok)
	}
	if starts[schema.EnricherGroup] == nil {
		t.Error("new enricher group: no start")
	}
	if s, err = js.Stream(ctx, wq); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.CachedInfo().Config, was) {
		t.Errorf("older group's stream changed:\n%+v\nwas\n%+v", s.CachedInfo().Config, was)
	}
}
