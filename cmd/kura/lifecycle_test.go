package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/registry/registrytest"
	"github.com/kura-oci/kura/store"
)

// The lifecycle tests run the kura binary, as a user would, against a store of their own: mounts
// and checkouts are uses of an image that rmi and gc respect (issue 13, cases 2, 4 and 6).

// lifecycleKura is the kura binary under test: testkit's build of this checkout, or $KURA_BIN (to
// run these tests against another build, e.g. an older commit's).
func lifecycleKura(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("KURA_BIN"); b != "" {
		return b
	}
	return testkit.Kura(t)
}

// kuraRun runs kura with --root root and returns its stdout, stderr and exit code.
func kuraRun(t *testing.T, root string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(lifecycleKura(t), append([]string{"--root", root}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("kura %s: %v", strings.Join(args, " "), err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

func kuraOK(t *testing.T, root string, args ...string) string {
	t.Helper()
	out, errOut, code := kuraRun(t, root, args...)
	if code != 0 {
		t.Fatalf("kura %s: exit %d\n%s", strings.Join(args, " "), code, errOut)
	}
	return out
}

func needRootCLI(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts: run it as root")
	}
}

// lifecycleStore makes a store (in a directory others may traverse, for setpriv) holding image
// "img": a 100 KiB file (an object, read through mounts), a setuid-root copy of id(1), and a
// device node. It returns the store root, a scratch directory beside it and the file's content.
func lifecycleStore(t *testing.T) (root, scratch string, data []byte) {
	t.Helper()
	base, err := os.MkdirTemp("", "kura-lifecycle-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	data = make([]byte, 100<<10)
	rand.New(rand.NewSource(7)).Read(data)
	id, err := os.ReadFile("/usr/bin/id")
	if err != nil {
		t.Fatal(err)
	}
	layer := tartest.Tar(t, tartest.Bytes("data", data), tartest.Bytes("id", id).Mode(0o4755), tartest.Device("null", tar.TypeChar, 1, 3))
	tarPath := filepath.Join(base, "img.tar")
	if err := os.WriteFile(tarPath, layer, 0o644); err != nil {
		t.Fatal(err)
	}
	root, scratch = filepath.Join(base, "store"), filepath.Join(base, "scratch")
	if err := os.Mkdir(scratch, 0o755); err != nil {
		t.Fatal(err)
	}
	kuraOK(t, root, "import", tarPath, "img")
	return root, scratch, data
}

func mountTarget(t *testing.T, scratch, name string) string {
	t.Helper()
	target := filepath.Join(scratch, name)
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	return target
}

func psUses(t *testing.T, root string) []store.Use {
	t.Helper()
	var uses []store.Use
	if err := json.Unmarshal([]byte(kuraOK(t, root, "--json", "ps")), &uses); err != nil {
		t.Fatal(err)
	}
	return uses
}

// TestMountIsAUse is case 2 of issue 13: kura mount IMG MNT; kura rmi IMG; kura gc used to free
// the objects under the mount. Now rmi refuses (exit 8, naming the mount), rmi --force removes
// the name only, gc keeps the image, every file reads right, and after kura umount gc frees it.
// It also checks case 4 through the CLI: the mount is nosuid and nodev.
func TestMountIsAUse(t *testing.T) {
	needRootCLI(t)
	root, scratch, data := lifecycleStore(t)
	mnt := mountTarget(t, scratch, "mnt")
	kuraOK(t, root, "mount", "img", mnt)
	_, errOut, code := kuraRun(t, root, "rmi", "img")
	if code != errdefs.ExitInUse || !strings.Contains(errOut, mnt) {
		t.Errorf("rmi of a mounted image: exit %d, %s; want %d naming %s", code, errOut, errdefs.ExitInUse, mnt)
	}
	if code != 0 {
		kuraOK(t, root, "rmi", "--force", "img")
	}
	if out := kuraOK(t, root, "images"); !strings.Contains(out, "<none>") {
		t.Errorf("kura images after rmi --force of an image in use:\n%s\nwant it listed as <none>", out)
	}
	kuraOK(t, root, "gc")
	if got, err := os.ReadFile(filepath.Join(mnt, "data")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("reading through the mount after rmi and gc: %v", err)
	}
	uses := psUses(t, root)
	if len(uses) != 1 || uses[0].Kind != store.UseMount || uses[0].Target != mnt || uses[0].MountID == 0 {
		t.Fatalf("kura ps after mount: %+v", uses)
	}

	// Case 4: nosuid, nodev.
	out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", filepath.Join(mnt, "id"), "-u").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "65534" {
		t.Errorf("the image's setuid-root id run by nobody through the mount: %q, %v; want euid 65534", out, err)
	}
	if f, err := os.OpenFile(filepath.Join(mnt, "null"), os.O_WRONLY, 0); err == nil {
		f.Close()
		t.Error("opened the image's device node through the mount")
	}

	kuraOK(t, root, "umount", mnt)
	if uses := psUses(t, root); len(uses) != 0 {
		t.Fatalf("kura ps after umount: %+v", uses)
	}
	var gc gcJSON
	if err := json.Unmarshal([]byte(kuraOK(t, root, "--json", "gc")), &gc); err != nil {
		t.Fatal(err)
	}
	if gc.Images != 1 || gc.Objects == 0 {
		t.Fatalf("gc after umount: %+v, want the image and its objects freed", gc)
	}
}

// TestMountRecordsDropped: a mount taken down by umount(8) instead of kura umount (or lost to a
// reboot) leaves a record that is found stale and dropped, and gc then frees the image.
func TestMountRecordsDropped(t *testing.T) {
	needRootCLI(t)
	root, scratch, _ := lifecycleStore(t)
	mnt := mountTarget(t, scratch, "mnt")
	kuraOK(t, root, "mount", "img", mnt)
	kuraOK(t, root, "rmi", "--force", "img")
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	var gc gcJSON
	if err := json.Unmarshal([]byte(kuraOK(t, root, "--json", "gc")), &gc); err != nil {
		t.Fatal(err)
	}
	if gc.Images != 1 {
		t.Fatalf("gc after a manual umount: %+v, want the image freed", gc)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "uses")); len(ents) != 0 {
		t.Fatalf("records left: %v", ents)
	}
}

// TestUmountOnlyKuraAndNoStacking: kura umount refuses an unrelated tmpfs (exit 4) and leaves
// it mounted; a second kura mount on one target is refused and leaves one mount and one record.
func TestUmountOnlyKuraAndNoStacking(t *testing.T) {
	needRootCLI(t)
	root, scratch, data := lifecycleStore(t)
	tmpfs := mountTarget(t, scratch, "tmpfs")
	if err := unix.Mount("tmpfs", tmpfs, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmpfs, "keep"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := kuraRun(t, root, "umount", tmpfs); code != errdefs.ExitInvalid || !strings.Contains(errOut, "not a composefs mount") {
		t.Fatalf("kura umount of a tmpfs: exit %d, %s", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(tmpfs, "keep")); err != nil {
		t.Fatalf("the tmpfs was unmounted: %v", err)
	}

	mnt := mountTarget(t, scratch, "mnt")
	kuraOK(t, root, "mount", "img", mnt)
	if _, errOut, code := kuraRun(t, root, "mount", "img", mnt); code == 0 || !strings.Contains(errOut, "already") {
		t.Fatalf("second mount on one target: exit %d, %s", code, errOut)
	}
	if uses := psUses(t, root); len(uses) != 1 {
		t.Fatalf("records after the refused second mount: %+v", uses)
	}
	kuraOK(t, root, "umount", mnt)
	if _, err := os.Stat(filepath.Join(mnt, "data")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after one umount the target still shows the image (stacked mounts?): %v", err)
	}
	// Two mounts of one target started together (both wait on one pipe, then go at once):
	// exactly one wins, the other is refused.
	for round := 0; round < 20; round++ {
		gate, release, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		codes := make(chan int, 2)
		for i := 0; i < 2; i++ {
			cmd := exec.Command("sh", "-c", `read _; exec "$0" "$@"`, lifecycleKura(t), "--root", root, "mount", "img", mnt)
			cmd.Stdin = gate
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() {
				err := cmd.Wait()
				var ee *exec.ExitError
				switch {
				case err == nil:
					codes <- 0
				case errors.As(err, &ee):
					codes <- ee.ExitCode()
				default:
					codes <- -1
				}
			}()
		}
		gate.Close()
		release.Write([]byte("go\ngo\n"))
		release.Close()
		a, b := <-codes, <-codes
		if (a == 0) == (b == 0) {
			t.Fatalf("round %d: two concurrent mounts on one target exited %d and %d, want one success", round, a, b)
		}
		kuraOK(t, root, "umount", mnt)
		if _, err := os.Stat(filepath.Join(mnt, "data")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("round %d: after one umount the target still shows the image (stacked): %v", round, err)
		}
	}
	_ = data
}

// TestVerityRequireRefused: on a store without fs-verity, mount --verity require fails at
// mount time (exit 6) and leaves no mount and no record.
func TestVerityRequireRefused(t *testing.T) {
	needRootCLI(t)
	root, scratch, _ := lifecycleStore(t)
	mnt := mountTarget(t, scratch, "mnt")
	_, errOut, code := kuraRun(t, root, "mount", "--verity", "require", "img", mnt)
	if code != errdefs.ExitUnsupported || !strings.Contains(errOut, "fs-verity") {
		t.Fatalf("mount --verity require without fs-verity: exit %d, %s", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(mnt, "data")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("something is mounted: %v", err)
	}
	if uses := psUses(t, root); len(uses) != 0 {
		t.Fatalf("records after a refused mount: %+v", uses)
	}
}

// TestCheckoutIsAUse: a checkout holds its image until its directory goes or it is released.
func TestCheckoutIsAUse(t *testing.T) {
	root, scratch, data := lifecycleStore(t)
	dir := filepath.Join(scratch, "rootfs")
	kuraOK(t, root, "checkout", "--skip-devices", "img", dir)
	uses := psUses(t, root)
	if len(uses) != 1 || uses[0].Kind != store.UseCheckout || uses[0].Target != dir {
		t.Fatalf("kura ps after checkout: %+v", uses)
	}
	if _, errOut, code := kuraRun(t, root, "rmi", "img"); code != errdefs.ExitInUse || !strings.Contains(errOut, dir) {
		t.Fatalf("rmi of a checked-out image: exit %d, %s", code, errOut)
	}
	kuraOK(t, root, "checkout", "--release", dir)
	if got, err := os.ReadFile(filepath.Join(dir, "data")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("release changed the tree: %v", err)
	}
	out := kuraOK(t, root, "rmi", "img")
	if !strings.Contains(out, "deleted sha256:") {
		t.Fatalf("rmi after release: %q, want the image deleted at once", out)
	}

	// A checkout removed with rm -rf ends its use.
	root2, scratch2, _ := lifecycleStore(t)
	dir2 := filepath.Join(scratch2, "rootfs")
	kuraOK(t, root2, "checkout", "--skip-devices", "img", dir2)
	if err := os.RemoveAll(dir2); err != nil {
		t.Fatal(err)
	}
	if out := kuraOK(t, root2, "rmi", "img"); !strings.Contains(out, "deleted sha256:") {
		t.Fatalf("rmi after rm -rf of the checkout: %q", out)
	}
}

// TestRmiRaceCLI is case 6 of issue 13 through the binary: kura rmi processes race a pull
// (PutImage and SetRef under the shared lock, in this process); a reader checks under the shared
// lock, for the whole of each round, that the ref never names a missing image.
func TestRmiRaceCLI(t *testing.T) {
	root, _, _ := lifecycleStore(t)
	ctx := context.Background()
	handle := func() *store.Store {
		s := teststore.Open(t, teststore.At(root))
		return s
	}
	pull, reader := handle(), handle()
	img, err := pull.ResolveImage(ctx, "img")
	if err != nil {
		t.Fatal(err)
	}
	manifest, _ := pull.ImageManifest(ctx, img.ID)
	config, _ := pull.ImageConfig(ctx, img.ID)
	pullOnce := func() error {
		unlock, err := pull.RLock(ctx)
		if err != nil {
			return err
		}
		defer unlock()
		if _, err := pull.PutImage(ctx, manifest, config); err != nil {
			return err
		}
		return pull.SetRef(ctx, "img", img.ID)
	}
	check := func() error {
		unlock, err := reader.RLock(ctx)
		if err != nil {
			return err
		}
		defer unlock()
		if id, err := reader.Ref(ctx, "img"); err == nil {
			if _, err := reader.Image(ctx, id); err != nil {
				return fmt.Errorf("ref img names a missing image: %w", err)
			}
		}
		return nil
	}
	removed := 0
	for i := 0; i < 60; i++ {
		done := make(chan struct{})
		checked := make(chan error, 1)
		go func() {
			for {
				if err := check(); err != nil {
					checked <- err
					return
				}
				select {
				case <-done:
					checked <- check()
					return
				default:
				}
			}
		}()
		pulled := make(chan error, 1)
		go func() { pulled <- pullOnce() }()
		out, errOut, code := kuraRun(t, root, "rmi", "img")
		perr := <-pulled
		close(done)
		if err := <-checked; err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if perr != nil {
			t.Fatal(perr)
		}
		switch code {
		case 0:
			removed += strings.Count(out, "untagged")
		case errdefs.ExitNotFound:
		default:
			t.Fatalf("kura rmi: exit %d: %s", code, errOut)
		}
	}
	if removed == 0 {
		t.Fatal("rmi never removed the name: the race was not run")
	}
	kuraOK(t, root, "fsck")
}

// TestUsesSoak: ten composefs mounts and ten hardlink checkouts stay in use while pulls from a
// registry (of the same layers as zstd:chunked images: other image IDs sharing every object),
// imports, rmi and gc run in loops; every file read through them hashes right throughout, rmi
// of an image in use is refused, and fsck --deep (every object and variant re-hashed) is clean
// after. KURA_SOAK sets the duration (default 15s; the long form is 5m).
func TestUsesSoak(t *testing.T) {
	needRootCLI(t)
	dur := 15 * time.Second
	if d, err := time.ParseDuration(os.Getenv("KURA_SOAK")); err == nil {
		dur = d
	}
	root, scratch, _ := lifecycleStore(t)
	const images = 3
	tars := make([]string, images)
	want := make([]map[string][]byte, images)
	for i := range tars {
		want[i] = map[string][]byte{}
		var entries []tartest.Entry
		rng := rand.New(rand.NewSource(int64(i)))
		for f := 0; f < 20; f++ {
			data := make([]byte, 100+rng.Intn(200<<10))
			rng.Read(data)
			if f < 5 {
				copy(data, "shared by every image") // shared prefix only: still distinct objects
			}
			name := fmt.Sprintf("f%02d", f)
			want[i][name] = data
			entries = append(entries, tartest.Bytes(name, data))
		}
		tars[i] = filepath.Join(scratch, fmt.Sprintf("soak%d.tar", i))
		if err := os.WriteFile(tars[i], tartest.Tar(t, entries...), 0o644); err != nil {
			t.Fatal(err)
		}
		kuraOK(t, root, "import", tars[i], fmt.Sprintf("soak%d", i))
	}
	reg := registrytest.New(t)
	remote := func(i int) string { return fmt.Sprintf("docker://%s/soak%d:latest", reg.Host, i%images) }
	creds := []string{"--creds", registrytest.Username + ":" + registrytest.Password, "--tls-verify=false"}
	for i := 0; i < images; i++ {
		kuraOK(t, root, append([]string{"push", fmt.Sprintf("soak%d", i), remote(i)}, creds...)...)
	}
	type use struct {
		dir string
		img int
	}
	var uses []use
	for n := 0; n < 10; n++ {
		mnt := mountTarget(t, scratch, fmt.Sprintf("mnt%d", n))
		kuraOK(t, root, "mount", fmt.Sprintf("soak%d", n%images), mnt)
		dir := filepath.Join(scratch, fmt.Sprintf("co%d", n))
		kuraOK(t, root, "checkout", "--link", "hardlink", fmt.Sprintf("soak%d", n%images), dir)
		uses = append(uses, use{mnt, n % images}, use{dir, n % images})
	}
	t.Cleanup(func() {
		for _, u := range uses {
			unix.Unmount(u.dir, unix.MNT_DETACH)
		}
	})

	deadline := time.Now().Add(dur)
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[string]int{}
	loop := func(name string, args func(i int) []string, okCodes ...int) {
		defer wg.Done()
		for i := 0; time.Now().Before(deadline); i++ {
			a := args(i)
			_, errOut, code := kuraRun(t, root, a...)
			ok := code == 0
			for _, c := range okCodes {
				ok = ok || code == c
			}
			if !ok {
				t.Errorf("kura %s: exit %d: %s", strings.Join(a, " "), code, errOut)
				return
			}
			mu.Lock()
			counts[name]++
			mu.Unlock()
		}
	}
	wg.Add(6)
	go loop("import", func(i int) []string { return []string{"import", tars[i%images], fmt.Sprintf("soak%d", i%images)} })
	go loop("pull", func(i int) []string { return append([]string{"pull", remote(i)}, creds...) })
	go loop("rmi", func(i int) []string { return []string{"rmi", "--force", fmt.Sprintf("soak%d", i%images)} }, errdefs.ExitNotFound)
	go loop("rmi-pulled", func(i int) []string { return []string{"rmi", strings.TrimPrefix(remote(i), "docker://")} }, errdefs.ExitNotFound)
	go loop("gc", func(int) []string { return []string{"gc"} })
	go func() { // the reader
		defer wg.Done()
		for time.Now().Before(deadline) {
			for _, u := range uses {
				for name, data := range want[u.img] {
					got, err := os.ReadFile(filepath.Join(u.dir, name))
					if err != nil || !bytes.Equal(got, data) {
						t.Errorf("%s/%s: %v (content differs: %v)", u.dir, name, err, err == nil)
						return
					}
				}
			}
			mu.Lock()
			counts["reads"]++
			mu.Unlock()
		}
	}()
	wg.Wait()
	t.Logf("%v: %v", dur, counts)
	for _, loop := range []string{"gc", "rmi", "rmi-pulled", "import", "pull", "reads"} {
		if counts[loop] == 0 {
			t.Fatalf("the %s loop never ran: %v", loop, counts)
		}
	}
	kuraOK(t, root, "fsck", "--deep")
	inUse := psUses(t, root)[0].Image.String()
	if _, errOut, code := kuraRun(t, root, "rmi", inUse); code != errdefs.ExitInUse {
		t.Fatalf("rmi of image %s, in use: exit %d, want %d: %s", inUse, code, errdefs.ExitInUse, errOut)
	}
	if got := psUses(t, root); len(got) != 20 {
		t.Fatalf("kura ps lists %d uses, want 20", len(got))
	}
	for _, u := range uses {
		if strings.Contains(filepath.Base(u.dir), "mnt") {
			kuraOK(t, root, "umount", u.dir)
		} else if err := os.RemoveAll(u.dir); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < images; i++ {
		kuraRun(t, root, "rmi", fmt.Sprintf("soak%d", i))
		kuraRun(t, root, "rmi", strings.TrimPrefix(remote(i), "docker://"))
	}
	kuraOK(t, root, "rmi", "img")
	kuraOK(t, root, "gc")
	if out := kuraOK(t, root, "images"); strings.Count(out, "\n") != 1 {
		t.Fatalf("images left after every use ended and every name was removed:\n%s", out)
	}
	kuraOK(t, root, "fsck", "--deep")
}

// TestMountInOtherNamespace: a mount made in another mount namespace is checked there, through
// a process still in it: live while the namespace lives (this namespace's mountinfo does not
// show it), gone once its last process exits.
func TestMountInOtherNamespace(t *testing.T) {
	needRootCLI(t)
	root, scratch, _ := lifecycleStore(t)
	mnt := mountTarget(t, scratch, "mnt")
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c",
		`"$0" --root "$1" mount img "$2" >/dev/null && echo mounted && { read x; true; }`, lifecycleKura(t), root, mnt)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 8)
	if n, _ := stdout.Read(line); string(line[:n]) != "mounted\n" {
		stdin.Close()
		cmd.Wait()
		t.Fatalf("mount in a new namespace: %q\n%s", line[:n], stderr.String())
	}
	if _, err := os.Stat(filepath.Join(mnt, "data")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the other namespace's mount is visible here: %v", err)
	}
	uses := psUses(t, root)
	if _, errOut, code := kuraRun(t, root, "rmi", "img"); code != errdefs.ExitInUse {
		t.Errorf("rmi of an image mounted in another namespace: exit %d, %s", code, errOut)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	if len(uses) != 1 || uses[0].Kind != store.UseMount {
		t.Fatalf("kura ps while the other namespace lives: %+v, want its mount", uses)
	}
	if got := psUses(t, root); len(got) != 0 {
		t.Fatalf("kura ps after the namespace ended: %+v", got)
	}
}
