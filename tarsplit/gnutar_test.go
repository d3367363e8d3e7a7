package tarsplit

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kura-oci/kura/internal/testkit"
)

// gnuTar archives dir with GNU tar in the given format, deterministically ordered.
func gnuTar(t *testing.T, dir, format string) []byte {
	t.Helper()
	out, err := exec.Command("tar", "-C", dir, "--format="+format, "--sort=name", "-cf", "-", ".").Output()
	if err != nil {
		t.Fatalf("tar --format=%s: %v", format, err)
	}
	return out
}

// writeTree makes files (name → content; a trailing / makes a directory, "->target" a symlink)
// under dir, all with modification time mtime.
func writeTree(t *testing.T, dir string, files map[string]string, mtime time.Time) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.HasSuffix(name, "/"):
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case strings.HasPrefix(content, "->"):
			os.Remove(p)
			if err := os.Symlink(content[2:], p); err != nil {
				t.Fatal(err)
			}
		default:
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Directories last: creating their entries changed their times.
	for _, dirs := range []bool{false, true} {
		for name := range files {
			p := filepath.Join(dir, name)
			if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSymlink == 0 && fi.IsDir() == dirs {
				if err := os.Chtimes(p, mtime, mtime); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if err := os.Chtimes(dir, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

// Updates written by GNU tar: unchanged entries are reused, changed single-block headers are
// patched as GNU tar formats them; what cannot be predicted fails cleanly (the caller fetches).
func TestPredictGNUTar(t *testing.T) {
	if _, err := exec.LookPath("tar"); err != nil {
		testkit.Skip(t, "GNU tar not installed")
	}
	v1 := map[string]string{
		"etc/": "", "etc/hostname": "kura\n", "etc/motd": strings.Repeat("welcome ", 300),
		"usr/bin/tool": strings.Repeat("x", 5000), "usr/bin/alias": "->tool",
		"usr/share/" + strings.Repeat("long-name-", 12) + ".txt": "long\n",
	}
	for i := range 20 {
		v1[filepath.Join("usr/lib", "mod"+string(rune('a'+i))+".py")] = strings.Repeat(string(rune('a'+i)), 100*i+1)
	}
	for _, format := range []string{"gnu", "posix"} {
		t.Run(format, func(t *testing.T) {
			dir := t.TempDir()
			t1 := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
			writeTree(t, dir, v1, t1)
			l1 := convert(t, gnuTar(t, dir, format))

			// Same tree again, then an update: content (new size), a new file, a removed one.
			same := convert(t, gnuTar(t, dir, format))
			if st, ok := checkPrediction(t, same, l1); !ok {
				t.Errorf("unchanged tree not predicted exactly: %+v", st)
			}
			t2 := t1.Add(time.Hour)
			writeTree(t, dir, map[string]string{"etc/hostname": "kura-2\n", "usr/lib/new.py": "new\n"}, t2)
			if err := os.Remove(filepath.Join(dir, "usr/lib/modc.py")); err != nil {
				t.Fatal(err)
			}
			long := filepath.Join(dir, "usr/share", strings.Repeat("long-name-", 12)+".txt")
			if err := os.WriteFile(long, []byte("longer content\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(filepath.Join(dir, "etc/motd"), 0o640); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{long, filepath.Join(dir, "usr/lib"), filepath.Join(dir, "usr/share")} {
				if err := os.Chtimes(p, t2, t2); err != nil {
					t.Fatal(err)
				}
			}
			l2 := convert(t, gnuTar(t, dir, format))
			st, ok := checkPrediction(t, l2, l1)
			t.Logf("update: exact=%v %+v", ok, st)
			if !ok {
				t.Errorf("%s-format update not predicted exactly", format)
			}
		})
	}
}
