package pull

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/internal/testkit/elftest"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/lazy/ldso"
)

func TestImageFilesResolve(t *testing.T) {
	l := &lazyLayer{}
	ix := &imageFiles{byPath: map[string]imageEntry{}}
	add := func(e layerfs.Entry) { ix.byPath[cleanPath(e.Name)] = imageEntry{l: l, e: &e} }
	add(layerfs.Entry{Type: layerfs.TypeSymlink, Name: "lib64", Linkname: "usr/lib64"})
	add(layerfs.Entry{Type: layerfs.TypeSymlink, Name: "lib", Linkname: "usr/lib"})
	add(layerfs.Entry{Type: layerfs.TypeDir, Name: "usr/lib64/"})
	add(layerfs.Entry{Type: layerfs.TypeSymlink, Name: "usr/lib64/ld-linux-x86-64.so.2", Linkname: "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"})
	add(layerfs.Entry{Type: layerfs.TypeReg, Name: "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", Digest: digest.FromString("ld")})
	add(layerfs.Entry{Type: layerfs.TypeSymlink, Name: "usr/lib/x86_64-linux-gnu/libone.so.1", Linkname: "/usr/lib/x86_64-linux-gnu/libone.so.1.0"})
	add(layerfs.Entry{Type: layerfs.TypeLink, Name: "usr/lib/x86_64-linux-gnu/libone.so.1.0", Linkname: "usr/lib/real-one"})
	add(layerfs.Entry{Type: layerfs.TypeReg, Name: "usr/lib/real-one", Digest: digest.FromString("one")})
	add(layerfs.Entry{Type: layerfs.TypeSymlink, Name: "usr/lib/loop", Linkname: "loop"})
	add(layerfs.Entry{Type: layerfs.TypeSymlink, Name: "usr/lib/escape", Linkname: "../../../../etc/shadow"})
	add(layerfs.Entry{Type: layerfs.TypeReg, Name: "etc/shadow", Digest: digest.FromString("shadow")})
	for p, want := range map[string]string{
		"/lib64/ld-linux-x86-64.so.2":              "ld",
		"lib/x86_64-linux-gnu/libone.so.1":         "one",
		"usr/lib/x86_64-linux-gnu/libone.so.1":     "one",
		"usr/lib/loop":                             "",
		"usr/lib/escape":                           "shadow", // the image's own: .. stops at its root
		"usr/lib/x86_64-linux-gnu/libmissing.so.1": "",
		"lib64": "",
	} {
		ent, ok := ix.resolve(p, newLookups())
		if got := ""; ok {
			got = string(ent.e.Digest)
			if ent.e.Digest != digest.FromString(want) {
				t.Errorf("resolve(%q) = %s; want the file %q", p, got, want)
			}
		} else if want != "" {
			t.Errorf("resolve(%q) found nothing; want the file %q", p, want)
		}
	}
	found := ix.loadsOf(ldso.Info{Interp: "/lib64/ld-linux-x86-64.so.2", Needed: []string{"libone.so.1", "libnone.so", "../evil.so"}, Machine: elf.EM_X86_64}, newLookups())
	if len(found) != 2 || found[0].e.Digest != digest.FromString("ld") || found[1].e.Digest != digest.FromString("one") {
		t.Fatalf("loads found %d files; want the interpreter and libone", len(found))
	}
}

// TestImageFilesResolveBounded: a resolution that would look up a long path's every prefix at
// every one of its symlink hops stops once its budget is spent, and a budget too small for an
// honest path finds nothing rather than going on.
func TestImageFilesResolveBounded(t *testing.T) {
	l := &lazyLayer{}
	ix := &imageFiles{byPath: map[string]imageEntry{}}
	add := func(e layerfs.Entry) { ix.byPath[cleanPath(e.Name)] = imageEntry{l: l, e: &e} }
	deep := strings.Repeat("d/", 1500) // 3000 bytes of directories the index does not list
	add(layerfs.Entry{Type: layerfs.TypeSymlink, Name: deep + "x", Linkname: "/" + deep + "x"})
	add(layerfs.Entry{Type: layerfs.TypeReg, Name: "usr/bin/prog", Digest: digest.FromString("prog")})
	b := newLookups()
	if _, ok := ix.resolve(deep+"x", b); ok || b.left >= 0 {
		t.Fatalf("a link to itself 1500 directories deep: resolved %v, budget left %d; want nothing, the budget spent", ok, b.left)
	}
	if _, ok := ix.resolve("usr/bin/prog", &lookups{left: 10}); ok {
		t.Fatal("resolved usr/bin/prog within 10 bytes of lookups")
	}
	if ent, ok := ix.resolve("usr/bin/prog", newLookups()); !ok || ent.e.Digest != digest.FromString("prog") {
		t.Fatal("usr/bin/prog not resolved with a whole budget")
	}
}

