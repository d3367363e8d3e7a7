package main

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

// corpusFormat names the generator; bump it when generated content changes so
// cached layouts are rebuilt.
const corpusFormat = "kura-bench-corpus-3"

// Every time stamp the harness controls is derived from this instant, so the
// layers are bit-identical from run to run given the same base tree.
var epoch = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)

// appShape sizes the generated application.
type appShape struct {
	Pages, Images, Modules, MediaPerVersion, MediaSize int
}

var (
	fullShape  = appShape{Pages: 300, Images: 60, Modules: 100, MediaPerVersion: 3, MediaSize: 1 << 20}
	quickShape = appShape{Pages: 60, Images: 15, Modules: 30, MediaPerVersion: 1, MediaSize: 1 << 20}
)

// Version is one image of the corpus and what is known about its content.
type Version struct {
	Name        string        `json:"name"`
	Layout      string        `json:"layout"`
	LayerDigest digest.Digest `json:"layerDigest"` // uncompressed tar = DiffID
	LayerSize   int64         `json:"layerSize"`
	Files       int           `json:"files"`
	// Content new in this version (not in any earlier one), by file digest.
	NewFiles int   `json:"newFiles"`
	NewBytes int64 `json:"newBytes"`
	// FloorBytes is the zstd level-10 size of NewFiles' contents, each file
	// compressed alone: what a perfect file-level puller must download.
	FloorBytes int64 `json:"floorBytes"`
	// UniqueBytes is the size of all distinct file contents in versions 0..this:
	// the disk a perfect content-addressed store needs for the file data.
	UniqueBytes int64 `json:"uniqueBytes"`
	// ReadSetBytes is the size of the regular files under the read set.
	ReadSetBytes int64  `json:"readSetBytes"`
	Format       string `json:"format"`
}

// Corpus is the ordered list of versions.
type Corpus struct {
	Dir      string
	Kind     string // "full" or "quick"
	Stamp    string // generator and shape; equal stamps mean equal layers
	Versions []*Version
	// ReadSets are what the page-cache readers read: the directories of the
	// -readset, then the files common to all versions (analyseReadSets).
	ReadSets []ReadSet
}

// commonSet is the read set of files identical in all versions, or nil when
// it could not be worked out.
func (c *Corpus) commonSet() *ReadSet {
	for i := range c.ReadSets {
		if c.ReadSets[i].Name == commonSetName && len(c.ReadSets[i].Files) > 0 {
			return &c.ReadSets[i]
		}
	}
	return nil
}

func (c *Corpus) summaries() []Version {
	out := make([]Version, len(c.Versions))
	for i, v := range c.Versions {
		out[i] = *v
	}
	return out
}

// buildCorpus writes one OCI layout per version with a single uncompressed
// layer holding the whole tree, or reuses the layouts from an earlier run.
func buildCorpus(ctx context.Context, cfg config, base string) (*Corpus, error) {
	shape := fullShape
	kind := "full"
	if cfg.quick {
		shape, kind = quickShape, "quick"
	}
	stamp := fmt.Sprintf("%s %+v readset=%v", corpusFormat, shape, cfg.readSet)
	c := &Corpus{Dir: filepath.Join(cfg.work, "corpus-"+kind), Kind: kind, Stamp: stamp}
	if vs, ok := loadCorpus(c.Dir, cfg.versions, stamp); ok {
		log.Printf("corpus: %d cached versions in %s", len(vs), c.Dir)
		c.Versions = vs
		return c, nil
	}
	start := time.Now()
	if err := os.RemoveAll(c.Dir); err != nil {
		return nil, err
	}
	baseEntries, err := scanBase(base)
	if err != nil {
		return nil, err
	}
	fl := newFloor()
	defer fl.close()
	for v := 0; v < cfg.versions; v++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ver, err := buildVersion(c.Dir, v, base, baseEntries, shape, cfg.readSet, fl)
		if err != nil {
			return nil, fmt.Errorf("building version c%d: %w", v, err)
		}
		ver.Format = stamp
		b, _ := json.MarshalIndent(ver, "", "  ")
		if err := os.WriteFile(filepath.Join(c.Dir, ver.Name+".json"), b, 0o644); err != nil {
			return nil, err
		}
		log.Printf("corpus: %s layer %.1f MB, %d files, %d new (%.2f MB, floor %.2f MB zstd-10)",
			ver.Name, mb(ver.LayerSize), ver.Files, ver.NewFiles, mb(ver.NewBytes), mb(ver.FloorBytes))
		c.Versions = append(c.Versions, ver)
	}
	log.Printf("corpus: built in %.0fs", time.Since(start).Seconds())
	return c, nil
}

