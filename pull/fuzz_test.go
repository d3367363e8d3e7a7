package pull

import (
	"archive/tar"
	"bytes"
	"fmt"
	"math/rand"
	"strings"
	"testing"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
)

// fuzzTree turns fuzzer bytes into a layer tree: each step reads an opcode and a few argument
// bytes and adds a file, a directory, a symlink, a hardlink, a copy of an earlier file's content
// (dedup), a file that shares a prefix with an earlier one (chunk reuse), or an empty or one-byte setuid file.
// Names come from a small alphabet so that repeats and nesting happen often. Sizes reach
// 128 KiB so that large files are cut into several chunks, and stay small enough that one input
// runs well within the fuzzing engine's 10-second hang limit.
func fuzzTree(data []byte) []treeFile {
	next := func() byte {
		if len(data) == 0 {
			return 0
		}
		b := data[0]
		data = data[1:]
		return b
	}
	names := []string{"a", "b", "c", "d/e", "d/f", "g/h/i", "zz", ".hidden", "sp ace", "ünï"}
	// The writer refuses duplicate paths (as the reference does), so names are made unique:
	// a fuzzer that wants repeats would only find that refusal.
	used := map[string]bool{}
	name := func() string {
		n := names[int(next())%len(names)]
		if k := next() % 4; k != 0 {
			n = fmt.Sprintf("%s%d", n, k)
		}
		for i := 2; used[n]; i++ {
			n = fmt.Sprintf("%s-%d", strings.TrimSuffix(n, fmt.Sprint("-", i-1)), i)
		}
		used[n] = true
		return n
	}
	target := func() string { return names[int(next())%len(names)] }
	content := func() []byte {
		kind, size := next()%4, (int(next())<<9|int(next())<<1)%(128<<10)
		b := make([]byte, size)
		switch kind {
		case 0: // random: incompressible, one chunk per ~64 KiB
			rand.New(rand.NewSource(int64(next()))).Read(b)
		case 1: // zeros: zeros chunks, holes
		case 2: // text with a seed byte: compressible, rollsum cuts on content
			r := rand.New(rand.NewSource(int64(next())))
			for i := range b {
				b[i] = "abcdefgh \n"[r.Intn(10)]
			}
		case 3: // a single repeated byte
			c := next()
			for i := range b {
				b[i] = c
			}
		}
		return b
	}
	var fs []treeFile
	var regs []int
	for steps := 0; len(data) > 0 && steps < 24; steps++ {
		switch next() % 8 {
		case 0, 1:
			fs = append(fs, treeFile{name: name(), typ: tar.TypeReg, content: content(), mode: 0o644})
			regs = append(regs, len(fs)-1)
		case 2:
			fs = append(fs, treeFile{name: name() + "/", typ: tar.TypeDir, mode: 0o755})
		case 3:
			fs = append(fs, treeFile{name: name(), typ: tar.TypeSymlink, linkname: target(), mode: 0o777})
		case 4:
			if len(regs) > 0 {
				fs = append(fs, treeFile{name: name(), typ: tar.TypeLink, linkname: fs[regs[int(next())%len(regs)]].name, mode: 0o644})
			}
		case 5: // the same content under another name
			if len(regs) > 0 {
				fs = append(fs, treeFile{name: name(), typ: tar.TypeReg, content: fs[regs[int(next())%len(regs)]].content, mode: 0o600})
				regs = append(regs, len(fs)-1)
			}
		case 6: // an earlier file with its tail changed: only the last chunks differ
			if len(regs) > 0 {
				old := fs[regs[int(next())%len(regs)]].content
				c := append(append([]byte(nil), old[:len(old)*int(next())/256]...), content()...)
				fs = append(fs, treeFile{name: name(), typ: tar.TypeReg, content: c, mode: 0o755})
				regs = append(regs, len(fs)-1)
			}
		case 7: // an empty file, a file of one byte
			fs = append(fs, treeFile{name: name(), typ: tar.TypeReg, content: make([]byte, next()%2), mode: 0o4755})
			regs = append(regs, len(fs)-1)
		}
	}
	return fs
}

// FuzzPartialEqualsFull is the differential test of the puller: a layer built from fuzzer bytes,
// pulled partially (over a store that already holds a layer built from a prefix of the same
// bytes, so reuse of files and chunks happens) and pulled whole into an empty store, must give
// the same exported tar, equal to the DiffID; or both pulls must fail.
func FuzzPartialEqualsFull(f *testing.F) {
	f.Add([]byte{0, 0, 1, 2, 3, 4, 0, 1, 1, 9, 9, 7, 2, 1, 3, 1, 0, 5, 0, 6, 0, 200, 2, 9, 9, 9})
	f.Add([]byte{0, 3, 0, 2, 0, 40, 0, 5, 0, 0, 6, 0, 128, 0, 255, 255, 1, 7, 0, 7, 1})
	f.Add([]byte{1, 1, 1, 0, 255, 255, 4, 4, 0, 0, 1, 1, 1, 0, 255, 200, 6, 5, 0, 0, 50, 3, 0, 0, 2, 2, 1})
	f.Add([]byte{3, 0, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 7, 0, 0, 1, 0, 0, 3, 0, 8, 0})
	f.Add(bytes.Repeat([]byte{0, 5, 1, 2, 100, 3}, 12))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 512 {
			return
		}
		files := fuzzTree(data)
		base := fuzzTree(data[:len(data)/2])
		img, err := fuzzImage(tarOf(t, files))
		if err != nil {
			return // trees the writer refuses are not the puller's business
		}
		baseImg, err := fuzzImage(tarOf(t, base))
		if err != nil {
			return
		}
		dir := t.TempDir()
		img.writeLayout(t, dir, "x")
		baseImg.writeLayout(t, dir, "base")

		partial, full := teststore.Open(t), teststore.Open(t)
		if _, err := pullRef(t, partial, "oci:"+dir+":base", nil); err != nil {
			t.Fatalf("pulling the base: %v", err)
		}
		_, perr := pullRef(t, partial, "oci:"+dir+":x", nil)
		_, ferr := pullRef(t, full, "oci:"+dir+":x", nil, WithoutPartial())
		if (perr == nil) != (ferr == nil) {
			t.Fatalf("partial pull: %v; full pull: %v", perr, ferr)
		}
		checkFsck(t, partial)
		checkFsck(t, full)
		if perr != nil {
			return
		}
		want := img.diffIDs[0]
		if p, f := exportDigest(t, partial, want), exportDigest(t, full, want); p != want || f != want {
			t.Fatalf("partial export %s, full export %s, DiffID %s", p, f, want)
		}
	})
}

// fuzzImage is buildImage for one layer, returning the writer's refusal instead of failing.
func fuzzImage(tb []byte) (*testImage, error) {
	img, err := imagetest.Convert([][]byte{tb}, chunked.WithConcurrency(1), chunked.WithLevel(1))
	if err != nil {
		return nil, err
	}
	return fromKit(img), nil
}
