// Package stage is the detector's data path: it pulls FlowBatch messages
// from FLOWS through the durable consumer schema.ConsumerDetector, scores
// every flow with the model, runs the rules, publishes alerts to
// ALERTS (netwatch.alerts.<sensor>, Nats-Msg-Id = alert id) and acks a
// message only once every alert it triggered has a PubAck.
package stage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"netwatch/detector/internal/arp"
	"netwatch/detector/internal/hostmodel"
	"netwatch/detector/internal/model"
	"netwatch/detector/internal/output"
	"netwatch/detector/internal/policy"
	"netwatch/detector/internal/rules"
	"netwatch/schema"
	"netwatch/schema/pb"
)

// Config of the stage.
type Config struct {
	Rules          rules.Config
	ARP            arp.Config        // zero: arp.DefaultConfig
	Outputs        []output.Output   // also receive every alert ALERTS stores (not its duplicates): webhook, syslog
	ModelAlerts    bool              // publish "anomaly" alerts from the model
	ModelThreshold float64           // score at or above which a flow is anomalous, 0..1
	ModelWindow    time.Duration     // one anomaly alert per (originator, responder, window)
	NameModel      rules.NameModel   // query-name model for dns_tunnel (nil: that signal off)
	NameModelName  string            // its name, for the alert evidence
	HostModel      *hostmodel.Forest // per-host anomaly model (nil: off); annotates alerts and /hosts, never alerts itself
	HostWindow     time.Duration     // host window length (0: hostmodel.DefaultWindow)
	HostMax        int               // most open host windows (0: 1,000,000)
	FetchBatch     int               // messages per pull request
	NakDelay       time.Duration     // redelivery delay after a failed publish
	Group          Group             // consumer groups on FLOWS (group.go); zero: the shared durable, one instance
}

// Metrics of the stage, registered on one registry.
type Metrics struct {
	Messages      prometheus.Counter
	Flows         prometheus.Counter
	Scored        prometheus.Counter
	ScoreErrors   prometheus.Counter
	Score         prometheus.Histogram
	Alerts        *prometheus.CounterVec
	PublishErrors prometheus.Counter
	Duplicates    *prometheus.CounterVec // publishes ALERTS dropped as duplicates (PubAck.Duplicate), by category
	Terminated    prometheus.Counter
	RuleKeys      prometheus.Gauge
	Lag           prometheus.Histogram
	ARPMessages   prometheus.Counter
	ARPFrames     prometheus.Counter
	LiveICMP      prometheus.Counter
	LivePackets   prometheus.Counter
	ARPTerminated prometheus.Counter
	Suppressed    *prometheus.CounterVec
	Reloads       *prometheus.CounterVec
	HealthBad     prometheus.Counter
	HostWindows   prometheus.Counter
	HostAnomalous prometheus.Counter
	HostScore     prometheus.Histogram

	HostScoresPut     prometheus.Counter
	HostScoresErrors  prometheus.Counter
	HostScoresDropped prometheus.Counter
	ModelReloads      *prometheus.CounterVec
	ModelLoadErrors   prometheus.Counter

	// Group mode (group.go).
	Partitions  *prometheus.GaugeVec // partitions held, by group: originator, target
	TargetFlows prometheus.Counter
	TargetKeys  prometheus.Gauge
	Rejoins     prometheus.Counter
}