func loadCorpus(dir string, n int, stamp string) ([]*Version, bool) {
	var vs []*Version
	for i := 0; i < n; i++ {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("c%d.json", i)))
		if err != nil {
			return nil, false
		}
		var v Version
		if json.Unmarshal(b, &v) != nil || v.Format != stamp {
			return nil, false
		}
		if _, err := os.Stat(filepath.Join(v.Layout, "index.json")); err != nil {
			return nil, false
		}
		vs = append(vs, &v)
	}
	return vs, true
}

// entry is one tar member: a header plus where its content comes from.
type entry struct {
	hdr  tar.Header
	src  string // file in the base tree, for unmodified regular files
	data []byte // generated or patched content
}

// scanBase lists the base tree in walk order. Device nodes, caches and
// package lists are left out: they are not part of an application image.
func scanBase(root string) ([]*entry, error) {
	type inode struct{ dev, ino uint64 }
	firstName := map[inode]string{}
	var out []*entry
	skip := map[string]bool{"dev": true, "proc": true, "sys": true, "run": true, "tmp": true,
		"var/cache/apt": true, "var/lib/apt/lists": true, "var/cache/debconf": true}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Mode()&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeSocket|fs.ModeNamedPipe) != 0 {
			return nil
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		normalize(h, rel, fi.ModTime())
		e := &entry{hdr: *h}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
			key := inode{uint64(st.Dev), st.Ino}
			if first, seen := firstName[key]; seen {
				e.hdr.Typeflag, e.hdr.Linkname, e.hdr.Size = tar.TypeLink, first, 0
			} else {
				firstName[key] = e.hdr.Name
			}
		}
		if e.hdr.Typeflag == tar.TypeReg {
			e.src = p
		}
		out = append(out, e)
		if d.IsDir() && skip[rel] {
			return fs.SkipDir // keep the directory itself, drop its content
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scanning base tree: %w", err)
	}
	return out, nil
}

// normalize makes a header independent of the host: no user names, no
// access/change times, whole seconds, and time stamps later than the epoch
// (written by debootstrap at build time) clamped to it.
func normalize(h *tar.Header, rel string, mtime time.Time) {
	h.Name = rel
	if h.Typeflag == tar.TypeDir {
		h.Name += "/"
	}
	h.Uname, h.Gname = "", ""
	h.AccessTime, h.ChangeTime = time.Time{}, time.Time{}
	if mtime.After(epoch) {
		mtime = epoch
	}
	h.ModTime = mtime.Truncate(time.Second)
	h.Format = tar.FormatUnknown
	h.PAXRecords = nil
}

// buildVersion writes version v's layout and computes its content figures.
func buildVersion(dir string, v int, base string, baseEntries []*entry, shape appShape, readSet []string, fl *floor) (*Version, error) {
	files, err := versionFiles(v, base, shape)
	if err != nil {
		return nil, err
	}
	entries := mergeEntries(baseEntries, files)
	ver := &Version{Name: fmt.Sprintf("c%d", v), Layout: filepath.Join(dir, fmt.Sprintf("c%d", v))}
	var prefixes []string
	for _, r := range readSet {
		prefixes = append(prefixes, strings.Trim(r, "/")+"/")
	}
	layer := func(w io.Writer) error {
		tw := tar.NewWriter(w)
		for _, e := range entries {
			data := e.data
			if e.hdr.Typeflag == tar.TypeReg && data == nil {
				var err error
				if data, err = os.ReadFile(e.src); err != nil {
					return err
				}
				if int64(len(data)) != e.hdr.Size {
					return fmt.Errorf("%s changed size while building (%d, want %d)", e.src, len(data), e.hdr.Size)
				}
			}
			if err := tw.WriteHeader(&e.hdr); err != nil {
				return fmt.Errorf("%s: %w", e.hdr.Name, err)
			}
			if e.hdr.Typeflag != tar.TypeReg {
				continue
			}
			if _, err := tw.Write(data); err != nil {
				return err
			}
			ver.Files++
			for _, p := range prefixes {
				if strings.HasPrefix(e.hdr.Name, p) {
					ver.ReadSetBytes += int64(len(data))
				}
			}
			if fl.add(data) {
				ver.NewFiles++
				ver.NewBytes += int64(len(data))
			}
		}
		return tw.Close()
	}
	ver.LayerDigest, ver.LayerSize, err = writeLayout(ver.Layout, ver.Name, layer)
	if err != nil {
		return nil, err
	}
	ver.FloorBytes = fl.wait()
	ver.UniqueBytes = fl.unique
	return ver, nil
}

