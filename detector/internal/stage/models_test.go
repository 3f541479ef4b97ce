package stage

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"netwatch/detector/internal/hostmodel"
	"netwatch/detector/internal/model"
	"netwatch/detector/internal/modelstore"
	"netwatch/detector/internal/qname"
	"netwatch/detector/internal/rules"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// renamed saves the shipped model of kind under another name and returns
// the file's bytes (the same tree: only the name tells the versions apart).
func renamed(t *testing.T, kind, name string) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), kind+".model")
	switch kind {
	case modelstore.KindFlow:
		m, err := model.Load("../../models/flow-id3.model")
		if err != nil {
			t.Fatal(err)
		}
		m.Meta.Name = name
		if err := m.Save(path); err != nil {
			t.Fatal(err)
		}
	case modelstore.KindQName:
		m, err := qname.Load("../../models/qname-id3.model")
		if err != nil {
			t.Fatal(err)
		}
		m.Name = name
		if err := m.Save(path); err != nil {
			t.Fatal(err)
		}
	case modelstore.KindHost:
		f, err := hostmodel.Load("../../models/host-iforest.model")
		if err != nil {
			t.Fatal(err)
		}
		f.Name = name
		if err := f.Save(path); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestModelStoreHotReload: models in the MODELS object store on an
// in-process JetStream reach a running stage without a restart. A flow
// model put while the watch runs is used for the next flow (its name is
// the rule of the anomaly alert it raises); a version that does not parse
// (put around modelstore.Put's check) is reported and the previous model
// stays; modelstore.Put refuses it outright; a query-name and a host model
// are swapped in too; a host model with other windows is refused. A new
// watch (a detector starting) loads the newest of each kind before its
// initial marker.
func TestModelStoreHotReload(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	obs, err := modelstore.Open(ctx, js, modelstore.DefaultBucket, 1)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := model.Load("../../models/flow-id3.model")
	if err != nil {
		t.Fatal(err)
	}
	hm, err := hostmodel.Load("../../models/host-iforest.model")
	if err != nil {
		t.Fatal(err)
	}
	newStage := func() *Stage {
		return New(Config{Rules: rules.DefaultConfig(), ModelAlerts: true, ModelThreshold: 0, HostModel: hm}, js, tree,
			NewMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(io.Discard, nil)))
	}
	watch := func(st *Stage, errs *atomic.Int32) chan struct{} {
		initial := make(chan struct{})
		go func() {
			_ = modelstore.Watch(ctx, obs, func(m modelstore.Model) {
				if err := st.ApplyModel(m); err != nil {
					errs.Add(1)
				}
			}, func(string, error) { errs.Add(1) }, initial)
		}()
		return initial
	}
	st := newStage()
	var errs atomic.Int32
	select {
	case <-watch(st, &errs):
	case <-time.After(10 * time.Second):
		t.Fatal("no initial marker from an empty bucket")
	}
	models := func(st *Stage) [3]string { f, q, h := st.Models(); return [3]string{f, q, h} }
	if got := models(st); got != [3]string{"flow-id3", "", hostmodel.ModelName} {
		t.Fatalf("models at start %v", got)
	}

	if _, err := modelstore.Put(ctx, obs, modelstore.KindFlow, renamed(t, modelstore.KindFlow, "flow-v2")); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return models(st)[0] == "flow-v2" }, "flow model not reloaded")
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	alerts := st.process("s1", []*pb.Flow{{Proto: 6, OrigAddr: []byte{10, 0, 0, 1}, OrigPort: 40000, RespAddr: []byte{10, 0, 0, 2},
		RespPort: 80, StartNs: at, EndNs: at, OrigPkts: 1, OrigTcpFlags: 0x02}}, "netwatch.flows.s1.0.0")
	if len(alerts) != 1 || alerts[0].GetRule() != "flow-v2" {
		t.Fatalf("alerts after the reload: %v", alerts)
	}

	if _, err := modelstore.Put(ctx, obs, modelstore.KindFlow, []byte("not a model")); err == nil {
		t.Fatal("Put stored a file that does not parse")
	}
	if _, err := obs.PutBytes(ctx, modelstore.KindFlow, []byte("not a model")); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return errs.Load() == 1 }, "corrupt version not reported")
	if got := models(st)[0]; got != "flow-v2" {
		t.Fatalf("flow model after a corrupt version: %s", got)
	}
	if _, err := modelstore.Put(ctx, obs, modelstore.KindFlow, renamed(t, modelstore.KindFlow, "flow-v3")); err != nil {
		t.Fatal(err)
	}
	for kind, name := range map[string]string{modelstore.KindQName: "qname-v2", modelstore.KindHost: "host-v2"} {
		if _, err := modelstore.Put(ctx, obs, kind, renamed(t, kind, name)); err != nil {
			t.Fatal(err)
		}
	}
	want := [3]string{"flow-v3", "qname-v2", "host-v2"}
	testkit.Eventually(t, 10*time.Second, func() bool { return models(st) == want }, "models not reloaded")

	hm5 := *hm
	hm5.Window = "5m"
	if err := st.ApplyModel(modelstore.Model{Kind: modelstore.KindHost, Host: &hm5}); err == nil {
		t.Error("a host model of 5m windows applied to 1m windows")
	}
	off := New(Config{Rules: rules.DefaultConfig()}, js, tree, NewMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := off.ApplyModel(modelstore.Model{Kind: modelstore.KindHost, Host: hm}); err != ErrHostModelOff {
		t.Errorf("host model applied with the host model off: %v", err)
	}

	st2 := newStage()
	var errs2 atomic.Int32
	select {
	case <-watch(st2, &errs2):
	case <-time.After(10 * time.Second):
		t.Fatal("no initial marker")
	}
	if got := models(st2); got != want || errs2.Load() != 0 {
		t.Fatalf("a starting detector has %v (errors %d), want the newest %v", got, errs2.Load(), want)
	}
}
