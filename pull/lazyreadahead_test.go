package pull

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/source"
)

// raLayer makes the files of a layer laid out one after another in the blob, each of size
// bytes compressed.
func raLayer(names []string, size int64) []chunked.File {
	var files []chunked.File
	for i, n := range names {
		e := &layerfs.Entry{Name: n, Digest: digest.FromString(n)}
		files = append(files, chunked.File{Entry: e, Range: source.Range{Offset: int64(i) * size, Length: size}})
	}
	return files
}

func raNames(fs []chunked.File) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Entry.Name)
	}
	return out
}

// TestReadaheadWindows: a fill fetches the files after it in its own directory (never those of
// a subdirectory or past the directory, never one stored or fetched ahead already) within a
// window that grows fourfold while fills go forward through the directory, some files skipped,
// and starts small again when they jump far.
func TestReadaheadWindows(t *testing.T) {
	var names []string
	for i := range 100 {
		names = append(names, fmt.Sprintf("lib/m%02d", i))
		if i == 2 {
			names = append(names, "lib/sub/x", "lib/sub/y")
		}
	}
	names = append(names, "share/a")
	files := raLayer(names, 8<<10) // four files make a first window
	r := newReadahead(files)
	stored := map[digest.Digest]bool{digest.FromString("lib/m03"): true}
	have := func(d digest.Digest) bool { return stored[d] }
	byName := func(n string) chunked.File { return files[slices.Index(names, n)] }

	got := raNames(r.pick(byName("lib/m00"), have))
	if want := []string{"lib/m01", "lib/m02", "lib/m04", "lib/m05"}; !slices.Equal(got, want) {
		t.Fatalf("first window: %v, want %v (subdirectory and stored file skipped)", got, want)
	}
	got = raNames(r.pick(byName("lib/m06"), have)) // right after it: four times larger
	if len(got) != 16 || got[0] != "lib/m07" {
		t.Fatalf("sequential window: %v, want the 16 files from lib/m07", got)
	}
	got = raNames(r.pick(byName("lib/m30"), have)) // 7 files skipped: still going through
	if len(got) != 64 || got[0] != "lib/m31" {
		t.Fatalf("window after a skip: %d files (%v), want the 64 from lib/m31", len(got), got)
	}
	r = newReadahead(files)
	r.pick(byName("lib/m00"), have)
	got = raNames(r.pick(byName("lib/m90"), have)) // a jump far past the window: small again
	if len(got) != 4 || got[0] != "lib/m91" {
		t.Fatalf("window after a jump: %v, want 4 files from lib/m91", got)
	}
	got = raNames(r.pick(byName("lib/m96"), have))
	if !slices.Equal(got, []string{"lib/m97", "lib/m98", "lib/m99"}) {
		t.Fatalf("window at the directory's end: %v, want up to lib/m99 and not share/a", got)
	}
	if got = raNames(r.pick(byName("lib/m90"), have)); slices.Contains(got, "lib/m91") {
		t.Fatalf("a file fetched ahead once was picked again: %v", got)
	}
	r.release([]chunked.File{byName("lib/m91")}) // its fetch failed
	if got = raNames(r.pick(byName("lib/m90"), have)); !slices.Contains(got, "lib/m91") {
		t.Fatalf("a file whose fetch ahead failed was not picked again: %v", got)
	}
	if got := r.pick(chunked.File{Entry: &layerfs.Entry{Name: "other", Digest: digest.FromString("?")}}, have); got != nil {
		t.Fatalf("a file not in the layer: %v", got)
	}
}

// TestReadaheadConfigTree: the first fill of a file in etc/<name>/ also fetches the rest of that
// tree, subdirectories included, never another tree or etc/'s own files; later fills in the tree
// fetch only their directory's window.
func TestReadaheadConfigTree(t *testing.T) {
	names := []string{"etc/aaa/x.conf", "etc/app/app.conf", "etc/app/mods/a.load", "etc/app/mods/b.load",
		"etc/app/sites/s.conf", "etc/top.conf", "usr/bin/prog"}
	files := raLayer(names, 1<<10)
	r := newReadahead(files)
	have := func(digest.Digest) bool { return false }
	byName := func(n string) chunked.File { return files[slices.Index(names, n)] }
	got := raNames(r.pick(byName("etc/app/mods/a.load"), have))
	slices.Sort(got)
	if want := []string{"etc/app/app.conf", "etc/app/mods/b.load", "etc/app/sites/s.conf"}; !slices.Equal(got, want) {
		t.Fatalf("first fill in etc/app/: %v, want %v", got, want)
	}
	if got := r.pick(byName("etc/app/app.conf"), have); len(got) != 0 {
		t.Fatalf("a later fill in the tree fetched %v again", raNames(got))
	}
	if got := raNames(r.pick(byName("etc/top.conf"), have)); len(got) != 0 {
		t.Fatalf("a fill of etc/'s own file fetched %v", got)
	}
	// Names as a layer may spell them ("./etc/..."): the same tree, the same neighbours.
	dotted := []string{"./etc/app/app.conf", "./etc/app/b.conf", "./etc/app/mods/c.load", "./usr/bin/prog"}
	files = raLayer(dotted, 1<<10)
	r = newReadahead(files)
	got = raNames(r.pick(files[0], have))
	slices.Sort(got)
	if want := []string{"./etc/app/b.conf", "./etc/app/mods/c.load"}; !slices.Equal(got, want) {
		t.Fatalf("first fill in ./etc/app/: %v, want %v", got, want)
	}
	for _, n := range []string{"etc/top.conf", "usr/etc/app/x", "etc/", "etc/../x/y", "/etc/app/x"} {
		if tree := configTree(n); (n == "/etc/app/x") != (tree == "etc/app/") {
			t.Errorf("configTree(%q) = %q", n, tree)
		}
	}
}

// TestLazyReadaheadServesNeighbours: the on-demand fill of one small file stores the files after
// it in its directory too, so opening the next one costs no request to the registry, and every
// byte read is right.
func TestLazyReadaheadServesNeighbours(t *testing.T) {
	e, p := newLazyEnv(t)
	hold := make(chan struct{})
	done := e.serve(t, context.Background(), p, WithBackgroundHeld(hold))
	e.readWhole(t, "usr/lib/small-10", "on demand")
	requests := len(e.reg.Proxy.BlobRequests())
	// The first fill may still be committing (the reader goes first): the next file is then
	// served from its batch, and either way fetched no second time.
	e.readWhole(t, "usr/lib/small-11", "after read-ahead")
	if n := len(e.reg.Proxy.BlobRequests()) - requests; n != 0 {
		t.Fatalf("reading a file fetched ahead made %d blob requests: it was not fetched with the first", n)
	}
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.checkComplete(t, p)
}
