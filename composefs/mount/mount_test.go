package mount

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/mountinfo"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/verity"
)

// makeSource generates a tree with every kind of inode composefs stores.
func makeSource(t *testing.T, dir string) {
	t.Helper()
	rng := rand.New(rand.NewSource(42))
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	file := func(name string, size int, mode os.FileMode) {
		data := make([]byte, size)
		rng.Read(data)
		must(os.WriteFile(filepath.Join(dir, name), data, mode))
		must(os.Chmod(filepath.Join(dir, name), mode))
	}
	must(os.MkdirAll(filepath.Join(dir, "a/b/c"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "empty-dir"), 0o700))
	file("empty", 0, 0o644)
	file("one", 1, 0o600)
	file("a/inline64", 64, 0o644)
	file("a/ext65", 65, 0o755)
	file("a/b/block", 4096, 0o644)
	file("a/b/c/big", 3<<20+123, 0o640)
	file("same1", 5000, 0o644)
	must(os.WriteFile(filepath.Join(dir, "same2"), mustRead(t, filepath.Join(dir, "same1")), 0o644))
	must(os.Link(filepath.Join(dir, "a/b/block"), filepath.Join(dir, "hardlink-block")))
	must(os.Link(filepath.Join(dir, "one"), filepath.Join(dir, "a/hardlink-one")))
	must(os.Symlink("a/b/block", filepath.Join(dir, "symlink")))
	must(os.Symlink(strings.Repeat("long/", 600)+"target", filepath.Join(dir, "a/long-symlink")))
	must(unix.Mknod(filepath.Join(dir, "a/whiteout"), unix.S_IFCHR|0o644, 0))
	must(unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644))
	must(os.Lchown(filepath.Join(dir, "a/ext65"), 1000, 1001))
	must(os.Lchown(filepath.Join(dir, "symlink"), 70000, 70001))
	must(unix.Setxattr(filepath.Join(dir, "a/inline64"), "user.small", []byte("v"), 0))
	must(unix.Setxattr(filepath.Join(dir, "a/b/c/big"), "user.big", bytes.Repeat([]byte{0xAB}, 2000), 0))
	must(unix.Setxattr(filepath.Join(dir, "a"), "user.dir", []byte("dir=value"), 0))
	must(unix.Setxattr(filepath.Join(dir, "same1"), "user.shared", []byte("x"), 0))
	must(unix.Setxattr(filepath.Join(dir, "same2"), "user.shared", []byte("x"), 0))
	// Distinct times with nanoseconds, set children before parents.
	var paths []string
	must(filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	}))
	sort.Sort(sort.Reverse(sort.StringSlice(paths)))
	for i, p := range paths {
		ts := []unix.Timespec{unix.NsecToTimespec(int64(1600000000+i) * 1e9), unix.NsecToTimespec(int64(1600000000+i)*1e9 + int64(i*7919+1))}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

func mustRead(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func buildImage(t *testing.T, src, objects string) string {
	t.Helper()
	root, err := composefs.FromDir(context.Background(), src, composefs.WithDigestStore(objects), composefs.WithHardlinks())
	if err != nil {
		t.Fatal(err)
	}
	img, err := composefs.BuildImage(root)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "image.cfs")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func userXattrs(t *testing.T, p string) map[string]string {
	buf := make([]byte, 65536)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatalf("listxattr %s: %v", p, err)
	}
	m := map[string]string{}
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if !strings.HasPrefix(name, "user.") {
			continue
		}
		v := make([]byte, 65536)
		k, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, name, err)
		}
		m[name] = string(v[:k])
	}
	return m
}

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "mounting needs root")
	}
}

