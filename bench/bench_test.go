package main

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
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