// mergeEntries overlays generated files on the base list, adding parent
// directories the base lacks, and returns entries parents-first in path order.
func mergeEntries(baseEntries []*entry, files map[string]genFile) []*entry {
	byName := make(map[string]*entry, len(baseEntries)+len(files))
	for _, e := range baseEntries {
		byName[strings.TrimSuffix(e.hdr.Name, "/")] = e
	}
	for name, f := range files {
		h := tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(f.data)), Mode: f.mode, ModTime: f.mtime}
		if old, ok := byName[name]; ok {
			h.Uid, h.Gid, h.Mode = old.hdr.Uid, old.hdr.Gid, old.hdr.Mode
		}
		byName[name] = &entry{hdr: h, data: f.data}
		for d := filepath.Dir(name); d != "."; d = filepath.Dir(d) {
			if _, ok := byName[d]; ok {
				break
			}
			byName[d] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: epoch}}
		}
	}
	out := make([]*entry, 0, len(byName))
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sortPaths(names)
	for _, n := range names {
		out = append(out, byName[n])
	}
	return out
}

// floor tracks which file contents have been seen in earlier versions and
// compresses new ones on a small worker pool to size the floor.
type floor struct {
	seen   map[digest.Digest]bool
	unique int64
	jobs   chan []byte
	wg     sync.WaitGroup
	bytes  atomic.Int64
	pend   sync.WaitGroup
}

func newFloor() *floor {
	f := &floor{seen: map[digest.Digest]bool{}, jobs: make(chan []byte, 64)}
	for range 2 {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(10)), zstd.WithEncoderConcurrency(1))
			var buf []byte
			for data := range f.jobs {
				buf = enc.EncodeAll(data, buf[:0])
				f.bytes.Add(int64(len(buf)))
				f.pend.Done()
			}
		}()
	}
	return f
}

// add reports whether data is new content; empty files cost nothing.
func (f *floor) add(data []byte) bool {
	if len(data) == 0 {
		return false
	}
	d := digest.FromBytes(data)
	if f.seen[d] {
		return false
	}
	f.seen[d] = true
	f.unique += int64(len(data))
	f.pend.Add(1)
	f.jobs <- data
	return true
}

// wait returns the compressed bytes of the content added since the last wait.
func (f *floor) wait() int64 {
	f.pend.Wait()
	return f.bytes.Swap(0)
}

func (f *floor) close() { close(f.jobs); f.wg.Wait() }

// sortPaths orders slash paths component by component, so a directory comes
// right before its own content (plain string order would put "a/b-c" between
// "a/b" and "a/b/c").
func sortPaths(p []string) { slices.SortFunc(p, comparePaths) }

func comparePaths(a, b string) int {
	for {
		ac, arest, aMore := strings.Cut(a, "/")
		bc, brest, bMore := strings.Cut(b, "/")
		if c := strings.Compare(ac, bc); c != 0 {
			return c
		}
		switch {
		case !aMore && !bMore:
			return 0
		case !aMore:
			return -1 // a is b's ancestor
		case !bMore:
			return 1
		}
		a, b = arest, brest
	}
}

func mb(n int64) float64 { return float64(n) / 1e6 }

// writeLayout writes an OCI image layout with one uncompressed layer (a
// corpus version: its command is /bin/sh).
func writeLayout(dir, ref string, layer func(io.Writer) error) (digest.Digest, int64, error) {
	return writeLayoutCmd(dir, ref, []string{"/bin/sh"}, layer)
}

// writeLayoutCmd is writeLayout for an image whose command is cmd.
func writeLayoutCmd(dir, ref string, cmd []string, layer func(io.Writer) error) (digest.Digest, int64, error) {
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return "", 0, err
	}
	tmp, err := os.CreateTemp(blobs, ".layer-*")
	if err != nil {
		return "", 0, err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(tmp, h)}
	if err := layer(cw); err != nil {
		tmp.Close()
		return "", 0, fmt.Errorf("writing layer: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", 0, err
	}
	layerDigest := digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(h.Sum(nil)))
	if err := os.Rename(tmp.Name(), filepath.Join(blobs, layerDigest.Encoded())); err != nil {
		return "", 0, err
	}
	if err := writeImageMetadata(dir, ref, cmd, layerDigest, cw.n); err != nil {
		return "", 0, err
	}
	return layerDigest, cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
