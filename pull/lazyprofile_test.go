package pull

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kura-oci/kura/internal/testkit/teststore"
)

func TestProfileRepo(t *testing.T) {
	for _, c := range []struct{ source, name, want string }{
		{"localhost:5000/bench/kura@sha256:0123", "c0", "localhost:5000/bench/kura"},
		{"", "localhost:5000/app:v1", "localhost:5000/app"},
		{"", "app", "app"},
		{"", "app@sha256:0123", "app"},
	} {
		if got := profileRepo(c.source, c.name); got != c.want {
			t.Errorf("profileRepo(%q, %q) = %q, want %q", c.source, c.name, got, c.want)
		}
	}
}

func TestProfileSaveLoad(t *testing.T) {
	s := teststore.Open(t)
	paths := []string{"usr/sbin/apache2", "etc/ld.so.cache", "usr/lib/x86_64-linux-gnu/libc.so.6"}
	if err := saveProfile(s, "reg/app", paths); err != nil {
		t.Fatal(err)
	}
	got := loadProfile(s, "reg/app", slog.New(slog.DiscardHandler))
	if fmt.Sprint(got) != fmt.Sprint(paths) {
		t.Fatalf("loaded %q, want %q", got, paths)
	}
	if got := loadProfile(s, "reg/other", slog.New(slog.DiscardHandler)); got != nil {
		t.Fatalf("another repository's profile: %q, want none", got)
	}
}

// Hostile or broken profile files are ignored with a warning: never an error, never a path
// outside the layer's own.
func TestProfileHostileIgnored(t *testing.T) {
	const repo = "reg/app"
	valid := func(p startupProfile) []byte { b, _ := json.Marshal(p); return b }
	many := make([]string, maxProfilePaths+1)
	for i := range many {
		many[i] = fmt.Sprintf("f%d", i)
	}
	cases := map[string][]byte{
		"not JSON":         []byte("\x00\xff{garbage"),
		"other version":    valid(startupProfile{Version: 2, Repository: repo, Paths: []string{"a"}}),
		"other repository": valid(startupProfile{Version: 1, Repository: "evil/x", Paths: []string{"a"}}),
		"dot-dot path":     valid(startupProfile{Version: 1, Repository: repo, Paths: []string{"../../etc/shadow"}}),
		"absolute path":    valid(startupProfile{Version: 1, Repository: repo, Paths: []string{"/etc/shadow"}}),
		"NUL in path":      valid(startupProfile{Version: 1, Repository: repo, Paths: []string{"a\x00b"}}),
		"too many paths":   valid(startupProfile{Version: 1, Repository: repo, Paths: many}),
		"too large":        append([]byte(`{"version":1,"repository":"reg/app","paths":["`), bytes.Repeat([]byte("a"), maxProfileBytes)...),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			s := teststore.Open(t)
			p := profilePath(s, repo)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			var logBuf bytes.Buffer
			got := loadProfile(s, repo, slog.New(slog.NewTextHandler(&logBuf, nil)))
			if got != nil {
				t.Fatalf("a %s profile was used: %d paths", name, len(got))
			}
			if !strings.Contains(logBuf.String(), "start-up profile ignored") {
				t.Fatalf("no warning for a %s profile: %q", name, logBuf.String())
			}
		})
	}
}

func TestProfileRecorderMerges(t *testing.T) {
	var r profileRecorder
	for _, p := range []string{"./usr/bin/b", "usr/bin/a", "usr/bin/b", "/etc/c"} {
		r.add(p)
	}
	merged, added := r.stop([]string{"usr/bin/a", "old/x"})
	if want := "[usr/bin/a old/x usr/bin/b etc/c]"; fmt.Sprint(merged) != want || added != 2 {
		t.Fatalf("merged %v (%d added), want %s (2 added)", merged, added, want)
	}
	r.add("late/file")
	if merged, added := r.stop(nil); added != 3 || len(merged) != 3 {
		t.Fatalf("a path recorded after stop was kept: %v", merged)
	}
}