func TestMountMatchesSource(t *testing.T) {
	needRoot(t)
	src, objects, target := t.TempDir(), t.TempDir(), t.TempDir()
	makeSource(t, src)
	image := buildImage(t, src, objects)
	plan, err := NewPlan(image, []string{objects}, target)
	if err != nil {
		t.Fatal(err)
	}
	if err := Mount(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Unmount(target); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	// The private EROFS mount is detached: nothing but the overlay refers to the image.
	overlayMounted := false
	for _, line := range strings.Split(string(mustRead(t, "/proc/self/mountinfo")), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		if strings.Contains(f[4], ".composefs-") {
			t.Errorf("EROFS staging mount still attached: %s", line)
		}
		if f[4] == target && strings.Contains(line, " - overlay composefs ") {
			overlayMounted = true
		}
	}
	if !overlayMounted {
		t.Fatalf("overlay not mounted at %s", target)
	}

	checked := checkMatchesSource(t, src, target, true)
	if checked < 19 {
		t.Fatalf("only %d paths compared", checked)
	}
	// The object directories are hidden by the image's opaque root.
	if _, err := os.Lstat(filepath.Join(target, "00")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("object dir stub 00 visible: %v", err)
	}
}

// checkMatchesSource compares what a composefs mount at target shows with the source tree it
// was built from, path by path, and returns how many paths it compared. dirNlink false skips
// directories' link counts: overlayfs shows 1 for a directory it merges from two layers.
func checkMatchesSource(t *testing.T, src, target string, dirNlink bool) int {
	t.Helper()
	inodes := map[uint64]uint64{} // source inode -> mounted inode, for hard links
	checked := 0
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		m := filepath.Join(target, rel)
		var ss, ms unix.Stat_t
		if err := unix.Lstat(p, &ss); err != nil {
			return err
		}
		if err := unix.Lstat(m, &ms); err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		checked++
		if ss.Mode&unix.S_IFMT == unix.S_IFCHR && ss.Rdev == 0 {
			// A whiteout shows as an xattr whiteout: an empty file that overlayfs treats as a
			// whiteout when this mount is itself a lower layer.
			if ms.Mode != unix.S_IFREG|ss.Mode&0o7777 || ms.Size != 0 {
				t.Errorf("%s: whiteout shows as mode %o size %d", rel, ms.Mode, ms.Size)
			}
			if _, err := unix.Lgetxattr(m, "trusted.overlay.whiteout", nil); err != nil {
				t.Errorf("%s: no trusted.overlay.whiteout: %v", rel, err)
			}
			if v := userXattrs(t, m); v["user.overlay.whiteout"] != "" || len(v) != 1 {
				t.Errorf("%s: user xattrs %q", rel, v)
			}
			if v := userXattrs(t, filepath.Dir(m)); v["user.overlay.opaque"] != "x" {
				t.Errorf("%s: parent not marked as holding whiteouts: %q", rel, v)
			}
			return nil
		}
		if ss.Mode != ms.Mode || ss.Uid != ms.Uid || ss.Gid != ms.Gid {
			t.Errorf("%s: mode/owner %o %d:%d, source %o %d:%d", rel, ms.Mode, ms.Uid, ms.Gid, ss.Mode, ss.Uid, ss.Gid)
		}
		if ss.Mtim != ms.Mtim {
			t.Errorf("%s: mtime %v, source %v", rel, ms.Mtim, ss.Mtim)
		}
		if ss.Nlink != ms.Nlink && (dirNlink || ss.Mode&unix.S_IFMT != unix.S_IFDIR) {
			t.Errorf("%s: nlink %d, source %d", rel, ms.Nlink, ss.Nlink)
		}
		if ss.Rdev != ms.Rdev {
			t.Errorf("%s: rdev %d, source %d", rel, ms.Rdev, ss.Rdev)
		}
		mx := userXattrs(t, m)
		delete(mx, "user.overlay.whiteouts") // marks a directory holding whiteouts
		delete(mx, "user.overlay.opaque")
		if sx := userXattrs(t, p); !equalMaps(sx, mx) {
			t.Errorf("%s: user xattrs %q, source %q", rel, mx, sx)
		}
		switch ss.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			if ss.Size != ms.Size {
				t.Errorf("%s: size %d, source %d", rel, ms.Size, ss.Size)
			}
			if !bytes.Equal(mustRead(t, p), mustRead(t, m)) {
				t.Errorf("%s: content differs", rel)
			}
			if ss.Nlink > 1 {
				if prev, ok := inodes[ss.Ino]; ok && prev != ms.Ino {
					t.Errorf("%s: hard link has inode %d, its other name %d", rel, ms.Ino, prev)
				}
				inodes[ss.Ino] = ms.Ino
			}
		case unix.S_IFLNK:
			st, _ := os.Readlink(p)
			mt, err := os.Readlink(m)
			if err != nil || st != mt {
				t.Errorf("%s: symlink %q (%v), source %q", rel, mt, err, st)
			}
		case unix.S_IFDIR:
			se, _ := os.ReadDir(p)
			me, _ := os.ReadDir(m)
			if len(se) != len(me) {
				t.Errorf("%s: %d entries, source %d", rel, len(me), len(se))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return checked
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestVerityRequireRefusedWithoutFsverity: where the objects' file system has no fs-verity,
// --verity require is refused at mount time (overlayfs would accept it and then fail every
// object read with EIO), with ErrUnsupported, and nothing is mounted.
func TestVerityRequireRefusedWithoutFsverity(t *testing.T) {
	needRoot(t)
	src, objects, target := t.TempDir(), t.TempDir(), t.TempDir()
	makeSource(t, src)
	image := buildImage(t, src, objects)
	plan, err := NewPlan(image, []string{objects}, target, WithVerity(VerityRequire))
	if err != nil {
		t.Fatal(err)
	}
	if !hasParam(plan.Overlay("/m"), "verity", "require") || !strings.HasSuffix(plan.LegacyOverlay("/m", true), ",verity=require") {
		t.Fatalf("verity=require missing from %v / %s", plan.Overlay("/m"), plan.LegacyOverlay("/m", true))
	}
	// Every external file carries its fs-verity digest in the metacopy xattr.
	tree, err := composefs.ReadImageFile(image)
	if err != nil {
		t.Fatal(err)
	}
	big := tree.LookupPath("a/b/c/big")
	want, err := verity.FromFile(filepath.Join(src, "a/b/c/big"))
	if err != nil {
		t.Fatal(err)
	}
	if big == nil || big.Digest == nil || *big.Digest != want || big.Payload != composefs.DigestStoreName(want) {
		t.Fatalf("a/b/c/big: digest/payload not the fs-verity digest %s", want)
	}
	obj := filepath.Join(objects, composefs.DigestStoreName(want))
	f, err := os.Open(obj)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 68)
	buf[2] = 64
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.FS_IOC_MEASURE_VERITY, uintptr(unsafe.Pointer(&buf[0])))
	f.Close()
	if errno == 0 {
		t.Fatalf("%s has fs-verity here; this test needs objects without it", obj)
	}
	err = Mount(context.Background(), plan)
	if err == nil {
		Unmount(target)
		t.Fatal("--verity require mounted objects without fs-verity")
	}
	if !errors.Is(err, errdefs.ErrUnsupported) || !strings.Contains(err.Error(), "fs-verity") {
		t.Fatalf("mount: %v, want ErrUnsupported naming fs-verity", err)
	}
	if _, ok, _ := Find(target); ok {
		t.Fatal("something is mounted after the refusal")
	}
}

// TestMountNosuidNodev: by default a setuid-root binary in the image, run through the mount by
// an unprivileged user, does not get euid 0, and a device node cannot be opened; WithSuid and
// WithDev give back both.
func TestMountNosuidNodev(t *testing.T) {
	needRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatalf("setpriv is needed: %v", err)
	}
	src, objects := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "id"), mustRead(t, "/usr/bin/id"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(src, "id"), 0o4755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(src, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(filepath.Join(src, "null"), 0o666); err != nil {
		t.Fatal(err)
	}
	image := buildImage(t, src, objects)
	// The unprivileged user must reach the target.
	base, err := os.MkdirTemp("", "kura-nosuid-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	euid := func(target string) string {
		out, err := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", filepath.Join(target, "id"), "-u").CombinedOutput()
		if err != nil {
			t.Fatalf("running the image's setuid id as nobody: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, c := range []struct {
		name      string
		opts      []Option
		wantEUID  string
		devOpens  bool
		wantAttrs uint64
	}{
		{"default", nil, "65534", false, unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV},
		{"suid+dev", []Option{WithSuid(), WithDev()}, "0", true, unix.MOUNT_ATTR_RDONLY},
	} {
		target := filepath.Join(base, c.name)
		if err := os.Mkdir(target, 0o755); err != nil {
			t.Fatal(err)
		}
		plan, err := NewPlan(image, []string{objects}, target, c.opts...)
		if err != nil {
			t.Fatal(err)
		}
		if attrs, _ := plan.attrs(); attrs != c.wantAttrs {
			t.Errorf("%s: mount attributes %#x, want %#x", c.name, attrs, c.wantAttrs)
		}
		if err := Mount(context.Background(), plan); err != nil {
			t.Fatal(err)
		}
		got := euid(target)
		f, oerr := os.OpenFile(filepath.Join(target, "null"), os.O_WRONLY, 0)
		if oerr == nil {
			f.Close()
		}
		if err := Unmount(target); err != nil {
			t.Fatal(err)
		}
		if got != c.wantEUID {
			t.Errorf("%s: the image's setuid-root id run by nobody has euid %s, want %s", c.name, got, c.wantEUID)
		}
		if (oerr == nil) != c.devOpens {
			t.Errorf("%s: opening the image's device node: %v, want it to open: %v", c.name, oerr, c.devOpens)
		}
	}
}

// TestUnmountOnlyKuraMounts: Unmount refuses a mount that is not composefs (a tmpfs), and a
// second mount on a composefs target is refused rather than stacked.
func TestUnmountOnlyKuraMounts(t *testing.T) {
	needRoot(t)
	tmpfs := t.TempDir()
	if err := unix.Mount("tmpfs", tmpfs, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(tmpfs, unix.MNT_DETACH)
	err := Unmount(tmpfs)
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "not a composefs mount") {
		t.Fatalf("unmounting a tmpfs: %v, want ErrInvalid", err)
	}
	if e, ok := findAny(t, tmpfs); !ok || e.FSType != "tmpfs" {
		t.Fatal("the tmpfs is gone")
	}
	if err := Unmount(t.TempDir()); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("unmounting a plain directory: %v, want ErrNotFound", err)
	}

	src, objects, target := t.TempDir(), t.TempDir(), t.TempDir()
	makeSource(t, src)
	plan, err := NewPlan(buildImage(t, src, objects), []string{objects}, target)
	if err != nil {
		t.Fatal(err)
	}
	if err := Mount(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	defer Unmount(target)
	first, ok, err := Find(target)
	if err != nil || !ok {
		t.Fatalf("Find after Mount: %v %v", ok, err)
	}
	err = Mount(context.Background(), plan)
	if !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("second mount on one target: %v, want ErrAlreadyExists", err)
	}
	n := 0
	for _, e := range readMounts(t) {
		if e.Point == target {
			n++
		}
	}
	if top, _, _ := Find(target); n != 1 || top.ID != first.ID {
		t.Fatalf("%d mounts at the target after the refused second mount", n)
	}
	if err := Unmount(target); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := Find(target); ok {
		t.Fatal("still mounted after Unmount")
	}
}

func readMounts(t *testing.T) []mountinfo.Entry {
	t.Helper()
	entries, err := mountinfo.Read("self")
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

func findAny(t *testing.T, point string) (mountinfo.Entry, bool) {
	return mountinfo.Top(readMounts(t), point)
}

func hasParam(ps []Param, k, v string) bool {
	for _, p := range ps {
		if p.Key == k && p.Value == v {
			return true
		}
	}
	return false
}

func TestPlanWithoutRoot(t *testing.T) {
	src, objects := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), bytes.Repeat([]byte("x"), 100), 0o644); err != nil {
		t.Fatal(err)
	}
	image := buildImage(t, src, objects)
	plan, err := NewPlan(image, []string{"/objs,1"}, "/mnt", WithUpper("/up", "/work"), WithVerity(VerityOn))
	if err != nil {
		t.Fatal(err)
	}
	wantEROFS := []Param{{"source", image}, {"ro", ""}, {"noacl", ""}}
	if !equalParams(plan.EROFS, wantEROFS) {
		t.Errorf("EROFS params %v, want %v", plan.EROFS, wantEROFS)
	}
	wantOverlay := []Param{{"source", "composefs"}, {"metacopy", "on"}, {"redirect_dir", "on"}, {"verity", "on"},
		{"lowerdir+", "/run/img"}, {"datadir+", "/objs,1"}, {"upperdir", "/up"}, {"workdir", "/work"}}
	if got := plan.Overlay("/run/img"); !equalParams(got, wantOverlay) {
		t.Errorf("overlay params %v, want %v", got, wantOverlay)
	}
	if got, want := plan.LegacyOverlay("/run/img", true), `metacopy=on,redirect_dir=on,lowerdir=/run/img::/objs\,1,upperdir=/up,workdir=/work,verity=on`; got != want {
		t.Errorf("legacy options %s, want %s", got, want)
	}
	if plan.ReadOnly() {
		t.Error("plan with upper dir is read-only")
	}
	if _, err := NewPlan(image, nil, "/mnt"); err == nil {
		t.Error("plan without object dir accepted")
	}
	if _, err := NewPlan(image, []string{"/o"}, "/mnt", WithVerity("maybe")); err == nil {
		t.Error("bad verity mode accepted")
	}
}

func equalParams(a, b []Param) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestMountWithoutRoot checks the error an unprivileged user gets. As root it re-runs itself as
// nobody.
func TestMountWithoutRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		image := os.Getenv("KURA_TEST_IMAGE")
		if image == "" {
			src, objects := t.TempDir(), t.TempDir()
			image = buildImage(t, src, objects)
		}
		plan, err := NewPlan(image, []string{"/nonexistent"}, "/nonexistent")
		if err != nil {
			t.Fatal(err)
		}
		err = Mount(context.Background(), plan)
		if !errors.Is(err, errdefs.ErrPermission) || !strings.Contains(err.Error(), "kura checkout") {
			t.Fatalf("unprivileged mount: %v, want ErrPermission suggesting kura checkout", err)
		}
		return
	}
	dir, err := os.MkdirTemp("", "kura-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "mount.test")
	if err := os.WriteFile(exe, mustRead(t, os.Args[0]), 0o755); err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	image := buildImage(t, src, t.TempDir())
	if err := os.WriteFile(filepath.Join(dir, "image"), mustRead(t, image), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run", "^TestMountWithoutRoot$", "-test.v")
	cmd.Env = append(os.Environ(), "KURA_TEST_IMAGE="+filepath.Join(dir, "image"))
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS") {
		t.Fatalf("as nobody: %v\n%s", err, out)
	}
}

