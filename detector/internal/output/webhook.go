package output

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"netwatch/schema/pb"
)

// WebhookConfig configures a Webhook.
type WebhookConfig struct {
	URL        string        // http:// or https:// endpoint; each alert is POSTed as one JSON Document
	Queue      int           // alerts waiting for delivery; beyond it Send drops (0: 1000)
	Timeout    time.Duration // per request (0: 5 s)
	Attempts   int           // tries per alert before it is dropped (0: 8)
	Backoff    time.Duration // wait after the first failure, doubled after each (0: 500 ms)
	MaxBackoff time.Duration // longest wait between tries (0: 30 s)
	Header     http.Header   // extra request headers (e.g. Authorization)
}

// Webhook POSTs alerts as JSON (Content-Type application/json) to a URL.
// A 2xx answer delivers; 408, 429, 5xx and transport errors are retried
// with exponential backoff (Backoff doubling up to MaxBackoff, Attempts in
// all); any other status is permanent and the alert is dropped. Alerts
// are delivered in order, one at a time.
type Webhook struct {
	cfg    WebhookConfig
	client *http.Client
	q      chan *pb.Alert
	m      *Metrics
	log    *slog.Logger
	mu     sync.RWMutex
	closed bool
	done   chan struct{}
	stop   context.CancelFunc
	ctx    context.Context
}

// NewWebhook starts a webhook output. Close it to stop.
func NewWebhook(cfg WebhookConfig, m *Metrics, log *slog.Logger) *Webhook {
	if cfg.Queue <= 0 {
		cfg.Queue = 1000
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 8
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	ctx, stop := context.WithCancel(context.Background())
	w := &Webhook{cfg: cfg, client: &http.Client{Timeout: cfg.Timeout}, q: make(chan *pb.Alert, cfg.Queue), m: m,
		log: log, done: make(chan struct{}), stop: stop, ctx: ctx}
	go w.loop()
	return w
}

// Send queues a; false when the queue is full or the webhook is closed.
func (w *Webhook) Send(a *pb.Alert) bool {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		w.m.Dropped.WithLabelValues("webhook").Inc()
		return false
	}
	select {
	case w.q <- a:
		return true
	default:
		w.m.Dropped.WithLabelValues("webhook").Inc()
		return false
	}
}

// Close stops intake and delivers what is queued until ctx ends; then it
// abandons the rest (counted as dropped).
func (w *Webhook) Close(ctx context.Context) {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.q)
	}
	w.mu.Unlock()
	select {
	case <-w.done:
	case <-ctx.Done():
		w.stop()
		<-w.done
	}
}

func (w *Webhook) loop() {
	defer close(w.done)
	for a := range w.q {
		if w.ctx.Err() != nil {
			w.m.Dropped.WithLabelValues("webhook").Inc()
			continue
		}
		w.deliver(a)
	}
}

// deliver tries a until it is delivered, fails permanently or runs out of
// attempts.
func (w *Webhook) deliver(a *pb.Alert) {
	body, err := json.Marshal(NewDocument(a))
	if err != nil {
		w.m.Dropped.WithLabelValues("webhook").Inc()
		w.log.Error("webhook: encode alert", "alert_id", a.GetId(), "err", err)
		return
	}
	wait := w.cfg.Backoff
	for attempt := 1; ; attempt++ {
		retry, err := w.post(body)
		if err == nil {
			w.m.Sent.WithLabelValues("webhook").Inc()
			return
		}
		if !retry || attempt >= w.cfg.Attempts {
			w.m.Dropped.WithLabelValues("webhook").Inc()
			w.log.Error("webhook: alert dropped", "alert_id", a.GetId(), "attempts", attempt, "err", err)
			return
		}
		w.m.Retries.WithLabelValues("webhook").Inc()
		w.log.Warn("webhook: retrying", "alert_id", a.GetId(), "attempt", attempt, "wait", wait, "err", err)
		select {
		case <-time.After(wait):
		case <-w.ctx.Done():
			w.m.Dropped.WithLabelValues("webhook").Inc()
			return
		}
		wait = min(2*wait, w.cfg.MaxBackoff)
	}
}

// post sends one request; retry reports whether a failure is transient.
func (w *Webhook) post(body []byte) (retry bool, err error) {
	req, err := http.NewRequestWithContext(w.ctx, http.MethodPost, w.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("webhook request: %w", err)
	}
	for k, vs := range w.cfg.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.client.Do(req)
	if err != nil {
		return true, fmt.Errorf("webhook post: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return false, nil
	case resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return true, fmt.Errorf("webhook post: %s", resp.Status)
	}
	return false, fmt.Errorf("webhook post: %s (permanent)", resp.Status)
}