// TestLazyLibrariesFetchedWithProgram: the fill of a program also fetches the interpreter and
// the libraries ld.so will load for it, and theirs, so their opens make no request of their
// own: the whole chain cost the program's fill plus one request per level.
func TestLazyLibrariesFetchedWithProgram(t *testing.T) {
	libdir := "usr/lib/x86_64-linux-gnu/"
	tree := []treeFile{
		{name: "usr/", typ: tar.TypeDir, mode: 0o755},
		{name: "usr/bin/", typ: tar.TypeDir, mode: 0o755},
		{name: "usr/bin/prog", typ: tar.TypeReg, mode: 0o755, content: elftest.File("/lib64/ld-linux-x86-64.so.2", "libone.so.1")},
		{name: "usr/bin/other", typ: tar.TypeReg, mode: 0o755, content: bytes.Repeat([]byte("other "), 9000)},
		{name: "lib64", typ: tar.TypeSymlink, linkname: "usr/lib64", mode: 0o777},
		{name: "usr/lib64/", typ: tar.TypeDir, mode: 0o755},
		{name: "usr/lib64/ld-linux-x86-64.so.2", typ: tar.TypeSymlink, linkname: "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", mode: 0o777},
		{name: "usr/lib/", typ: tar.TypeDir, mode: 0o755},
		{name: libdir, typ: tar.TypeDir, mode: 0o755},
		{name: libdir + "ld-linux-x86-64.so.2", typ: tar.TypeReg, mode: 0o755, content: bytes.Repeat([]byte("ld.so "), 7000)},
		{name: libdir + "libone.so.1", typ: tar.TypeSymlink, linkname: "libone.so.1.0", mode: 0o777},
		{name: libdir + "libone.so.1.0", typ: tar.TypeReg, mode: 0o644, content: elftest.File("", "libtwo.so.2")},
		{name: "usr/lib/libtwo.so.2", typ: tar.TypeReg, mode: 0o644, content: bytes.Repeat([]byte("libtwo "), 8000)},
	}
	e, p := newLazyEnvOf(t, tree)
	hold := make(chan struct{})
	done := e.serve(t, context.Background(), p, WithBackgroundHeld(hold))
	before := len(e.reg.Proxy.BlobRequests())
	e.readWhole(t, "usr/bin/prog", "on demand")
	if n := len(e.reg.Proxy.BlobRequests()) - before; n != 3 {
		t.Errorf("the program's fill made %d blob requests; want 3 (the program, then the interpreter and libone, then libtwo)", n)
	}
	requests := len(e.reg.Proxy.BlobRequests())
	for _, name := range []string{libdir + "ld-linux-x86-64.so.2", libdir + "libone.so.1.0", "usr/lib/libtwo.so.2"} {
		e.readWhole(t, name, "after the program's fill")
	}
	if n := len(e.reg.Proxy.BlobRequests()) - requests; n != 0 {
		t.Fatalf("reading the program's libraries made %d blob requests; want 0", n)
	}
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.checkComplete(t, p)
}