// TestMountFallbacks mounts through a loop device and with legacy overlay options, the paths
// older kernels take, and reads a file through them.
func TestMountFallbacks(t *testing.T) {
	needRoot(t)
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		testkit.Skip(t, "no loop devices")
	}
	src, objects := t.TempDir(), t.TempDir()
	makeSource(t, src)
	image := buildImage(t, src, objects)
	forceLoop, forceLegacyOverlay = true, true
	defer func() { forceLoop, forceLegacyOverlay = false, false }()
	target := t.TempDir()
	plan, err := NewPlan(image, []string{objects}, target)
	if err != nil {
		t.Fatal(err)
	}
	if err := Mount(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := Unmount(target); err != nil {
			t.Error(err)
		}
	}()
	if got, want := mustRead(t, filepath.Join(target, "a/b/c/big")), mustRead(t, filepath.Join(src, "a/b/c/big")); !bytes.Equal(got, want) {
		t.Fatal("content through loop device and legacy overlay differs")
	}
	backing, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	attached := false
	for _, b := range backing {
		if strings.TrimSpace(string(mustRead(t, b))) == image {
			attached = true
		}
	}
	if !attached {
		t.Errorf("no loop device backed by %s", image)
	}
	info := string(mustRead(t, "/proc/self/mountinfo"))
	if !strings.Contains(info, target+" ") || !strings.Contains(info, "lowerdir=") {
		t.Errorf("legacy overlay not visible in mountinfo")
	}
}
