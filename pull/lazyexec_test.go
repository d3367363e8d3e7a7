package pull

import (
	"archive/tar"
	"context"
	"debug/elf"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// hostTree copies host files into a layer tree: each path with every directory and symbolic
// link on the way to it (the layer resolves /bin/sh and /lib64/ld-linux-x86-64.so.2 as the host
// does), then the regular file it names.
type hostTree struct {
	t     *testing.T
	files []treeFile
	seen  map[string]bool
}

func (h *hostTree) add(path string) {
	h.t.Helper()
	cur := "/"
	parts := strings.Split(strings.Trim(filepath.Clean(path), "/"), "/")
	for i, part := range parts {
		next := filepath.Join(cur, part)
		st, err := os.Lstat(next)
		if err != nil {
			h.t.Fatalf("host file %s: %v", path, err)
		}
		name := strings.TrimPrefix(next, "/")
		switch {
		case st.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(next)
			if err != nil {
				h.t.Fatal(err)
			}
			h.put(treeFile{name: name, typ: tar.TypeSymlink, linkname: target, mode: 0o777})
			if !filepath.IsAbs(target) {
				target = filepath.Join(cur, target)
			}
			h.add(filepath.Join(append([]string{target}, parts[i+1:]...)...))
			return
		case st.IsDir():
			h.put(treeFile{name: name + "/", typ: tar.TypeDir, mode: 0o755})
		default:
			b, err := os.ReadFile(next)
			if err != nil {
				h.t.Fatal(err)
			}
			h.put(treeFile{name: name, typ: tar.TypeReg, content: b, mode: int64(st.Mode().Perm())})
		}
		cur = next
	}
}

func (h *hostTree) put(f treeFile) {
	if !h.seen[f.name] {
		h.seen[f.name] = true
		h.files = append(h.files, f)
	}
}

// addProgram adds an ELF program with its interpreter and every library it needs, found in the
// host's multiarch library directories.
func (h *hostTree) addProgram(path string) {
	h.t.Helper()
	h.add(path)
	f, err := elf.Open(path)
	if err != nil {
		h.t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				h.t.Fatal(err)
			}
			h.add(strings.TrimRight(string(b), "\x00"))
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, lib := range libs {
		h.addProgram(h.findLib(lib))
	}
}

func (h *hostTree) findLib(name string) string {
	h.t.Helper()
	for _, dir := range []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return filepath.Join(dir, name)
		}
	}
	h.t.Fatalf("library %s not found on the host", name)
	return ""
}

// TestLazyRunProgramFromFreshMount runs the host's dynamically linked /bin/sh, which runs ls in
// a UTF-8 locale, chrooted into a fresh lazy mount (fanotify) with the bulk fetch held back:
// the kernel executes /bin/sh from its placeholder, ld.so maps the libraries (ls's fetched with
// ls), and the files glibc maps and never reads (ld.so.cache, gconv-modules.cache, the locale)
// came with the pull (the start-up baseline). It must run and list /etc.
func TestLazyRunProgramFromFreshMount(t *testing.T) {
	h := &hostTree{t: t, seen: map[string]bool{}}
	h.addProgram("/bin/sh")
	h.addProgram("/bin/ls")
	h.add("/etc/ld.so.cache")
	h.add("/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache")
	err := filepath.WalkDir("/usr/lib/locale/C.utf8", func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			h.add(path)
		}
		return err
	})
	if err != nil {
		t.Fatalf("the host's C.utf8 locale: %v", err)
	}
	e, p := newLazyEnvOf(t, h.files)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := e.serve(t, ctx, p, WithBackgroundHeld(make(chan struct{})))
	// The host's chroot, not SysProcAttr.Chroot: a child forked from this process holds the
	// fill service's fanotify descriptor until its first exec, so if it blocked on a
	// placeholder there and the service went away (the test killed), the group would never be
	// released and the child would wait on it for ever. chroot(8) is a host binary: by the time
	// /bin/sh is opened in the mount, the descriptor was closed on exec.
	cmd := exec.Command("chroot", e.target, "/bin/sh", "-c", "ls /etc")
	cmd.Env = []string{"PATH=/usr/bin:/bin:/usr/sbin:/sbin", "LANG=C.UTF-8", "LC_ALL=C.UTF-8"}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ld.so.cache") {
		t.Fatalf("/bin/sh -c 'ls /etc' from a fresh lazy mount: %v, output %q", err, out)
	}
	// The program ran from placeholders: the layer is still pending; the locale's LC_CTYPE,
	// which glibc maps and never reads, came with the pull (the start-up baseline: no
	// placeholder), and ls's own libselinux, which ld.so maps, was filled on the way.
	if e.s.HasLayer(e.img.diffIDs[0]) {
		t.Fatal("the layer was stored before the program ran: the bulk fetch was not held")
	}
	ctype := digest.FromBytes(e.files["usr/lib/locale/C.utf8/LC_CTYPE"])
	ctypePh, err := p.PlaceholderPath(e.s, e.img.diffIDs[0], ctype)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(ctypePh); !e.s.HasObject(ctype) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LC_CTYPE: stored %v, placeholder %v; want it stored by the pull, with no placeholder", e.s.HasObject(ctype), err)
	}
	// /bin/sh, executed from its placeholder, was filled there; ls's libselinux, fetched with
	// ls (read-ahead of a program's libraries), is stored, or filled if ld.so's lookup came
	// first.
	for _, f := range []struct {
		host        string
		mayBeStored bool
	}{{"/bin/sh", false}, {h.findLib("libselinux.so.1"), true}} {
		real, err := filepath.EvalSymlinks(f.host)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(real)
		if err != nil {
			t.Fatal(err)
		}
		ph, err := p.PlaceholderPath(e.s, e.img.diffIDs[0], digest.FromBytes(b))
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(ph)
		filled := err == nil && st.Size() == int64(len(b))
		if !filled && !(f.mayBeStored && e.s.HasObject(digest.FromBytes(b))) {
			t.Fatalf("%s after the run: placeholder %v, %v, stored %v; want it filled", f.host, st, err, e.s.HasObject(digest.FromBytes(b)))
		}
	}
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("stopped service: %v", err)
	}
}
