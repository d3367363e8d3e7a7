package reliability

import (
	"encoding/json"
	"io/fs"
	"path/filepath"
	"testing"
)

// totalsRight checks that kura df's object figures (the store's maintained totals, or a walk when
// they are unknown) equal a walk of objects/ done here, and, with known, that fsck found the
// totals known and compared them (no totalsNote): after a gc, or placements that all finished.
func totalsRight(t testing.TB, root string, known bool) {
	t.Helper()
	var df struct { // docs/json.md, kura df
		Objects     int64 `json:"objects"`
		ObjectBytes int64 `json:"objectBytes"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "df", "--root", root, "--json")), &df); err != nil {
		t.Fatal(err)
	}
	var n, size int64
	err := filepath.WalkDir(filepath.Join(root, "objects"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n, size = n+1, size+fi.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if df.Objects != n || df.ObjectBytes != size {
		t.Fatalf("df: %d objects, %d bytes; the store holds %d, %d bytes", df.Objects, df.ObjectBytes, n, size)
	}
	var fsck struct {
		Clean      bool     `json:"clean"`
		Problems   []string `json:"problems"`
		TotalsNote string   `json:"totalsNote"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "fsck", "--root", root, "--json")), &fsck); err != nil {
		t.Fatal(err)
	}
	if !fsck.Clean || (known && fsck.TotalsNote != "") {
		t.Fatalf("fsck: clean %v, problems %v, totals note %q", fsck.Clean, fsck.Problems, fsck.TotalsNote)
	}
}