// NewMetrics creates and registers the netwatch_detector_* metrics.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Messages: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_messages_total",
			Help: "FLOWS messages processed and acked."}),
		Flows: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_flows_total",
			Help: "Flow records evaluated by the rules."}),
		Scored: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_flows_scored_total",
			Help: "Flow records scored by the model."}),
		ScoreErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_score_errors_total",
			Help: "Flow records the model failed to score."}),
		Score: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "netwatch_detector_flow_score",
			Help: "Model attack probability of each scored flow (0..1).", Buckets: prometheus.LinearBuckets(0.1, 0.1, 10)}),
		Alerts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netwatch_detector_alerts_total",
			Help: "Alerts published and stored by ALERTS (PubAck received, not a duplicate), by category."}, []string{"category"}),
		Duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netwatch_detector_alerts_duplicate_total",
			Help: "Alert publishes ALERTS dropped as duplicates of a stored message id (a replay of FLOWS); not sent to the outputs, by category."},
			[]string{"category"}),
		PublishErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_publish_errors_total",
			Help: "Alert publishes that failed; the FLOWS message is nak'ed and redelivered."}),
		Terminated: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_messages_terminated_total",
			Help: "FLOWS messages that did not decode and were terminated."}),
		RuleKeys: prometheus.NewGauge(prometheus.GaugeOpts{Name: "netwatch_detector_rule_windows",
			Help: "Open (rule, originator, target, window) states."}),
		Lag: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "netwatch_detector_process_seconds",
			Help: "Time to process one FLOWS message, publish its alerts and ack it.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}),
		ARPMessages: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_arp_messages_total",
			Help: "PACKETS messages read for their ARP summaries and acked (consumer detector-arp)."}),
		LiveICMP: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_live_icmp_packets_total",
			Help: "ICMP request packets counted for icmp_flood from the packet summaries of PACKETS (detector-arp consumer)"}),
		LivePackets: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_live_packets_total",
			Help: "TCP, UDP, ICMP and ICMPv6 packet summaries of PACKETS run through the live scan and flood rules (detector-arp consumer)."}),
		ARPFrames: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_arp_frames_total",
			Help: "ARP summaries evaluated by the arp_spoof rule."}),
		ARPTerminated: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_arp_messages_terminated_total",
			Help: "PACKETS messages whose protobuf framing or ARP summaries did not decode; terminated."}),
		Suppressed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netwatch_detector_alerts_suppressed_total",
			Help: "Alerts not published because an allow entry of the -config file matched, by category."}, []string{"category"}),
		Reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netwatch_detector_config_reloads_total",
			Help: "Reloads of the -config file by result: ok, or error (the previous configuration stays)."}, []string{"result"}),
		HealthBad: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_metrics_undecodable_total",
			Help: "METRICS messages the health rules could not decode (skipped)."}),
	}
	m.HostWindows = prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_host_windows_total",
		Help: "Host windows closed and scored by the host anomaly model."})
	m.HostAnomalous = prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_host_windows_anomalous_total",
		Help: "Host windows whose score reached the host model's threshold."})
	m.HostScore = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "netwatch_detector_host_score",
		Help: "Host anomaly model score of each closed host window (0..1).", Buckets: prometheus.LinearBuckets(0.3, 0.05, 12)})
	m.HostScoresPut = prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_host_scores_put_total",
		Help: "Closed host windows written to the HOST_SCORES key-value bucket."})
	m.HostScoresErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_host_scores_errors_total",
		Help: "Host window writes to HOST_SCORES that failed (the window is not retried)."})
	m.HostScoresDropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_host_scores_dropped_total",
		Help: "Closed host windows not written to HOST_SCORES because its queue was full."})
	m.ModelReloads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netwatch_detector_model_reloads_total",
		Help: "Models loaded from the MODELS object store, by kind (flow, qname, host) and result (ok, error: the previous model stays)."},
		[]string{"kind", "result"})
	m.ModelLoadErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_model_load_errors_total",
		Help: "Model files (-model, -qname.model, -host.model or the shipped ones) that did not load at start; the rules run without them."})
	m.Partitions = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "netwatch_detector_group_partitions",
		Help: "Partitions of the detectors' consumer groups on FLOWS this member holds, by group (originator, target); 0 with one instance (-consume.group empty)."},
		[]string{"group"})
	m.TargetFlows = prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_target_flows_total",
		Help: "Flow records of the target group evaluated by the per-target rules (group mode)."})
	m.TargetKeys = prometheus.NewGauge(prometheus.GaugeOpts{Name: "netwatch_detector_target_rule_windows",
		Help: "Open per-target rule states of the target engine (group mode)."})
	m.Rejoins = prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_detector_group_rejoins_total",
		Help: "Times this member joined a consumer group again because its consumer was missing from the group's work queue."})
	m.Partitions.WithLabelValues("originator")
	m.Partitions.WithLabelValues("target")
	reg.MustRegister(m.Partitions, m.TargetFlows, m.TargetKeys, m.Rejoins)
	reg.MustRegister(m.HostWindows, m.HostAnomalous, m.HostScore, m.HostScoresPut, m.HostScoresErrors, m.HostScoresDropped, m.ModelReloads,
		m.ModelLoadErrors)
	reg.MustRegister(m.Messages, m.Flows, m.Scored, m.ScoreErrors, m.Score, m.Alerts, m.Duplicates, m.PublishErrors, m.Terminated, m.RuleKeys, m.Lag,
		m.ARPMessages, m.ARPFrames, m.LiveICMP, m.LivePackets, m.ARPTerminated, m.Suppressed, m.Reloads, m.HealthBad)
	m.Reloads.WithLabelValues("ok")
	m.Reloads.WithLabelValues("error")
	for _, c := range []string{"portscan", "hostsweep", "syn_flood", "udp_flood", "icmp_flood", "amplification", "bruteforce",
		"dns_tunnel", "dga", "beaconing", "arp_spoof", "health", "anomaly"} {
		m.Alerts.WithLabelValues(c)
		m.Duplicates.WithLabelValues(c)
	}
	return m
}

