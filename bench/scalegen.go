package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// The scaling corpus: a few bases, each released in many versions, every
// version one squashed layer of a few thousand files (so every image has a
// layer, a TOC and a composefs image of its own, the hard case for anything
// that grows with the store). Between two versions of a base about 1 % of the
// small files change and each large file gets one 8-byte patch (one chunk
// differs). Everything is derived from (seed, base, file, release), so trees
// are identical run to run, and a version is generated in well under a
// second: no base rootfs is needed.

// scaleShape is the size of one generated image.
type scaleShape struct {
	Files      int // small and medium files
	Large      int // multi-chunk files (a few MB each)
	ChangePct  int // percent of small files changed per release
	Seed       uint64
	PerDir     int
	LargeBytes int
}

func defaultScaleShape(seed uint64) scaleShape {
	return scaleShape{Files: 3000, Large: 3, ChangePct: 1, Seed: seed, PerDir: 40, LargeBytes: 2 << 20}
}

// updateRelease and above are releases derived from version 0 with a change
// set of their own (the images of the concurrency run), content no other
// version has.
const updateRelease = 1000

// scaleRand is the PRNG of (seed, kind, base, item, release).
func (sh scaleShape) rand(kind uint64, base, item, rel int) *rand.Rand {
	var b [40]byte
	binary.LittleEndian.PutUint64(b[0:], sh.Seed)
	binary.LittleEndian.PutUint64(b[8:], kind)
	binary.LittleEndian.PutUint64(b[16:], uint64(base))
	binary.LittleEndian.PutUint64(b[24:], uint64(item))
	binary.LittleEndian.PutUint64(b[32:], uint64(rel))
	h := sha256.Sum256(b[:])
	return rand.New(rand.NewPCG(binary.LittleEndian.Uint64(h[:8]), binary.LittleEndian.Uint64(h[8:16])))
}

const (
	kindSize = iota + 1
	kindChange
	kindData
	kindLarge
	kindPatch
)

// fileSize draws a size like a distribution tree's: mostly small files.
func (sh scaleShape) fileSize(base, j int) int {
	r := sh.rand(kindSize, base, j, 0)
	switch p := r.IntN(100); {
	case p < 70:
		return 200 + r.IntN(3<<10)
	case p < 97:
		return 3<<10 + r.IntN(13<<10)
	default:
		return 16<<10 + r.IntN(112<<10)
	}
}

// changed reports whether small file j of base changes in release u.
func (sh scaleShape) changed(base, j, u int) bool {
	return sh.rand(kindChange, base, j, u).IntN(100) < sh.ChangePct
}

// fileRelease is the last release <= v in which small file j changed; for a
// release derived from version 0 (v >= updateRelease) it is version 0's, or v.
func (sh scaleShape) fileRelease(base, j, v int) int {
	if v >= updateRelease {
		if sh.changed(base, j, v) {
			return v
		}
		return 0
	}
	r := 0
	for u := 1; u <= v; u++ {
		if sh.changed(base, j, u) {
			r = u
		}
	}
	return r
}

// writeScaleLayer writes version v of base as an uncompressed tar to w.
func (sh scaleShape) writeScaleLayer(w io.Writer, base, v int) error {
	tw := tar.NewWriter(w)
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX})
	}
	file := func(name string, data []byte, rel int) error {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)),
			ModTime: epoch.Add(time.Duration(rel) * time.Hour), Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	root := fmt.Sprintf("usr/lib/base%d", base)
	for _, d := range []string{"usr", "usr/lib", root} {
		if err := dir(d); err != nil {
			return err
		}
	}
	for j := 0; j < sh.Files; j++ {
		if j%sh.PerDir == 0 {
			if err := dir(fmt.Sprintf("%s/pkg%03d", root, j/sh.PerDir)); err != nil {
				return err
			}
		}
		rel := sh.fileRelease(base, j, v)
		data := randomBytes(sh.rand(kindData, base, j, rel), sh.fileSize(base, j))
		if err := file(fmt.Sprintf("%s/pkg%03d/file%04d.dat", root, j/sh.PerDir, j), data, rel); err != nil {
			return err
		}
	}
	for k := 0; k < sh.Large; k++ {
		data := randomBytes(sh.rand(kindLarge, base, k, 0), sh.LargeBytes)
		// One 8-byte patch per release at a place that depends on it: one chunk differs.
		if v > 0 {
			off := sh.rand(kindPatch, base, k, v).IntN(len(data) - 8)
			binary.LittleEndian.PutUint64(data[off:], uint64(v)*0x9e3779b97f4a7c15)
		}
		if err := file(fmt.Sprintf("%s/lib%d.so", root, k), data, v); err != nil {
			return err
		}
	}
	return tw.Close()
}

// writeScaleLayout writes version v of base as an OCI layout in dir with ref
// name ref (dir is replaced).
func (sh scaleShape) writeScaleLayout(dir, ref string, base, v int) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(blobs, "layer-")
	if err != nil {
		return err
	}
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(f, h)}
	err = sh.writeScaleLayer(cw, base, v)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	d := digest.NewDigest(digest.SHA256, h)
	if err := os.Rename(f.Name(), filepath.Join(blobs, d.Encoded())); err != nil {
		return err
	}
	return writeImageMetadata(dir, ref, []string{"/bin/sh"}, d, cw.n)
}
