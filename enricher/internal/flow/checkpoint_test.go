package flow

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
)

// TestResumeFromCheckpoint: a UDP flow with one packet a second (one input
// message each, seq 1..6) under a 2 s active timeout gives records of the
// packets at 0-1 s, 2-3 s and 4-5 s (hand count). A replay of the suffix
// from message 2 (message 1 acked) with the checkpoint of the first
// interim record skips the packet at 1 s (in the published record 0) and
// rebuilds records 1 and 2 with the same ids and contents; without the
// checkpoint the replay makes a new flow (another flow_start_ns, other ids).
func TestResumeFromCheckpoint(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Active = 2 * time.Second
	cfg.Sensor, cfg.Checkpoints, cfg.Epoch = "s1", true, 7
	pkts := make([]*pb.PacketSummary, 6)
	for i := range pkts {
		src, sp, dst, dp := hostA, uint32(40000), hostB, uint32(5000)
		if i%2 == 1 {
			src, sp, dst, dp = dst, dp, src, sp
		}
		pkts[i] = udp(t0+int64(i)*int64(time.Second), src, sp, dst, dp, uint32(100+i))
	}
	run := func(states []*FlowState, from int) ([]*pb.Flow, []*Checkpoint, *Table) {
		var flows []*pb.Flow
		var cps []*Checkpoint
		tb := NewTable(cfg, func(r Record) {
			flows = append(flows, r.Flow)
			if r.Checkpoint != nil {
				cps = append(cps, r.Checkpoint)
			}
		})
		tb.Resume(states)
		for i := from; i < len(pkts); i++ {
			tb.AddAt(pkts[i], nil, Pos{Seq: uint64(i + 1)})
		}
		tb.Flush(pb.EndReason_END_EOF)
		return flows, cps, tb
	}
	orig, cps, _ := run(nil, 0)
	if len(orig) != 3 {
		t.Fatalf("%d records, want 3", len(orig))
	}
	for i, want := range [][2]uint64{{1, 1}, {1, 1}, {1, 1}} { // orig, resp packets per record
		if f := orig[i]; f.OrigPkts != want[0] || f.RespPkts != want[1] || f.RecordIndex != uint32(i) || f.FlowStartNs != t0 {
			t.Errorf("record %d: %d+%d packets, index %d, flow start %d", i, f.OrigPkts, f.RespPkts, f.RecordIndex, f.FlowStartNs-t0)
		}
	}
	// Checkpoints: the two interim records and the final (flow in 6 messages).
	if len(cps) != 3 {
		t.Fatalf("%d checkpoints, want 3", len(cps))
	}
	st, err := ParseFlowState(cps[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pos != (Pos{Seq: 3}) || st.Done || st.RecIndex != 1 || st.FlowStart != t0 || st.Epoch != 7 ||
		st.RecStart != t0+2*int64(time.Second) {
		t.Errorf("first checkpoint %+v", st)
	}
	if fin, _ := ParseFlowState(cps[2].Data); fin == nil || !fin.Done || fin.Pos != (Pos{Seq: 6}) {
		t.Errorf("final checkpoint %+v", fin)
	}
	k, _, _ := keyOf(pkts[0])
	if cps[0].Key != KeyHash(k) || len(cps[0].Key) != 32 {
		t.Errorf("checkpoint key %q", cps[0].Key)
	}

	replay, _, tb := run([]*FlowState{st}, 1)
	if tb.Replayed != 1 {
		t.Errorf("%d packets skipped, want 1 (the packet at 1 s, in record 0)", tb.Replayed)
	}
	if len(replay) != 2 {
		t.Fatalf("replay: %d records, want 2", len(replay))
	}
	for i, f := range replay {
		o := orig[i+1]
		if f.Id != o.Id || !proto.Equal(f, o) {
			t.Errorf("replayed record %d differs:\n%v\n%v", i+1, f, o)
		}
		if want := schema.FlowID(f.Sensor, f.Proto, f.OrigAddr, f.OrigPort, f.RespAddr, f.RespPort, f.Vlan, f.InnerVlan,
			f.TunnelId, t0, uint32(i+1)); f.Id != want {
			t.Errorf("replayed record %d id %s, want schema.FlowID(..., flow start, %d) %s", i+1, f.Id, i+1, want)
		}
	}
	// A replay that also holds the final checkpoint skips the whole flow.
	fin, _ := ParseFlowState(cps[2].Data)
	if again, _, _ := run([]*FlowState{st, fin}, 1); len(again) != 0 {
		t.Errorf("replay after the final checkpoint: %d records, want none", len(again))
	}
	// Without the checkpoint the suffix is a new flow: other ids.
	bad, _, _ := run(nil, 1)
	if len(bad) == 0 || bad[0].Id == orig[1].Id || bad[0].FlowStartNs == t0 {
		t.Errorf("replay without checkpoint: %d records, first %v", len(bad), bad)
	}
}

// TestFinalCheckpointWhenNotReplayable: a flow in one message ended by its
// bucket's packets needs no checkpoint (a replay rebuilds it whole); one
// ended by shutdown or by a clock the wall moved ahead of the packets gets
// a final checkpoint, because a replay would not end it there.
func TestFinalCheckpointWhenNotReplayable(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Sensor, cfg.Checkpoints = "s1", true
	cases := []struct {
		name string
		end  func(tb *Table)
		want bool
	}{
		{"idle by packet time", func(tb *Table) {
			tb.AddAt(udp(t0+2*int64(time.Minute), hostA, 1, hostB, 2, 10), nil, Pos{Seq: 2})
		}, false},
		{"idle by wall clock", func(tb *Table) { tb.Advance(t0 + 2*int64(time.Minute)) }, true},
		{"shutdown", func(tb *Table) { tb.Flush(pb.EndReason_END_SHUTDOWN) }, true},
	}
	for _, c := range cases {
		var got *Checkpoint
		tb := NewTable(cfg, func(r Record) {
			if r.Flow.RespPort == 5000 {
				got = r.Checkpoint
			}
		})
		tb.AddAt(udp(t0, hostA, 40000, hostB, 5000, 10), nil, Pos{Seq: 1})
		tb.AddAt(udp(t0+int64(time.Second), hostB, 5000, hostA, 40000, 10), nil, Pos{Seq: 1, Idx: 1})
		c.end(tb)
		if (got != nil) != c.want {
			t.Errorf("%s: checkpoint %v, want one: %v", c.name, got, c.want)
		}
		if got != nil {
			if st, _ := ParseFlowState(got.Data); st == nil || !st.Done || st.Pos != (Pos{Seq: 1, Idx: 1}) {
				t.Errorf("%s: checkpoint %s", c.name, got.Data)
			}
		}
	}
}