// TestLazyPullFetchesBaseline: the files every glibc program's start reads are stored by the
// pull itself (no placeholder, no fill), whatever their size; others of their directories
// are not.
func TestLazyPullFetchesBaseline(t *testing.T) {
	libdir := "usr/lib/x86_64-linux-gnu/"
	tree := []treeFile{
		{name: "etc/", typ: tar.TypeDir, mode: 0o755},
		{name: "etc/ld.so.cache", typ: tar.TypeReg, mode: 0o644, content: bytes.Repeat([]byte("ld.so.cache "), 900)},
		{name: "etc/motd", typ: tar.TypeReg, mode: 0o644, content: bytes.Repeat([]byte("welcome "), 900)},
		{name: "usr/", typ: tar.TypeDir, mode: 0o755},
		{name: "usr/lib/", typ: tar.TypeDir, mode: 0o755},
		{name: libdir, typ: tar.TypeDir, mode: 0o755},
		{name: libdir + "libc.so.6", typ: tar.TypeReg, mode: 0o755, content: bytes.Repeat([]byte("libc "), 30000)},
		{name: libdir + "libother.so.1", typ: tar.TypeReg, mode: 0o644, content: bytes.Repeat([]byte("other "), 30000)},
	}
	e, p := newLazyEnvOf(t, tree)
	for name, want := range map[string]bool{"etc/ld.so.cache": true, libdir + "libc.so.6": true, "etc/motd": false, libdir + "libother.so.1": false} {
		if got := e.s.HasObject(digest.FromBytes(e.files[name])); got != want {
			t.Errorf("%s stored by the lazy pull: %v; want %v", name, got, want)
		}
	}
	hold := make(chan struct{})
	done := e.serve(t, context.Background(), p, WithBackgroundHeld(hold))
	before := len(e.reg.Proxy.BlobRequests())
	e.readWhole(t, libdir+"libc.so.6", "stored by the pull")
	if n := len(e.reg.Proxy.BlobRequests()) - before; n != 0 {
		t.Errorf("reading a baseline file made %d blob requests; want 0", n)
	}
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.checkComplete(t, p)
}

// TestLazyPullFetchesStartupProgram: the pull stores the program the image's config runs (a
// name looked up in its PATH, through the image's symlinks), the interpreter its #! line
// names, and that one's loader and libraries, so that running it makes no request; other
// programs are left to fills.
func TestLazyPullFetchesStartupProgram(t *testing.T) {
	libdir := "usr/lib/x86_64-linux-gnu/"
	tree := []treeFile{
		{name: "bin", typ: tar.TypeSymlink, linkname: "usr/bin", mode: 0o777},
		{name: "usr/", typ: tar.TypeDir, mode: 0o755},
		{name: "usr/bin/", typ: tar.TypeDir, mode: 0o755},
		{name: "usr/bin/entry", typ: tar.TypeReg, mode: 0o755, content: append([]byte("#! /bin/tool -e\n"), bytes.Repeat([]byte("echo start\n"), 90)...)},
		{name: "usr/bin/tool", typ: tar.TypeReg, mode: 0o755, content: elftest.File("/opt/rt/loader.so", "libthree.so.3")},
		{name: "usr/bin/other", typ: tar.TypeReg, mode: 0o755, content: elftest.File("/opt/rt/loader.so", "libfour.so.4")},
		{name: "opt/", typ: tar.TypeDir, mode: 0o755},
		{name: "opt/rt/", typ: tar.TypeDir, mode: 0o755},
		{name: "opt/rt/loader.so", typ: tar.TypeReg, mode: 0o755, content: bytes.Repeat([]byte("loader "), 7000)},
		{name: "usr/lib/", typ: tar.TypeDir, mode: 0o755},
		{name: libdir, typ: tar.TypeDir, mode: 0o755},
		{name: libdir + "libthree.so.3", typ: tar.TypeReg, mode: 0o644, content: bytes.Repeat([]byte("libthree "), 8000)},
		{name: libdir + "libfour.so.4", typ: tar.TypeReg, mode: 0o644, content: bytes.Repeat([]byte("libfour "), 8000)},
	}
	e, p := newLazyEnvOf(t, tree, func(c *ocispec.Image) {
		c.Config.Env = []string{"PATH=/usr/local/bin:/bin"}
		c.Config.Cmd = []string{"entry", "arg"}
	})
	for name, want := range map[string]bool{
		"usr/bin/entry": true, "usr/bin/tool": true, "opt/rt/loader.so": true, libdir + "libthree.so.3": true,
		"usr/bin/other": false, libdir + "libfour.so.4": false,
	} {
		if got := e.s.HasObject(digest.FromBytes(e.files[name])); got != want {
			t.Errorf("%s stored by the lazy pull: %v; want %v", name, got, want)
		}
	}
	hold := make(chan struct{})
	done := e.serve(t, context.Background(), p, WithBackgroundHeld(hold))
	before := len(e.reg.Proxy.BlobRequests())
	for _, name := range []string{"usr/bin/entry", "usr/bin/tool", "opt/rt/loader.so", libdir + "libthree.so.3"} {
		e.readWhole(t, name, "stored by the pull")
	}
	if n := len(e.reg.Proxy.BlobRequests()) - before; n != 0 {
		t.Errorf("running the start-up program made %d blob requests; want 0", n)
	}
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.checkComplete(t, p)
}
