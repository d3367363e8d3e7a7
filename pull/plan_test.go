package pull

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
)

// testdataDir finds ../shared/testdata from the module root, or testdata/ inside it.
func testdataDir(t testing.TB) string {
	t.Helper()
	dir, _ := os.Getwd()
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Skip("module root not found")
		}
		dir = parent
	}
	for _, p := range []string{filepath.Join(dir, "..", "shared", "testdata"), filepath.Join(dir, "testdata")} {
		if _, err := os.Stat(filepath.Join(p, "zstd-chunked")); err == nil {
			return p
		}
	}
	t.Skip("shared testdata not found")
	return ""
}

func loadTOC(t *testing.T, name string) *chunked.TOC {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdataDir(t), "zstd-chunked", name+".toc.json"))
	if err != nil {
		t.Fatal(err)
	}
	var toc chunked.TOC
	if err := json.Unmarshal(b, &toc); err != nil {
		t.Fatal(err)
	}
	return &toc
}

type fakeHave struct {
	objects map[digest.Digest]bool
	chunks  map[digest.Digest]ChunkLocation
}

func (h fakeHave) HasObject(d digest.Digest) bool { return h.objects[d] }
func (h fakeHave) FindChunk(d digest.Digest, _ int64) (ChunkLocation, bool) {
	l, ok := h.chunks[d]
	return l, ok
}

// compressedFileBytes sums the compressed frames of every non-empty regular file.
func compressedFileBytes(toc *chunked.TOC) int64 {
	var n int64
	for _, e := range toc.Entries {
		if e.Type == chunked.TypeReg && e.Size > 0 {
			n += e.EndOffset - e.Offset
		}
	}
	return n
}

func TestPlanEmptyStoreFetchesEachContentOnce(t *testing.T) {
	toc := loadTOC(t, "mixed")
	p, err := MakePlan(toc, 1<<30, fakeHave{})
	if err != nil {
		t.Fatal(err)
	}
	if p.SkippedBytes+p.FetchBytes != compressedFileBytes(toc) {
		t.Fatalf("skipped %d + fetch %d != file bytes %d", p.SkippedBytes, p.FetchBytes, compressedFileBytes(toc))
	}
	seen := map[digest.Digest]bool{}
	for _, f := range p.Files {
		if seen[f.Digest] {
			t.Fatalf("content %s planned twice", f.Digest)
		}
		seen[f.Digest] = true
		var off int64
		for _, pc := range f.Pieces {
			if pc.FileOffset != off {
				t.Fatalf("%s: piece at %d, want %d", f.Name, pc.FileOffset, off)
			}
			off += pc.Size
		}
		if off != f.Size {
			t.Fatalf("%s: pieces cover %d of %d", f.Name, off, f.Size)
		}
	}
	if p.ZeroChunks == 0 {
		t.Fatal("mixed has a zeros chunk; the plan found none")
	}
	if p.ReusedFiles != 0 {
		t.Fatalf("reused %d files from an empty store", p.ReusedFiles)
	}
	var remote int64
	for _, r := range p.Ranges() {
		remote += r.Length
	}
	if remote != p.FetchBytes {
		t.Fatalf("ranges cover %d, plan says fetch %d", remote, p.FetchBytes)
	}
}

func TestPlanReusesObjectsAndChunks(t *testing.T) {
	toc := loadTOC(t, "mixed")
	have := fakeHave{objects: map[digest.Digest]bool{}, chunks: map[digest.Digest]ChunkLocation{}}
	for _, e := range toc.Entries {
		switch {
		case e.Type == chunked.TypeReg && e.Name == "usr/bin/big-text":
			// the file is not present, but all its chunks are, elsewhere
		case e.Type == chunked.TypeReg && e.Digest != "":
			have.objects[digest.Digest(e.Digest)] = true
		}
		if e.Name == "usr/bin/big-text" {
			have.chunks[digest.Digest(e.ChunkDigest)] = ChunkLocation{Object: digest.Digest(e.Digest), Offset: 7}
		}
	}
	p, err := MakePlan(toc, 1<<30, have)
	if err != nil {
		t.Fatal(err)
	}
	if p.FetchBytes != 0 || len(p.Ranges()) != 0 {
		t.Fatalf("fetch %d bytes in %d ranges, want nothing", p.FetchBytes, len(p.Ranges()))
	}
	if len(p.Files) != 1 || p.Files[0].Name != "usr/bin/big-text" {
		t.Fatalf("want one file assembled from local chunks, got %+v", p.Files)
	}
	for _, pc := range p.Files[0].Pieces {
		if pc.Kind != PieceLocal || pc.Local.Offset != 7 {
			t.Fatalf("piece %+v not local", pc)
		}
	}
	if p.SkippedBytes != compressedFileBytes(toc) {
		t.Fatalf("skipped %d, want all %d", p.SkippedBytes, compressedFileBytes(toc))
	}
}

func TestPlanRejectsHostileTOCs(t *testing.T) {
	base := loadTOC(t, "mixed")
	firstChunk := -1
	for i, e := range base.Entries {
		if e.Type == chunked.TypeChunk {
			firstChunk = i
			break
		}
	}
	cases := map[string]func(toc *chunked.TOC){
		"offset past blob": func(toc *chunked.TOC) {
			for i := range toc.Entries {
				if toc.Entries[i].Size > 0 {
					toc.Entries[i].EndOffset = 1 << 40
					return
				}
			}
		},
		"bad digest": func(toc *chunked.TOC) {
			for i := range toc.Entries {
				if toc.Entries[i].Size > 0 {
					toc.Entries[i].Digest = "md5:xyz"
					return
				}
			}
		},
		"chunk gap":                 func(toc *chunked.TOC) { toc.Entries[firstChunk].ChunkOffset++ },
		"chunk too big":             func(toc *chunked.TOC) { toc.Entries[firstChunk].ChunkSize += 10 },
		"chunk frames outside file": func(toc *chunked.TOC) { toc.Entries[firstChunk].Offset = 0 },
		"orphan chunk": func(toc *chunked.TOC) {
			toc.Entries = append([]chunked.Entry{toc.Entries[firstChunk]}, toc.Entries...)
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			toc := &chunked.TOC{Version: 1, Entries: append([]chunked.Entry(nil), base.Entries...)}
			mutate(toc)
			if _, err := MakePlan(toc, 1<<30, fakeHave{}); !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
		})
	}
}
