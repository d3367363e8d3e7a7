package pull

import (
	"archive/tar"
	"fmt"
	"testing"

	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
)

// manyFiles is a tree of n small files (the shape of a distribution's /usr) in which version
// changes every 50th file.
func manyFiles(n, version int) []treeFile {
	fs := []treeFile{{name: "usr/", typ: tar.TypeDir, mode: 0o755}}
	for i := range n {
		c := fmt.Sprintf("file %d of a tree of many small files\n", i)
		if i%50 == 0 {
			c += fmt.Sprintf("changed in v%d\n", version)
		}
		fs = append(fs, treeFile{name: fmt.Sprintf("usr/f%05d", i), typ: tar.TypeReg, content: []byte(c + string(make([]byte, i%3000))), mode: 0o644})
	}
	return fs
}

// benchPull times pulls of tag v1 from an in-process registry into a store that holds v0 (an
// update, with update set) or nothing (a first pull): the whole partial pipeline over HTTP, TOC,
// ranges, planning, assembly, verification and the layer's record, for a layer of many files.
// Allocations are reported per pull: memory is what an update pull is short of on small machines.
func benchPull(b *testing.B, update bool) {
	const files = 5000
	reg := registrytest.New(b)
	buildImage(b, tarOf(b, manyFiles(files, 0))).push(b, reg, "app", "v0")
	buildImage(b, tarOf(b, manyFiles(files, 1))).push(b, reg, "app", "v1")
	client := registryClient(registry.WithTLSVerify(false))
	ref := "docker://" + reg.Host + "/app:"
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		s := teststore.Open(b)
		if update {
			if _, err := pullRef(b, s, ref+"v0", client); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		rep, err := pullRef(b, s, ref+"v1", client)
		if err != nil {
			b.Fatal(err)
		}
		if rep.Layers[0].Mode != ModePartial {
			b.Fatalf("mode %s", rep.Layers[0].Mode)
		}
	}
}

func BenchmarkPullFirst(b *testing.B)  { benchPull(b, false) }
func BenchmarkPullUpdate(b *testing.B) { benchPull(b, true) }
