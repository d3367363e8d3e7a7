package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestRequestedBytes(t *testing.T) {
	for _, tc := range []struct {
		header    string
		body      int64
		ranges    int
		wantBytes int64
	}{
		{"", 500, 0, 500},
		{"bytes=0-99", 100, 1, 100},
		{"bytes=0-99,200-299, 1000-1000", 999, 3, 201},
		{"bytes=-50", 50, 1, 50},
		{"bytes=100-", 400, 0, 400}, // open-ended: what was sent
		{"bytes=9-3", 7, 0, 7},      // invalid: what was sent
		{"items=0-9", 10, 0, 10},    // not bytes: what was sent
	} {
		n, got := requestedBytes(tc.header, tc.body)
		if n != tc.ranges || got != tc.wantBytes {
			t.Errorf("requestedBytes(%q, %d) = %d ranges, %d bytes; want %d, %d", tc.header, tc.body, n, got, tc.ranges, tc.wantBytes)
		}
	}
}

func TestSortPathsParentsFirst(t *testing.T) {
	p := []string{"a/b/c", "a/b-c", "a", "a/b", "a/b-c/d", "b"}
	sortPaths(p)
	want := []string{"a", "a/b", "a/b/c", "a/b-c", "a/b-c/d", "b"}
	if !slices.Equal(p, want) {
		t.Fatalf("sortPaths = %v, want %v", p, want)
	}
}

func TestSkippedRE(t *testing.T) {
	out := "Copying blob 5b4b [>---] 2.4MiB / 88.5MiB (skipped: 0.0b = 0.00%)\r\n" +
		"Copying blob 5b4b done  88.5MiB / 88.5MiB (skipped: 86.1MiB = 97.32%)\r\n"
	m := skippedRE.FindAllStringSubmatch(out, -1)
	if len(m) != 2 || m[1][1] != "86.1MiB" || m[1][2] != "97.32" {
		t.Fatalf("matches %q", m)
	}
}

// fakeBase holds the few files versionFiles patches.
func fakeBase(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, size := range map[string]int{
		"etc/apache2/sites-available/000-default.conf": 300,
		"usr/sbin/apache2":                           200 << 10,
		"usr/lib/apache2/modules/mod_rewrite.so":     80 << 10,
		"usr/lib/x86_64-linux-gnu/libapr-1.so.0.7.2": 150 << 10,
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, bytes.Repeat([]byte{0x5a}, size), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestVersionFilesDeterministicAndIncremental(t *testing.T) {
	base := fakeBase(t)
	a, err := versionFiles(4, base, quickShape)
	if err != nil {
		t.Fatal(err)
	}
	b, err := versionFiles(4, base, quickShape)
	if err != nil {
		t.Fatal(err)
	}
	for name, f := range a {
		if !bytes.Equal(f.data, b[name].data) || !f.mtime.Equal(b[name].mtime) {
			t.Fatalf("%s differs between two generations of the same version", name)
		}
	}
	prev, err := versionFiles(3, base, quickShape)
	if err != nil {
		t.Fatal(err)
	}
	var same, changed int
	for name, f := range a {
		if p, ok := prev[name]; ok && bytes.Equal(p.data, f.data) {
			same++
		} else {
			changed++
		}
	}
	// Most of the application carries over; some of it must change.
	if same < len(a)/2 || changed == 0 {
		t.Fatalf("v4 vs v3: %d files the same, %d changed; want mostly the same, some changed", same, changed)
	}
	if bytes.Equal(a["usr/sbin/apache2"].data, prev["usr/sbin/apache2"].data) {
		t.Fatal("apache2 was not rebuilt between releases")
	}
	if _, ok := a["usr/lib/x86_64-linux-gnu/libapr-1.so.0.7.2"]; !ok {
		t.Fatal("libapr not updated in release 3's successor")
	}
}

func TestLayerIsDeterministic(t *testing.T) {
	base := fakeBase(t)
	entries, err := scanBase(base)
	if err != nil {
		t.Fatal(err)
	}
	build := func() (string, *Version) {
		dir := t.TempDir()
		fl := newFloor()
		defer fl.close()
		v, err := buildVersion(dir, 1, base, entries, quickShape, []string{"/usr/lib"}, fl)
		if err != nil {
			t.Fatal(err)
		}
		return dir, v
	}
	_, v1 := build()
	_, v2 := build()
	if v1.LayerDigest != v2.LayerDigest {
		t.Fatalf("layer digests differ: %s vs %s", v1.LayerDigest, v2.LayerDigest)
	}
	if v1.FloorBytes <= 0 || v1.FloorBytes >= v1.NewBytes || v1.ReadSetBytes == 0 {
		t.Fatalf("implausible figures: %+v", v1)
	}
	// Parents come before children and every regular file is there.
	f, err := os.Open(filepath.Join(v1.Layout, "blobs", "sha256", v1.LayerDigest.Encoded()))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]bool{}
	tr := tar.NewReader(f)
	files := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Clean(h.Name)
		if dir := filepath.Dir(name); dir != "." && !seen[dir] {
			t.Fatalf("%s comes before its directory", h.Name)
		}
		seen[name] = true
		if h.Typeflag == tar.TypeReg {
			files++
		}
	}
	if files != v1.Files {
		t.Fatalf("tar has %d files, version says %d", files, v1.Files)
	}
}

