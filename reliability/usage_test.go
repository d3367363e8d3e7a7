package reliability

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync"
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

// TestTotalsFourConcurrentPulls: four pulls at once into one store, of images sharing layers
// pairwise (so the same objects race to be placed), leave df's totals equal to a walk, known;
// and again after rmi of two and a gc.
func TestTotalsFourConcurrentPulls(t *testing.T) {
	reg, imgs := drillSetup(t)
	imgs = append(imgs, pushDrillImage(t, reg, "d", genLayer(t, 2, 40), genLayer(t, 4, 40)))
	root := filepath.Join(t.TempDir(), "store")
	var wg sync.WaitGroup
	errs := make(chan string, len(imgs))
	for _, img := range imgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, err := run(t, pullArgs(root, img)...); err != nil {
				errs <- fmt.Sprintf("pull %s: %v\n%s", img.name, err, out)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	totalsRight(t, root, true)
	mustRun(t, "rmi", "--root", root, imgs[0].name, imgs[3].name)
	mustRun(t, "gc", "--root", root)
	totalsRight(t, root, true)
}
