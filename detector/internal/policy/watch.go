package policy

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watch calls load (which reads and applies path) whenever the file
// changes (fsnotify events on its directory for its name, debounced by
// 100 ms) or a value arrives on trigger (SIGHUP), until ctx ends. load
// returns an error for a file it rejected; Watch passes it to onError and
// goes on watching (the caller keeps its previous policy). Errors: the
// directory cannot be watched.
func Watch(ctx context.Context, path string, trigger <-chan struct{}, load func() error, onError func(error)) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch config: %w", err)
	}
	defer w.Close()
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("watch config: %w", err)
	}
	if err := w.Add(filepath.Dir(abs)); err != nil {
		return fmt.Errorf("watch config directory: %w", err)
	}
	var debounce <-chan time.Time
	reload := func() {
		if err := load(); err != nil {
			onError(err)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if filepath.Clean(ev.Name) == abs && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename) != 0 {
				debounce = time.After(100 * time.Millisecond)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			onError(fmt.Errorf("watch config: %w", err))
		case <-debounce:
			debounce = nil
			reload()
		case <-trigger:
			reload()
		}
	}
}