func TestAnalyseReadSets(t *testing.T) {
	base := fakeBase(t)
	entries, err := scanBase(base)
	if err != nil {
		t.Fatal(err)
	}
	readSet := []string{"/usr/lib", "/usr/sbin"}
	c := &Corpus{Dir: t.TempDir()}
	fl := newFloor()
	defer fl.close()
	for v := range 3 {
		ver, err := buildVersion(c.Dir, v, base, entries, quickShape, readSet, fl)
		if err != nil {
			t.Fatal(err)
		}
		c.Versions = append(c.Versions, ver)
	}
	cfg := config{readSet: readSet}
	for pass := range 2 { // the second pass reads the cache
		sets, err := analyseReadSets(cfg, c)
		if err != nil {
			t.Fatal(err)
		}
		dirs, common := sets[0], sets[1]
		// apache2 and mod_rewrite change in every release, libapr only every
		// third: it is the one file under /usr common to versions 0..2.
		if want := []string{"usr/lib/x86_64-linux-gnu/libapr-1.so.0.7.2"}; !slices.Equal(common.Files, want) {
			t.Fatalf("pass %d: common files %v, want %v", pass, common.Files, want)
		}
		if common.Bytes != 150<<10 || common.Pages != 38*4096 || common.Name != commonSetName {
			t.Fatalf("pass %d: common set %+v", pass, common)
		}
		if dirs.Bytes != c.Versions[2].ReadSetBytes || dirs.NumFiles != 3 {
			t.Fatalf("pass %d: dir set %+v, version says %d bytes", pass, dirs, c.Versions[2].ReadSetBytes)
		}
		if want := int64(3*(200<<10) + 3*(80<<10) + 150<<10); dirs.DistinctBytes != want {
			t.Fatalf("pass %d: distinct bytes %d, want %d", pass, dirs.DistinctBytes, want)
		}
	}
	if c.commonSet() != nil {
		t.Fatal("commonSet before ReadSets are set")
	}
}

func TestPositionLength(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"96000:812345:3000000:1", 812345, true},
		{"1000:431000:5000000", 431000, true},
		{"1000:431000", 0, false},
		{"1:-5:3", 0, false},
		{"a:b:c", 0, false},
	} {
		n, err := positionLength(tc.in)
		if (err == nil) != tc.ok || n != tc.want {
			t.Errorf("positionLength(%q) = %d, %v; want %d, ok %v", tc.in, n, err, tc.want, tc.ok)
		}
	}
}

