package pull

import (
	"path"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
)

// Read-ahead of on-demand fills. A program starting reads files one after another (ld.so its
// libraries, apache2 its modules and their configuration), and each file it opens that the
// store lacks costs a round trip to the registry while the program waits: on a loopback
// registry that round trip, not the bytes, is most of a fill. Files read together mostly sit
// together: in one directory, which a layer stores contiguously. So an on-demand fill also
// fetches, in the same ranges, the files that follow it in its directory in the layer, up to a
// window of compressed bytes: small at first, four times larger each time the next fill in that
// directory comes after the last one and near the last window (the directory is being read
// through, some files skipped: apache2's enabled modules among all of them), back to small when
// it does not (the reads are scattered), as the kernel's read-ahead ramps up within a file. Files
// served by read-ahead are opened through their stored objects, which raises no event, so a
// start-up profile records only the files that needed a fill; the pull after it, with those
// fetched first, fills (and records) the files read-ahead had served.
//
// A program's configuration is a tree under etc/ (etc/apache2/: apache2.conf, then the .load
// and .conf files of mods-enabled, conf-enabled and sites-enabled, each a link into a sibling
// directory), read whole at start, file by file across its directories. So the first fill of a
// file in etc/<name>/ also fetches that whole tree, within configBudget.
const (
	readaheadMin = 32 << 10 // compressed bytes of a first window
	readaheadMax = 1 << 20  // the most a window grows to
	// readaheadGrowth is how much a window grows from one sequential fill to the next, and how
	// many of the last window's sizes past its end the next fill may be and still count as one.
	readaheadGrowth = 4
	// readaheadScan bounds the entries a window looks at past the file filled.
	readaheadScan = 512
	// configBudget bounds the compressed bytes of a configuration tree fetched with its first
	// fill.
	configBudget = 256 << 10
)

// readahead chooses the files fetched with an on-demand fill of one layer.
type readahead struct {
	files []chunked.File        // the layer's files in blob order
	pos   map[digest.Digest]int // object → index in files of the first file holding it
	mu    sync.Mutex
	dirs  map[string]readWindow  // directory → its last window
	trees map[string]bool        // configuration trees fetched (configTree)
	taken map[digest.Digest]bool // objects fetched ahead
}

// readWindow is the last window of a directory: files[start] was filled, with a budget of
// size bytes, and the window looked at the blob up to endOff.
type readWindow struct {
	start  int
	endOff int64
	size   int64
}

func newReadahead(files []chunked.File) *readahead {
	pos := make(map[digest.Digest]int, len(files))
	for i, f := range files {
		if _, ok := pos[f.Entry.Digest]; !ok {
			pos[f.Entry.Digest] = i
		}
	}
	return &readahead{files: files, pos: pos, dirs: map[string]readWindow{}, trees: map[string]bool{}, taken: map[digest.Digest]bool{}}
}

// pick returns the files to fetch along with f: the files after it in its directory (not in
// subdirectories) whose objects have is false for, within the directory's window.
func (r *readahead) pick(f chunked.File, have func(digest.Digest) bool) []chunked.File {
	i, ok := r.pos[f.Entry.Digest]
	if !ok {
		return nil
	}
	dir := path.Dir(cleanPath(f.Entry.Name))
	r.mu.Lock()
	defer r.mu.Unlock()
	budget := int64(readaheadMin)
	// Sequential: this fill lies after the last window's file, at most readaheadGrowth windows
	// past its end (a reader skipping files of the directory still reads through it).
	if w, ok := r.dirs[dir]; ok && i > w.start && f.Range.Offset <= w.endOff+readaheadGrowth*w.size {
		budget = min(readaheadGrowth*w.size, readaheadMax)
	}
	var out []chunked.File
	seen := map[digest.Digest]bool{f.Entry.Digest: true}
	var n int64
	endOff := f.Range.Offset + f.Range.Length
	for j := i + 1; j < len(r.files) && j <= i+readaheadScan; j++ {
		g := r.files[j]
		name := cleanPath(g.Entry.Name)
		if dir != "." && !strings.HasPrefix(name, dir+"/") {
			break // past the directory
		}
		d := g.Entry.Digest
		if path.Dir(name) != dir || seen[d] {
			continue
		}
		if n+g.Range.Length > budget {
			break
		}
		endOff = g.Range.Offset + g.Range.Length
		seen[d] = true
		if r.taken[d] || have(d) {
			continue
		}
		out = append(out, g)
		n += g.Range.Length
		r.taken[d] = true
	}
	r.dirs[dir] = readWindow{start: i, endOff: endOff, size: budget}
	if tree := configTree(f.Entry.Name); tree != "" && !r.trees[tree] {
		r.trees[tree] = true
		out = append(out, r.pickTree(tree, i, f.Entry.Digest, have)...)
	}
	return out
}

// release forgets that files were fetched ahead, after their fetch failed: a later fill may
// fetch them again.
func (r *readahead) release(files []chunked.File) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range files {
		delete(r.taken, f.Entry.Digest)
	}
}

// configTree is the configuration tree (etc/<name>/) holding file name, or "" for a file
// elsewhere (etc/'s own files included).
func configTree(name string) string {
	rest, ok := strings.CutPrefix(cleanPath(name), "etc/")
	if !ok {
		return ""
	}
	top, _, ok := strings.Cut(rest, "/")
	if !ok {
		return ""
	}
	return "etc/" + top + "/"
}

// pickTree picks the files of configuration tree tree around files[i] (a layer stores a
// directory's tree contiguously), the ones have is false for and not taken already, within
// configBudget.
func (r *readahead) pickTree(tree string, i int, filled digest.Digest, have func(digest.Digest) bool) []chunked.File {
	in := func(j int) bool { return strings.HasPrefix(cleanPath(r.files[j].Entry.Name), tree) }
	first := i
	for first > 0 && first > i-readaheadScan && in(first-1) {
		first--
	}
	var out []chunked.File
	var n int64
	for j := first; j < len(r.files) && j <= i+readaheadScan && in(j); j++ {
		g := r.files[j]
		d := g.Entry.Digest
		if d == filled || r.taken[d] || have(d) {
			continue
		}
		if n+g.Range.Length > configBudget {
			break
		}
		out = append(out, g)
		n += g.Range.Length
		r.taken[d] = true
	}
	return out
}