// Stage is one detector instance.
type Stage struct {
	cfg     Config
	js      jetstream.JetStream
	scorer  model.Scorer
	engine  *rules.Engine
	engMu   sync.Mutex  // engine: Handle (FLOWS) and HandleARP (live ICMP counts of PACKETS) share it
	dec     decoder     // FlowBatch decoding into reused flows (Handle runs on one goroutine)
	hosts   *hostScorer // nil without a host model
	anomaly map[anomalyKey]bool
	m       *Metrics
	log     *slog.Logger
	ready   atomic.Bool

	arp      *arp.Engine
	arpMu    sync.Mutex
	arpReady atomic.Bool

	policy    atomic.Pointer[policy.Policy]
	nextRules atomic.Pointer[rules.Config]
	nextARP   atomic.Pointer[arp.Config]

	grp *groupState // group mode (Config.Group); nil with one instance
}

type anomalyKey struct {
	sensor     string
	orig, resp netip.Addr
	win        int64
}

// New returns a stage. scorer may be nil (no model).
func New(cfg Config, js jetstream.JetStream, scorer model.Scorer, m *Metrics, log *slog.Logger) *Stage {
	if cfg.FetchBatch <= 0 {
		cfg.FetchBatch = 256
	}
	if cfg.NakDelay <= 0 {
		cfg.NakDelay = time.Second
	}
	if cfg.ModelWindow <= 0 {
		cfg.ModelWindow = time.Minute
	}
	if cfg.ARP.Window == 0 {
		cfg.ARP = arp.DefaultConfig()
	}
	engine := rules.New(cfg.Rules)
	if cfg.NameModel != nil {
		engine.SetNameModel(cfg.NameModel, cfg.NameModelName)
	}
	st := &Stage{cfg: cfg, js: js, scorer: scorer, engine: engine,
		anomaly: map[anomalyKey]bool{}, m: m, log: log, arp: arp.New(cfg.ARP)}
	if cfg.Group.Name != "" {
		engine.SetScope(rules.ScopeOriginator)
		st.grp = newGroupState(cfg.Group, cfg.Rules, cfg.NameModel, cfg.NameModelName)
	}
	if cfg.HostModel != nil {
		if cfg.HostWindow <= 0 {
			cfg.HostWindow = hostmodel.DefaultWindow
		}
		if cfg.HostMax <= 0 {
			cfg.HostMax = 1_000_000
		}
		st.hosts = newHostScorer(cfg.HostModel, int64(cfg.HostWindow), cfg.HostMax, m)
		if st.grp != nil {
			st.hosts.tracker.Sides = hostmodel.SideOut // the target group's handler counts the responders' side
		}
	}
	return st
}

// Ready reports whether the stage is consuming FLOWS (the ARP and health
// consumers are not required: see ARPReady).
func (s *Stage) Ready() error {
	if !s.ready.Load() {
		return errors.New("detector not consuming FLOWS yet")
	}
	return nil
}

// Run consumes until ctx ends. Then it drains: messages the client has
// already pulled are still processed and acked (their alerts published), so
// none waits out AckWait on the server.
func (s *Stage) Run(ctx context.Context) error {
	if s.grp != nil {
		return s.runGroup(ctx)
	}
	cons, err := s.js.Consumer(ctx, schema.StreamFlows, schema.ConsumerDetector)
	if err != nil {
		return fmt.Errorf("bind consumer %s: %w", schema.ConsumerDetector, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(s.cfg.FetchBatch), jetstream.PullExpiry(schema.PullExpiry))
	if err != nil {
		return fmt.Errorf("consume %s: %w", schema.ConsumerDetector, err)
	}
	stop := context.AfterFunc(ctx, it.Drain)
	defer stop()
	defer it.Stop()
	// Alerts of drained messages are still published after ctx ends.
	hctx := context.WithoutCancel(ctx)
	s.ready.Store(true)
	defer s.ready.Store(false)
	s.log.Info("consuming", "stream", schema.StreamFlows, "consumer", schema.ConsumerDetector)
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				return nil
			}
			s.log.Warn("next message", "err", err)
			continue
		}
		s.Handle(hctx, msg)
	}
}