func TestColdMedian(t *testing.T) {
	pulls := []ColdPull{
		{Tool: coldKura, Seconds: 5}, {Tool: coldKura, Seconds: 3}, {Tool: coldKura, Seconds: 4},
		{Tool: coldSkopeo, Seconds: 2}, {Tool: coldSkopeo, Seconds: 1}, {Tool: coldSkopeo, Seconds: 9, Error: "x"},
	}
	if m, n := coldMedian(pulls, coldKura); m != 4 || n != 3 {
		t.Errorf("kura median %v of %d, want 4 of 3", m, n)
	}
	if m, n := coldMedian(pulls, coldSkopeo); m != 1.5 || n != 2 {
		t.Errorf("skopeo median %v of %d, want 1.5 of 2 (failed pull left out)", m, n)
	}
	if _, n := coldMedian(pulls, coldPodman); n != 0 {
		t.Errorf("podman: %d pulls, want 0", n)
	}
}

func TestResidentBytesBy(t *testing.T) {
	root := t.TempDir()
	for name, size := range map[string]int{"objects/ab/cd": 3 * 4096, "composefs/x.cfs": 4096, "layers/l/toc": 10} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, bytes.Repeat([]byte{1}, size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A hard link is the same inode: counted once.
	if err := os.Link(filepath.Join(root, "objects/ab/cd"), filepath.Join(root, "objects/ab/link")); err != nil {
		t.Fatal(err)
	}
	// Just-written files are in the page cache (no drop_caches here).
	by, err := residentBytesBy(root, kuraStorePart)
	if err != nil {
		t.Fatal(err)
	}
	if by["objects"] != 3*4096 || by["composefs images"] != 4096 || by["other"] != 4096 {
		t.Fatalf("resident by part %v", by)
	}
	if all, err := residentBytes(root); err != nil || all != 5*4096 {
		t.Fatalf("residentBytes = %d, %v; want %d", all, err, 5*4096)
	}
}

func TestReadFiles(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "usr/lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/lib/a"), []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := readFiles(root, []string{"usr/lib/a"}); err != nil {
		t.Fatal(err)
	}
	if err := readFiles(root, []string{"usr/lib/missing"}); err == nil {
		t.Fatal("reading a missing file succeeded")
	}
	list := filepath.Join(root, "list")
	if err := writeFileList(list, []string{"usr/lib/a", "usr/b c"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(list); string(b) != "/usr/lib/a\x00/usr/b c\x00" {
		t.Fatalf("list %q", b)
	}
}

func TestEachRef(t *testing.T) {
	var mu sync.Mutex
	running, most, calls := 0, 0, 0
	release := make(chan struct{})
	refs := []string{"a", "b", "c", "d", "e"}
	done := make(chan error)
	go func() {
		done <- eachRef(refs, func(r string) error {
			mu.Lock()
			running++
			calls++
			most = max(most, running)
			mu.Unlock()
			<-release
			mu.Lock()
			running--
			mu.Unlock()
			if r == "c" {
				return errors.New("c failed")
			}
			return nil
		})
	}()
	for range refs {
		release <- struct{}{}
	}
	err := <-done
	if calls != len(refs) || most > containersAtOnce {
		t.Fatalf("%d calls, at most %d at once; want %d, at most %d", calls, most, len(refs), containersAtOnce)
	}
	if err == nil || !strings.Contains(err.Error(), "c failed") {
		t.Fatalf("error %v, want c's", err)
	}
}

// The harness parses a few strings that come from the registry or the client:
// Range headers (proxy) and position annotations (manifests).
func FuzzRequestedBytes(f *testing.F) {
	for _, s := range []string{"", "bytes=0-99", "bytes=0-99,200-299", "bytes=-50", "bytes=100-", "bytes=9-3", "items=0-9"} {
		f.Add(s, int64(100))
	}
	f.Fuzz(func(t *testing.T, h string, body int64) {
		n, got := requestedBytes(h, body)
		if n < 0 || (n == 0 && got != body) {
			t.Fatalf("requestedBytes(%q, %d) = %d ranges, %d bytes", h, body, n, got)
		}
	})
}

func FuzzPositionLength(f *testing.F) {
	for _, s := range []string{"96000:812345:3000000:1", "1000:431000:5000000", "1:-5:3", "::"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := positionLength(s); n < 0 || (err != nil && n != 0) {
			t.Fatalf("positionLength(%q) = %d, %v", s, n, err)
		}
	})
}
