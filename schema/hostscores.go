package schema

import (
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// HostScoresModelKey is the key of the HostScoresModel entry of the
// HostScoresBucket.
const HostScoresModelKey = "model"

// HostScoresModel describes the scores in the HostScoresBucket: the
// detector's host model (an isolation forest), its threshold, the quantile
// of benign training scores the threshold is, and the window length (the
// window of a flow starting at start_ns starts at start_ns - start_ns %
// window_ns).
type HostScoresModel struct {
	Model     string  `json:"model"`
	Threshold float64 `json:"threshold"` // score at or above which a host window is anomalous
	Quantile  float64 `json:"quantile"`  // of benign training scores the threshold is
	WindowNs  int64   `json:"window_ns"` // host window length, ns
}

// HostScore is the value of one host window in the HostScoresBucket, as
// the detector writes it (its /hosts objects; fields not listed here, such
// as the window's counts, are ignored by readers that do not need them).
type HostScore struct {
	Sensor      string  `json:"sensor"`
	Addr        string  `json:"addr"`
	WindowStart int64   `json:"window_start_ns"` // Unix ns, packet time
	WindowEnd   int64   `json:"window_end_ns"`
	Score       float64 `json:"score"` // 0..1 (higher: more unusual)
	Anomalous   bool    `json:"anomalous"`
}

// HostScoreKey is the key of one host window in the HostScoresBucket:
// "<sensor>.<addr>.<window start, Unix seconds>", where addr is the
// address in its text form (netip.Addr.String of the unmapped address)
// with '.' written '-' and ':' written '_' (KV keys allow neither ':' nor a
// variable number of tokens), e.g. "s1.10-0-0-66.1795968000" or
// "s1.fd99__10.1795968000". A flow (sensor, orig_addr, start_ns) is
// annotated by HostScoreKey(sensor, orig_addr, start_ns - start_ns %
// window_ns) and the same for resp_addr.
func HostScoreKey(sensor string, addr netip.Addr, windowStartNs int64) string {
	a := strings.NewReplacer(".", "-", ":", "_").Replace(addr.Unmap().String())
	return sensor + "." + a + "." + strconv.FormatInt(windowStartNs/int64(time.Second), 10)
}
