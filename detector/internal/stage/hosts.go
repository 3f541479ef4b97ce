package stage

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"netwatch/detector/internal/hostmodel"
	"netwatch/schema/pb"
)

// maxHostScores bounds the latest-score table behind /hosts; when it is
// full, only hosts already in it and anomalous windows get in.
const maxHostScores = 10_000

// HostScore is the anomaly score of one host window (GET /hosts).
type HostScore struct {
	Sensor      string           `json:"sensor"`
	Addr        string           `json:"addr"`
	WindowStart int64            `json:"window_start_ns"` // Unix ns, packet time
	WindowEnd   int64            `json:"window_end_ns"`
	Score       float64          `json:"score"` // 0..1, isolation forest (higher: more unusual)
	Anomalous   bool             `json:"anomalous"`
	Counts      hostmodel.Counts `json:"counts"`
}

type hostKey struct {
	sensor string
	addr   netip.Addr
}

// hostScorer runs the host model beside the rules: the stage's goroutine
// calls observe and annotate, HTTP handlers read the latest scores.
type hostScorer struct {
	f       *hostmodel.Forest
	tracker *hostmodel.Tracker
	window  int64
	memo    map[hostmodel.Counts]float64 // many host windows look alike (one spoofed SYN each)
	windows prometheus.Counter
	anom    prometheus.Counter
	hist    prometheus.Histogram

	mu     sync.Mutex
	latest map[hostKey]HostScore

	// out feeds the HOST_SCORES key-value bucket (RunHostScores); nil
	// when it is not running. A full queue drops the window (counted).
	out     chan HostScore
	dropped prometheus.Counter
}

func newHostScorer(f *hostmodel.Forest, window int64, maxHosts int, m *Metrics) *hostScorer {
	h := &hostScorer{f: f, window: window, tracker: hostmodel.NewTracker(window, maxHosts), memo: map[hostmodel.Counts]float64{},
		windows: m.HostWindows, anom: m.HostAnomalous, hist: m.HostScore, latest: map[hostKey]HostScore{}, dropped: m.HostScoresDropped}
	h.tracker.OnClose = h.closed
	return h
}

func (h *hostScorer) score(c hostmodel.Counts) float64 {
	if s, ok := h.memo[c]; ok {
		return s
	}
	s := h.f.Score(c.Vector())
	if len(h.memo) >= 4096 {
		clear(h.memo)
	}
	h.memo[c] = s
	return s
}

func (h *hostScorer) closed(w hostmodel.Window) {
	s := h.score(w.Counts)
	a := h.f.Anomalous(s)
	h.windows.Inc()
	h.hist.Observe(s)
	if a {
		h.anom.Inc()
	}
	k := hostKey{w.Sensor, w.Addr}
	hs := HostScore{Sensor: w.Sensor, Addr: w.Addr.String(), WindowStart: w.Start, WindowEnd: w.Start + h.window,
		Score: s, Anomalous: a, Counts: w.Counts}
	h.mu.Lock()
	if _, ok := h.latest[k]; ok || a || len(h.latest) < maxHostScores {
		h.latest[k] = hs
	}
	h.mu.Unlock()
	if h.out != nil {
		select {
		case h.out <- hs:
		default:
			h.dropped.Inc()
		}
	}
}

// current scores addr's window at packet time ns so far.
func (h *hostScorer) current(sensor, addr string, ns int64) (HostScore, bool) {
	ad, err := netip.ParseAddr(addr)
	if err != nil {
		return HostScore{}, false
	}
	w, ok := h.tracker.Current(sensor, ad, ns)
	if !ok {
		return HostScore{}, false
	}
	s := h.score(w.Counts)
	return HostScore{Sensor: sensor, Addr: w.Addr.String(), WindowStart: w.Start, WindowEnd: w.Start + h.window, Score: s,
		Anomalous: h.f.Anomalous(s), Counts: w.Counts}, true
}

// annotate adds "host_anomaly" to the alert's JSON evidence: the host
// model's score of the originator's and the responder's current window
// (so far), the threshold and the model name. The alert's id and its
// other evidence are unchanged; an alert whose evidence is not a JSON
// object is left alone.
func (h *hostScorer) annotate(a *pb.Alert) {
	ev := bytes.TrimSpace(a.GetEvidence())
	if len(ev) < 2 || ev[0] != '{' || ev[len(ev)-1] != '}' {
		return
	}
	type role struct {
		Score       float64          `json:"score"`
		Anomalous   bool             `json:"anomalous"`
		WindowStart int64            `json:"window_start_ns"`
		Counts      hostmodel.Counts `json:"counts"`
	}
	ann := struct {
		Model     string  `json:"model"`
		Threshold float64 `json:"threshold"`
		Orig      *role   `json:"orig,omitempty"`
		Resp      *role   `json:"resp,omitempty"`
	}{Model: h.f.Name, Threshold: h.f.Threshold} // h.f changes under the stage's engMu, which the caller holds
	if s, ok := h.current(a.GetSensor(), a.GetOrigAddr(), a.GetTimeNs()); ok {
		ann.Orig = &role{s.Score, s.Anomalous, s.WindowStart, s.Counts}
	}
	if s, ok := h.current(a.GetSensor(), a.GetRespAddr(), a.GetTimeNs()); ok {
		ann.Resp = &role{s.Score, s.Anomalous, s.WindowStart, s.Counts}
	}
	if ann.Orig == nil && ann.Resp == nil {
		return
	}
	b, err := json.Marshal(ann)
	if err != nil {
		return
	}
	out := make([]byte, 0, len(ev)+len(b)+20)
	out = append(out, ev[:len(ev)-1]...)
	if len(bytes.TrimSpace(ev[1:len(ev)-1])) > 0 {
		out = append(out, ',')
	}
	out = append(out, `"host_anomaly":`...)
	out = append(out, b...)
	out = append(out, '}')
	a.Evidence = out
}

// HostsHandler serves GET /hosts: the latest closed window's score of each
// host (at most 10,000 hosts; anomalous windows always), highest score
// first, as {"model", "threshold", "quantile", "hosts": [HostScore]}.
// ?anomalous=true keeps anomalous windows only, ?limit=N (default 100,
// at most 10,000) the first N. A bad parameter is a 400. Without a host
// model it is a 404.
func (s *Stage) HostsHandler() http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h := s.hosts
		if h == nil {
			http.Error(w, "no host model loaded", http.StatusNotFound)
			return
		}
		q := r.URL.Query()
		onlyAnom := false
		if v := q.Get("anomalous"); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				http.Error(w, "anomalous: want true or false", http.StatusBadRequest)
				return
			}
			onlyAnom = b
		}
		limit := 100
		if v := q.Get("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxHostScores {
				http.Error(w, "limit: want 1..10000", http.StatusBadRequest)
				return
			}
			limit = n
		}
		h.mu.Lock()
		f := h.f
		list := make([]HostScore, 0, len(h.latest))
		for _, v := range h.latest {
			if !onlyAnom || v.Anomalous {
				list = append(list, v)
			}
		}
		h.mu.Unlock()
		sort.Slice(list, func(i, j int) bool {
			if list[i].Score != list[j].Score {
				return list[i].Score > list[j].Score
			}
			if list[i].Sensor != list[j].Sensor {
				return list[i].Sensor < list[j].Sensor
			}
			return list[i].Addr < list[j].Addr
		})
		if len(list) > limit {
			list = list[:limit]
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"model": f.Name, "threshold": f.Threshold, "quantile": f.Quantile,
			"window_ns": h.window, "hosts": list})
	}
}
