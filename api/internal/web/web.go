// Package web serves the dashboard: the React + ECharts single-page app that
// Vite builds from api/web into dist (api/web/build.sh), embedded in the
// binary. Without a build, / serves a page saying so.
package web

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

//go:embed all:dist
var dist embed.FS

//go:embed fallback.html
var fallback []byte

// Built reports whether the embedded dist holds a dashboard build.
func Built() bool {
	_, err := fs.Stat(dist, "dist/index.html")
	return err == nil
}

// Handler serves the embedded dashboard (see FSHandler).
func Handler() http.Handler {
	sub, _ := fs.Sub(dist, "dist")
	return FSHandler(sub)
}

// FSHandler serves a dashboard build held in sub: /, and the build's files
// (assets are immutable, hashed names); any other path that is not a file
// gets index.html, so client-side routes work. Without index.html it serves
// the "not built" page.
func FSHandler(sub fs.FS) http.Handler {
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := strings.TrimPrefix(path.Clean(r.URL.Path), "/")
		if p != "" && p != "index.html" && !strings.HasPrefix(path.Base(p), ".") {
			if st, err := fs.Stat(sub, p); err == nil && !st.IsDir() {
				if strings.HasPrefix(p, "assets/") {
					w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
				}
				files.ServeHTTP(w, r)
				return
			}
			if strings.HasPrefix(p, "assets/") {
				http.NotFound(w, r)
				return
			}
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		if b, err := fs.ReadFile(sub, "index.html"); err == nil {
			w.Write(b)
			return
		}
		w.Write(fallback)
	})
}
