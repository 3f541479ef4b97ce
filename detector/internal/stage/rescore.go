package stage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
)

// RescoreSummary is what Rescore did.
type RescoreSummary struct {
	RunID      string         `json:"run_id"`
	From       time.Time      `json:"from"`
	To         time.Time      `json:"to"`
	Messages   int            `json:"messages"`
	Undecoded  int            `json:"undecodable_messages"`
	Flows      int            `json:"flows"`
	Alerts     map[string]int `json:"alerts"` // publishes by category (updates count)
	Suppressed int            `json:"suppressed"`
}

// RunAlertID is the id of a live alert id in rescore run runID: the first
// 16 bytes of SHA-256 over "runID|id", hex. A rescore never collides with
// the live alerts nor with another run, and the same run over the same
// flows gives the same ids.
func RunAlertID(runID, id string) string {
	sum := sha256.Sum256([]byte(runID + "|" + id))
	return hex.EncodeToString(sum[:16])
}

// Rescore re-runs the current rules and model of s over the FLOWS messages
// stored from `from` to `to` (JetStream store time: an ordered consumer
// from `from`, stopping at the first message after `to` or at the end of
// the stream as it was when Rescore started) and publishes the alerts to
// ALERTS under run id runID: each alert's id becomes RunAlertID(runID,
// id), its evidence gains "run_id" and "live_id". Nothing is acked or
// changed on the live consumers. Errors: the consumer cannot be created,
// a publish fails, ctx ends.
func (s *Stage) Rescore(ctx context.Context, runID string, from, to time.Time) (RescoreSummary, error) {
	sum := RescoreSummary{RunID: runID, From: from, To: to, Alerts: map[string]int{}}
	st, err := s.js.Stream(ctx, schema.StreamFlows)
	if err != nil {
		return sum, fmt.Errorf("rescore: stream %s: %w", schema.StreamFlows, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return sum, fmt.Errorf("rescore: stream info: %w", err)
	}
	last := info.State.LastSeq
	if last == 0 || info.State.Msgs == 0 {
		return sum, nil
	}
	cons, err := s.js.OrderedConsumer(ctx, schema.StreamFlows, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &from})
	if err != nil {
		return sum, fmt.Errorf("rescore: consumer: %w", err)
	}
	for {
		batch, err := cons.Fetch(s.cfg.FetchBatch, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return sum, fmt.Errorf("rescore: fetch: %w", err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			meta, err := msg.Metadata()
			if err != nil {
				return sum, fmt.Errorf("rescore: metadata: %w", err)
			}
			if meta.Timestamp.After(to) {
				return sum, nil
			}
			var fb pb.FlowBatch
			if err := proto.Unmarshal(msg.Data(), &fb); err != nil {
				sum.Undecoded++
			} else {
				sum.Messages++
				sum.Flows += len(fb.GetFlows())
				for _, a := range s.process(fb.GetSensor(), fb.GetFlows(), msg.Subject()) {
					if ok, _ := s.policy.Load().Allowed(a); ok {
						sum.Suppressed++
						continue
					}
					live := a.GetId()
					a.Id = RunAlertID(runID, live)
					var ev map[string]any
					if json.Unmarshal(a.GetEvidence(), &ev) == nil {
						ev["run_id"], ev["live_id"] = runID, live
						a.Evidence, _ = json.Marshal(ev)
					}
					if err := s.emit(ctx, a); err != nil {
						return sum, fmt.Errorf("rescore: %w", err)
					}
					sum.Alerts[a.GetCategory()]++
				}
			}
			if meta.Sequence.Stream >= last {
				return sum, nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
			return sum, fmt.Errorf("rescore: fetch: %w", err)
		}
		if n == 0 {
			if ctx.Err() != nil {
				return sum, ctx.Err()
			}
			return sum, nil // nothing more from `from` on
		}
	}
}