// ARPReady reports whether the detector-arp consumer is running.
func (s *Stage) ARPReady() bool { return s.arpReady.Load() }

// Metrics returns the stage's metrics.
func (s *Stage) Metrics() *Metrics { return s.m }

// SetPolicy installs a (re)loaded configuration: p's allow-lists apply to
// the next alert, the thresholds r and a (valid, p's overrides applied) to
// the next message of each consumer. Safe for concurrent use.
func (s *Stage) SetPolicy(p *policy.Policy, r rules.Config, a arp.Config) {
	s.policy.Store(p)
	s.nextRules.Store(&r)
	s.nextARP.Store(&a)
	if s.grp != nil {
		s.grp.nextRules.Store(&r)
	}
}

// Handle processes one FLOWS message: decode, score, rules, publish, ack.
func (s *Stage) Handle(ctx context.Context, msg jetstream.Msg) {
	start := time.Now()
	sensor, flows, err := s.dec.decode(msg.Data())
	if err != nil {
		s.m.Terminated.Inc()
		meta, _ := msg.Metadata()
		seq := uint64(0)
		if meta != nil {
			seq = meta.Sequence.Stream
		}
		s.log.Warn("terminate undecodable message", "subject", msg.Subject(), "stream_seq", seq, "err", err)
		_ = msg.Term()
		return
	}
	s.engMu.Lock()
	if r := s.nextRules.Swap(nil); r != nil {
		s.engine.SetConfig(*r)
	}
	alerts := s.process(sensor, flows, msg.Subject())
	s.engMu.Unlock()
	for i, a := range alerts {
		if err := s.emit(ctx, a); err != nil {
			s.m.PublishErrors.Inc()
			s.log.Error("publish alert", "alert_id", a.GetId(), "subject", schema.AlertsSubject(a.GetSensor()), "err", err)
			s.engMu.Lock()
			for _, r := range alerts[i:] {
				s.retract(r)
			}
			s.engMu.Unlock()
			_ = msg.NakWithDelay(s.cfg.NakDelay)
			return
		}
	}
	if err := msg.Ack(); err != nil {
		s.log.Warn("ack", "err", err)
	}
	s.m.Messages.Inc()
	s.m.Lag.Observe(time.Since(start).Seconds())
}

// process runs the model and the rules on every flow of a batch (its
// sensor and flows, received on subject) and returns the alerts.
func (s *Stage) process(sensor string, flows []*pb.Flow, subject string) []*pb.Alert {
	if sensor == "" {
		sensor = schema.SensorFromSubject(subject)
	}
	var alerts []*pb.Alert
	for _, f := range flows {
		fs := sensor
		if f.GetSensor() != "" {
			fs = f.GetSensor()
		}
		if s.hosts != nil {
			s.hosts.tracker.Observe(fs, f)
		}
		n := len(alerts)
		alerts = append(alerts, s.engine.Observe(fs, f)...)
		if s.hosts != nil {
			for _, a := range alerts[n:] {
				s.hosts.annotate(a)
			}
		}
		if a := s.score(fs, f); a != nil {
			alerts = append(alerts, a)
		}
	}
	s.m.Flows.Add(float64(len(flows))) // once per batch: an atomic add per flow showed in profiles
	s.m.RuleKeys.Set(float64(s.engine.Keys()))
	return alerts
}

func (s *Stage) retract(a *pb.Alert) {
	if a.GetCategory() == "anomaly" {
		o, _ := netip.ParseAddr(a.GetOrigAddr())
		r, _ := netip.ParseAddr(a.GetRespAddr())
		delete(s.anomaly, anomalyKey{a.GetSensor(), o, r, a.GetWindowStartNs()})
		return
	}
	s.engine.Retract(a)
}

