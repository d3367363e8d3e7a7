package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// ReadSet describes one set of files the page-cache readers read, with the
// floors their resident pages are compared against.
type ReadSet struct {
	Name string `json:"name"`
	// Dirs are walked by the readers (find DIRS -type f); when empty, the
	// readers read exactly Files.
	Dirs  []string `json:"dirs,omitempty"`
	Files []string `json:"-"` // slash paths without a leading "/", for a list-based set
	// NumFiles, Bytes and Pages describe the set in one version (the last):
	// Pages is Bytes rounded up to whole 4 KiB pages per file, which is what
	// one copy costs in the page cache.
	NumFiles int   `json:"numFiles"`
	Bytes    int64 `json:"bytes"`
	Pages    int64 `json:"pages"`
	// DistinctBytes and DistinctPages count each distinct content once over
	// all versions: the floor for readers of every version.
	DistinctBytes int64 `json:"distinctBytes"`
	DistinctPages int64 `json:"distinctPages"`
}

// commonSetName names the read set of files identical in every version.
const commonSetName = "files under /usr identical in all versions"

// readSetCache is the on-disk cache of analyseReadSets, keyed by the layers.
type readSetCache struct {
	Layers []string  `json:"layers"`
	Dirs   []string  `json:"dirs"`
	Sets   []ReadSet `json:"sets"`
	Common []string  `json:"common"` // Files of the common set
}

// analyseReadSets reads every version's layer tar and returns two read sets:
// the directories of cfg.readSet (as the harness always measured), and the
// regular files under /usr whose content is the same in all versions, which
// is what "containers share the page cache for the files they have in
// common" is about. The result is cached next to the corpus.
func analyseReadSets(cfg config, c *Corpus) ([]ReadSet, error) {
	cachePath := filepath.Join(c.Dir, "readsets.json")
	if b, err := os.ReadFile(cachePath); err == nil {
		var rc readSetCache
		if json.Unmarshal(b, &rc) == nil && slices.Equal(rc.Layers, corpusLayers(c)) && slices.Equal(rc.Dirs, cfg.readSet) && len(rc.Sets) == 2 {
			rc.Sets[1].Files = rc.Common
			return rc.Sets, nil
		}
	}
	start := time.Now()
	dirSet := ReadSet{Name: strings.Join(cfg.readSet, " "), Dirs: cfg.readSet}
	var prefixes []string
	for _, d := range cfg.readSet {
		prefixes = append(prefixes, strings.Trim(d, "/")+"/")
	}
	inDirs := func(name string) bool {
		for _, p := range prefixes {
			if strings.HasPrefix(name, p) {
				return true
			}
		}
		return false
	}
	type file struct {
		sum  string
		size int64
	}
	var usr map[string]file // common candidates: path -> content, narrowed version by version
	seenDir := map[string]bool{}
	for i, v := range c.Versions {
		files, err := layerFiles(filepath.Join(v.Layout, "blobs", "sha256", v.LayerDigest.Encoded()))
		if err != nil {
			return nil, fmt.Errorf("reading layer of %s: %w", v.Name, err)
		}
		last := i == len(c.Versions)-1
		next := map[string]file{}
		for _, f := range files {
			if inDirs(f.name) {
				if !seenDir[f.sum] {
					seenDir[f.sum] = true
					dirSet.DistinctBytes += f.size
					dirSet.DistinctPages += pageRound(f.size)
				}
				if last {
					dirSet.NumFiles++
					dirSet.Bytes += f.size
					dirSet.Pages += pageRound(f.size)
				}
			}
			if !strings.HasPrefix(f.name, "usr/") {
				continue
			}
			if i == 0 {
				next[f.name] = file{f.sum, f.size}
			} else if old, ok := usr[f.name]; ok && old.sum == f.sum {
				next[f.name] = old
			}
		}
		usr = next
	}
	common := ReadSet{Name: commonSetName}
	seenCommon := map[string]bool{}
	for name, f := range usr {
		common.Files = append(common.Files, name)
		common.NumFiles++
		common.Bytes += f.size
		common.Pages += pageRound(f.size)
		if !seenCommon[f.sum] { // same content under two names is one object (kura), maybe two inodes (podman)
			seenCommon[f.sum] = true
			common.DistinctBytes += f.size
			common.DistinctPages += pageRound(f.size)
		}
	}
	slices.Sort(common.Files)
	sets := []ReadSet{dirSet, common}
	b, err := json.Marshal(readSetCache{Layers: corpusLayers(c), Dirs: cfg.readSet, Sets: sets, Common: common.Files})
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(cachePath, b, 0o644); err != nil {
		return nil, err
	}
	log.Printf("read sets: %q %d files %.1f MB; %q %d files %.1f MB (%.0fs)", dirSet.Name, dirSet.NumFiles, mb(dirSet.Bytes),
		common.Name, common.NumFiles, mb(common.Bytes), time.Since(start).Seconds())
	return sets, nil
}

func pageRound(n int64) int64 { return (n + 4095) / 4096 * 4096 }

type layerFile struct {
	name string // tar name, no leading "./" or "/"
	sum  string // sha256 hex of the content
	size int64
}

// layerFiles lists the regular files of an uncompressed layer tar (hard links
// are the same inode as their target, so they are left out).
func layerFiles(path string) ([]layerFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []layerFile
	tr := tar.NewReader(f)
	h := sha256.New()
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		h.Reset()
		n, err := io.Copy(h, tr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", hdr.Name, err)
		}
		name := strings.TrimPrefix(strings.TrimPrefix(hdr.Name, "./"), "/")
		out = append(out, layerFile{name: name, sum: hex.EncodeToString(h.Sum(nil)), size: n})
	}
}

// writeFileList writes paths as absolute, NUL-separated names for xargs -0.
func writeFileList(path string, files []string) error {
	var sb strings.Builder
	for _, f := range files {
		sb.WriteString("/" + f + "\x00")
	}
	return os.WriteFile(path, []byte(sb.String()), 0o644)
}
