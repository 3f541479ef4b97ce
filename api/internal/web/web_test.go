package web

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// sourceHash is api/web/hash.mjs in Go: SHA-256 over the dashboard's
// sources (src/ and the build's configuration), each as path NUL content
// NUL in byte order of the paths.
func sourceHash(t *testing.T, dir string) string {
	t.Helper()
	files := []string{"index.html", "package.json", "package-lock.json", "tsconfig.json", "vite.config.js"}
	err := filepath.WalkDir(filepath.Join(dir, "src"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		files = append(files, filepath.ToSlash(rel))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		h.Write([]byte(f))
		h.Write([]byte{0})
		h.Write(b)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestBundleFresh fails when the committed dashboard build (dist, embedded
// in the binary) was not built from the current sources in api/web: run
// `make web` and commit api/internal/web/dist.
func TestBundleFresh(t *testing.T) {
	if !Built() {
		t.Fatal("no dashboard build in dist: run `make web` and commit api/internal/web/dist")
	}
	stamp, err := fs.ReadFile(dist, "dist/.source-sha256")
	if err != nil {
		t.Fatalf("dist has no .source-sha256 (built by an old build.sh?): %v", err)
	}
	if got, want := strings.TrimSpace(string(stamp)), sourceHash(t, filepath.Join("..", "..", "web")); got != want {
		t.Fatalf("the committed dashboard is stale: built from sources %s, api/web is now %s; run `make web` and commit api/internal/web/dist", got, want)
	}
	// Every asset index.html names is in the build.
	index, _ := fs.ReadFile(dist, "dist/index.html")
	refs := regexp.MustCompile(`(?:src|href)="/(assets/[^"]+)"`).FindAllSubmatch(index, -1)
	if len(refs) == 0 {
		t.Fatalf("index.html names no assets:\n%s", index)
	}
	for _, m := range refs {
		if _, err := fs.Stat(dist, "dist/"+string(m[1])); err != nil {
			t.Errorf("index.html names %s, not in dist: %v", m[1], err)
		}
	}
	if !bytes.Contains(index, []byte(`id="root"`)) {
		t.Error("index.html has no root element")
	}
}