// emit publishes one alert to ALERTS and the outputs, counts and logs
// it; an alert an allow entry matches is counted as suppressed instead,
// one ALERTS reports as a duplicate (PubAck.Duplicate) is counted in
// Duplicates and not sent to the outputs.
func (s *Stage) emit(ctx context.Context, a *pb.Alert) error {
	if ok, i := s.policy.Load().Allowed(a); ok {
		s.m.Suppressed.WithLabelValues(a.GetCategory()).Inc()
		s.log.Debug("alert suppressed", "alert_id", a.GetId(), "category", a.GetCategory(), "allow_entry", i)
		return nil
	}
	dup, err := s.publish(ctx, a)
	if err != nil {
		return err
	}
	if dup {
		// ALERTS already holds this message id (its duplicate window): a
		// replay of FLOWS, e.g. a group's work queue sourcing retained flows.
		// The outputs had it when it was stored; sending it again would
		// repeat it there.
		s.m.Duplicates.WithLabelValues(a.GetCategory()).Inc()
		s.log.Debug("alert duplicate", "alert_id", a.GetId(), "msg_id", MsgID(a), "category", a.GetCategory())
		return nil
	}
	s.m.Alerts.WithLabelValues(a.GetCategory()).Inc()
	for _, o := range s.cfg.Outputs {
		o.Send(a) // never blocks; a full queue drops for that output and counts
	}
	s.log.Info("alert", "alert_id", a.GetId(), "category", a.GetCategory(), "sensor", a.GetSensor(),
		"orig", a.GetOrigAddr(), "resp", a.GetRespAddr(), "severity", a.GetSeverity().String(), "update", rules.UpdateOf(a))
	return nil
}

// MsgID is the Nats-Msg-Id of an alert publish: the alert id for its
// first publish, id + ".u" + n for its n-th update (the same alert with
// grown counts, rules.UpdateOf), so the ALERTS duplicate window drops a
// repeated publish but keeps every update.
func MsgID(a *pb.Alert) string {
	if u := rules.UpdateOf(a); u > 0 {
		return fmt.Sprintf("%s.u%d", a.GetId(), u)
	}
	return a.GetId()
}

// publish stores a in ALERTS with its MsgID and reports whether the
// stream dropped it as a duplicate of a message id in its duplicate
// window (PubAck.Duplicate).
func (s *Stage) publish(ctx context.Context, a *pb.Alert) (duplicate bool, err error) {
	data, err := proto.Marshal(a)
	if err != nil {
		return false, fmt.Errorf("encode alert: %w", err)
	}
	m := &nats.Msg{Subject: schema.AlertsSubject(a.GetSensor()), Data: data, Header: nats.Header{}}
	m.Header.Set(jetstream.MsgIDHeader, MsgID(a))
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ack, err := s.js.PublishMsg(pctx, m)
	if err != nil {
		return false, fmt.Errorf("publish alert %s: %w", a.GetId(), err)
	}
	return ack.Duplicate, nil
}

// score runs the model on f and returns an anomaly alert when model alerts
// are on, the score reaches the threshold and this (originator, responder,
// window) has not alerted yet.
func (s *Stage) score(sensor string, f *pb.Flow) *pb.Alert {
	if s.scorer == nil {
		return nil
	}
	p, x, err := model.ScoreFlow(s.scorer, f) // x: the features scored, traffic columns included
	if err != nil {
		s.m.ScoreErrors.Inc()
		return nil
	}
	s.m.Scored.Inc()
	s.m.Score.Observe(p)
	if !s.cfg.ModelAlerts || p < s.cfg.ModelThreshold {
		return nil
	}
	o, ok1 := netip.AddrFromSlice(f.GetOrigAddr())
	r, ok2 := netip.AddrFromSlice(f.GetRespAddr())
	if !ok1 || !ok2 {
		return nil
	}
	o, r = o.Unmap(), r.Unmap()
	w := int64(s.cfg.ModelWindow)
	win := f.GetStartNs() - f.GetStartNs()%w
	if f.GetStartNs() < 0 && f.GetStartNs()%w != 0 {
		win -= w
	}
	k := anomalyKey{sensor, o, r, win}
	if s.anomaly[k] {
		return nil
	}
	if len(s.anomaly) > 100_000 { // bounded: forget old keys; a repeat alert has the same id and is deduplicated
		clear(s.anomaly)
	}
	s.anomaly[k] = true
	ev, _ := json.Marshal(map[string]any{
		"model": s.scorer.Name(), "score": p, "threshold": s.cfg.ModelThreshold, "flow_id": f.GetId(),
		"features": x, "window_start_ns": win, "window_end_ns": win + w,
	})
	name := s.scorer.Name()
	return &pb.Alert{
		Id: schema.AlertID(sensor, name, o.String(), r.String(), win), TimeNs: f.GetEndNs(), Sensor: sensor,
		Severity: pb.Severity_SEVERITY_LOW, Category: "anomaly", OrigAddr: o.String(), RespAddr: r.String(),
		Summary:  fmt.Sprintf("model %s scored a %s flow %s -> %s:%d at %.2f", name, x.Protocol, o, r, f.GetRespPort(), p),
		Evidence: ev, Rule: name, WindowStartNs: win, WindowEndNs: win + w, Score: p,
	}
}
