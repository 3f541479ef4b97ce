// Package modelstore keeps the detector's model files in a JetStream object
// store bucket (issue 5: "models are stored in a JetStream object store
// bucket as well; detectors load the newest at start and when it changes,
// without a restart"). It sits beside the FLOWS consumer: `detector push`
// puts a model file, every detector watches the bucket and hands each new
// version, parsed and checked, to the stage.
//
// One object per model kind, named after the kind: "flow" (the golearn ID3
// flow classifier, model.Load's format), "qname" (the DNS query-name
// classifier, qname.Load's) and "host" (the host isolation forest,
// hostmodel.Parse's). A put replaces the object, so the bucket always holds
// the newest of each kind; other names are ignored.
package modelstore

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/nats-io/nats.go/jetstream"

	"netwatch/detector/internal/hostmodel"
	"netwatch/detector/internal/model"
	"netwatch/detector/internal/qname"
	"netwatch/schema"
)

// DefaultBucket is the object store bucket of the -models.bucket flag (its
// stream is OBJ_MODELS).
const DefaultBucket = schema.ModelsBucket

// Object names, one per model kind.
const (
	KindFlow  = "flow"
	KindQName = "qname"
	KindHost  = "host"
)

// Kinds are the object names the detector loads.
var Kinds = []string{KindFlow, KindQName, KindHost}

// Model is one parsed model of the bucket: Kind says which of Flow, QName
// and Host is set. Digest is the object's SHA-256 digest as the store
// reports it ("SHA-256=<base64url>"), so logs name the exact version.
type Model struct {
	Kind   string
	Digest string
	Flow   *model.Tree
	QName  *qname.Model
	Host   *hostmodel.Forest
}

// Name is the parsed model's own name (the flow model's rule name, the
// query-name model's name, the host model's name).
func (m Model) Name() string {
	switch {
	case m.Flow != nil:
		return m.Flow.Name()
	case m.QName != nil:
		return m.QName.Name
	case m.Host != nil:
		return m.Host.Name
	}
	return ""
}

// ErrKind is returned for an object name that is not one of Kinds.
var ErrKind = errors.New("unknown model kind")

// Parse checks and parses data as a model of kind: the loaders of the
// model files (model.Load, qname.Load, hostmodel.Parse) with their errors
// (another classifier, another feature set, a corrupt tree, a host model
// with no trees or a NaN threshold). The golearn files are read through a
// temporary file, golearn's format being a tar archive read by path.
func Parse(kind string, data []byte) (Model, error) {
	m := Model{Kind: kind}
	switch kind {
	case KindHost:
		f, err := hostmodel.Parse(data)
		if err != nil {
			return m, err
		}
		m.Host = f
		return m, nil
	case KindFlow, KindQName:
	default:
		return m, fmt.Errorf("%w %q: want %v", ErrKind, kind, Kinds)
	}
	tmp, err := os.CreateTemp("", "netwatch-"+kind+"-*.model")
	if err != nil {
		return m, fmt.Errorf("parse %s model: %w", kind, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return m, fmt.Errorf("parse %s model: %w", kind, err)
	}
	if kind == KindFlow {
		m.Flow, err = model.Load(tmp.Name())
	} else {
		m.QName, err = qname.Load(tmp.Name())
	}
	return m, err
}

// Open returns the bucket, created (file storage, replicas) when missing.
func Open(ctx context.Context, js jetstream.JetStream, bucket string, replicas int) (jetstream.ObjectStore, error) {
	obs, err := js.ObjectStore(ctx, bucket)
	if err == nil {
		return obs, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("object store %s: %w", bucket, err)
	}
	cfg := schema.ModelsConfig(replicas)
	cfg.Bucket = bucket
	obs, err = js.CreateObjectStore(ctx, cfg)
	if errors.Is(err, jetstream.ErrBucketExists) {
		return js.ObjectStore(ctx, bucket)
	}
	if err != nil {
		return nil, fmt.Errorf("create object store %s: %w", bucket, err)
	}
	return obs, nil
}

// Put checks that data parses as a model of kind and stores it as the
// object named kind (replacing the previous version). A model that does not
// parse is never stored.
func Put(ctx context.Context, obs jetstream.ObjectStore, kind string, data []byte) (*jetstream.ObjectInfo, error) {
	if _, err := Parse(kind, data); err != nil {
		return nil, err
	}
	info, err := obs.PutBytes(ctx, kind, data)
	if err != nil {
		return nil, fmt.Errorf("put %s model: %w", kind, err)
	}
	return info, nil
}

// Watch calls apply with every model of the bucket, first the current
// object of each kind (then initial, when not nil, is closed), then each
// new version as it is put, until ctx ends. A version that cannot be read
// or does not parse goes to onErr (kind, error) and is skipped: the stage
// keeps the model it has. Deletions and unknown names are ignored. The
// error is a failure to start the watch.
func Watch(ctx context.Context, obs jetstream.ObjectStore, apply func(Model), onErr func(string, error), initial chan<- struct{}) error {
	w, err := obs.Watch(ctx)
	if err != nil {
		return fmt.Errorf("watch models: %w", err)
	}
	defer w.Stop()
	known := map[string]bool{}
	for _, k := range Kinds {
		known[k] = true
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case info, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if info == nil { // end of the current objects
				if initial != nil {
					close(initial)
					initial = nil
				}
				continue
			}
			if info.Deleted || !known[info.Name] {
				continue
			}
			data, err := obs.GetBytes(ctx, info.Name)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				onErr(info.Name, fmt.Errorf("get %s model: %w", info.Name, err))
				continue
			}
			m, err := Parse(info.Name, data)
			if err != nil {
				onErr(info.Name, err)
				continue
			}
			m.Digest = info.Digest
			apply(m)
		}
	}
}

// Current returns the bucket's current model of each kind that has one,
// parsed (for a one-shot command such as `detector rescore`). A kind with
// no object is left out; one that does not read or parse is an error.
func Current(ctx context.Context, obs jetstream.ObjectStore) ([]Model, error) {
	var out []Model
	for _, k := range Kinds {
		info, err := obs.GetInfo(ctx, k)
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s model info: %w", k, err)
		}
		data, err := obs.GetBytes(ctx, k)
		if err != nil {
			return nil, fmt.Errorf("get %s model: %w", k, err)
		}
		m, err := Parse(k, data)
		if err != nil {
			return nil, err
		}
		m.Digest = info.Digest
		out = append(out, m)
	}
	return out, nil
}
