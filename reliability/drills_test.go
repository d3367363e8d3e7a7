package reliability

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/registry/registrytest"
)

// killPoints is how many random kill points each crash drill tries: 10 in CI, 50 with
// KURA_DRILLS=long.
func killPoints() int {
	if longDrills() {
		return 50
	}
	return 10
}

// kura is the real binary, built once per test process.
func kura(t testing.TB) string { return testkit.Kura(t) }

// run runs kura to completion and returns its combined output.
func run(t testing.TB, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(kura(t), args...).CombinedOutput()
	return string(out), err
}

func mustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, err := run(t, args...)
	if err != nil {
		t.Fatalf("kura %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// runKilled starts kura and sends it SIGKILL after delay (the fault: a random point of its run,
// drawn from the measured length of an uninterrupted run). It reports whether the kill landed
// before the command finished on its own.
func runKilled(t testing.TB, delay time.Duration, args ...string) bool {
	t.Helper()
	cmd := exec.Command(kura(t), args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
		return false
	case <-time.After(delay):
		cmd.Process.Kill()
		<-done
		return true
	}
}

// timed runs kura once to completion and returns how long it took.
func timed(t testing.TB, args ...string) time.Duration {
	t.Helper()
	start := time.Now()
	mustRun(t, args...)
	return time.Since(start)
}

// measureRuns is how many uninterrupted runs a drill times to draw its kill points from.
const measureRuns = 3

// fastest returns the shortest of measureRuns durations that run(k) returns (k = 0, 1, ...):
// the kill points are drawn from it. One run timed during a burst of load (other tests of a
// parallel go test, other jobs on the machine) can take several times as long as the drill's
// runs, and then few kills land before the command ends, failing the drill (drillCount.check).
func fastest(run func(k int) time.Duration) time.Duration {
	d := run(0)
	for k := 1; k < measureRuns; k++ {
		d = min(d, run(k))
	}
	return d
}

// drillImage is an image of zstd:chunked layers for the drills, pushed to a registry.
type drillImage struct {
	name     string
	diffIDs  []digest.Digest
	manifest digest.Digest
}

// genLayer makes a layer of files: seed decides the content, so equal seeds share files.
func genLayer(t testing.TB, seed int64, files int) []byte {
	rng := rand.New(rand.NewSource(seed))
	var entries []tarEntry
	entries = append(entries, dir(fmt.Sprintf("l%d/", seed)))
	for i := 0; i < files; i++ {
		size := 1 + rng.Intn(64<<10)
		if i%20 == 0 {
			size = 1 << 20
		}
		b := make([]byte, size)
		for j := range b {
			b[j] = "abcdefghij\n"[rng.Intn(11)]
		}
		rng.Read(b[:size/3])
		e := reg(fmt.Sprintf("l%d/f%04d", seed, i), 0o644, "")
		e.Data, e.Header.Size = b, int64(size)
		entries = append(entries, e)
	}
	return tartest.Tar(t, entries...)
}

// pushDrillImage converts layer tars with the product's writer and pushes them as repo:latest.
func pushDrillImage(t testing.TB, reg *registrytest.Registry, repo string, tars ...[]byte) drillImage {
	t.Helper()
	built := imagetest.Chunked(t, tars...)
	built.Push(t, reg, repo, "latest")
	return drillImage{name: reg.Host + "/" + repo + ":latest", diffIDs: built.DiffIDs, manifest: digest.FromBytes(built.Manifest)}
}

func pullArgs(root string, img drillImage) []string {
	return []string{"pull", "docker://" + img.name, "--creds", registrytest.Username + ":" + registrytest.Password,
		"--tls-verify=false", "--root", root, "--json"}
}

// fsckClean runs kura fsck; temp files left by the kill are allowed, problems are not.
func fsckClean(t testing.TB, root string) {
	t.Helper()
	out := mustRun(t, "fsck", "--root", root, "--json")
	var rep struct { // docs/json.md, kura fsck
		Clean    bool     `json:"clean"`
		Problems []string `json:"problems"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("fsck output %q: %v", out, err)
	}
	if !rep.Clean {
		t.Fatalf("fsck: %v", rep.Problems)
	}
}

// checkImage opens the store and checks that the image is recorded under its manifest digest and
// that every layer exports to its DiffID (the same result as an uninterrupted pull).
func checkImage(t testing.TB, root string, img drillImage) {
	t.Helper()
	s := teststore.Open(t, teststore.At(root))
	got, err := s.ResolveImage(context.Background(), img.name)
	if err != nil {
		t.Fatalf("image %s: %v", img.name, err)
	}
	if got.ID != img.manifest {
		t.Fatalf("image %s is %s, want %s", img.name, got.ID, img.manifest)
	}
	for _, d := range img.diffIDs {
		if e, err := exportDigest(t, s, d); err != nil || e != d {
			t.Fatalf("layer %s exports to %s: %v", d, e, err)
		}
	}
}

// drillSetup is a registry with three images sharing layers pairwise: A = L1+L2, B = L2+L3,
// C = L1+L3.
func drillSetup(t testing.TB) (*registrytest.Registry, []drillImage) {
	t.Helper()
	reg := registrytest.New(t)
	l1, l2, l3 := genLayer(t, 1, 40), genLayer(t, 2, 40), genLayer(t, 3, 40)
	return reg, []drillImage{pushDrillImage(t, reg, "a", l1, l2), pushDrillImage(t, reg, "b", l2, l3), pushDrillImage(t, reg, "c", l1, l3)}
}

type drillCount struct{ tried, killed, passed int }

// more says whether to try another kill point: until killPoints() kills landed before the command
// ended by itself (a run that finished first tests nothing), giving up after 5 times as many tries.
func (d drillCount) more() bool { return d.killed < killPoints() && d.tried < 5*killPoints() }

// killDelay draws a kill point in the first 90% of an uninterrupted run's duration d.
func killDelay(rng *rand.Rand, d time.Duration) time.Duration {
	return time.Duration(rng.Int63n(int64(d) * 9 / 10))
}

func (d drillCount) check(t testing.TB, what string) {
	t.Helper()
	if d.killed < killPoints() {
		t.Errorf("%s: only %d of %d kills landed before the command ended", what, d.killed, d.tried)
	}
}

func (d drillCount) String() string {
	return fmt.Sprintf("%d kill points tried (%d landed before the end), %d recovered", d.tried, d.killed, d.passed)
}

// TestCrashDuringPull kills kura pull at random points. After each kill fsck is clean, the
// retried pull stores the identical image, and after a gc the store holds exactly what an
// uninterrupted pull and a gc leave (what the kill left is gone). Half of the points pull into a
// store that holds a sibling image (a partial pull with reuse); the other half into an empty one.
func TestCrashDuringPull(t *testing.T) {
	_, imgs := drillSetup(t)
	work := t.TempDir()
	seeded := filepath.Join(work, "seeded")
	mustRun(t, pullArgs(seeded, imgs[1])...)
	d := fastest(func(k int) time.Duration {
		return timed(t, pullArgs(filepath.Join(work, fmt.Sprint("measure", k)), imgs[0])...)
	})
	want := [2]string{ // by i%2: into an empty store, into the seeded one
		uninterruptedPull(t, "", filepath.Join(work, "want0"), imgs[0]),
		uninterruptedPull(t, seeded, filepath.Join(work, "want1"), imgs[0]),
	}
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	var c drillCount
	for i := 0; c.more(); i++ {
		root := filepath.Join(work, fmt.Sprint("p", i))
		if i%2 == 1 {
			copyDir(t, seeded, root)
		}
		c.tried++
		if runKilled(t, killDelay(rng, d), pullArgs(root, imgs[0])...) {
			c.killed++
		}
		fsckClean(t, root)
		totalsRight(t, root, false)
		mustRun(t, pullArgs(root, imgs[0])...)
		fsckClean(t, root)
		checkImage(t, root, imgs[0])
		mustRun(t, "gc", "--root", root)
		totalsRight(t, root, true)
		if got := objectSet(t, root); got != want[i%2] {
			t.Fatalf("after a killed and a retried pull and a gc the store differs from an uninterrupted pull's:\n%s\nwant\n%s", got, want[i%2])
		}
		c.passed++
		os.RemoveAll(root)
	}
	c.check(t, "pull")
	t.Logf("pull (uninterrupted %v): %v", d.Round(time.Millisecond), c)
}

// uninterruptedPull pulls img into root (a copy of from, unless from is empty), runs gc, and
// returns what the store then holds.
func uninterruptedPull(t testing.TB, from, root string, img drillImage) string {
	t.Helper()
	if from != "" {
		copyDir(t, from, root)
	}
	mustRun(t, pullArgs(root, img)...)
	mustRun(t, "gc", "--root", root)
	return objectSet(t, root)
}

// TestCrashDuringGC kills kura gc at random points in a store where gc has much to remove
// (images, a layer, objects). After each kill fsck is clean, the retried gc succeeds, and the
// store holds exactly what an uninterrupted gc leaves. At every other kill point a removed image
// is pulled and removed again before the retry, so that what the killed gc left (in tmp/, in
// the chunk index) meets the same names again.
func TestCrashDuringGC(t *testing.T) {
	_, imgs := drillSetup(t)
	work := t.TempDir()
	template := filepath.Join(work, "template")
	for _, img := range imgs {
		mustRun(t, pullArgs(template, img)...)
	}
	rmiLeavingImages(t, template, imgs[0].name, imgs[2].name)
	if ents, err := os.ReadDir(filepath.Join(template, "images")); err != nil || len(ents) != 3 {
		t.Fatalf("rmi under a held lock left %d image records, want all 3 for gc: %v", len(ents), err)
	}
	d := fastest(func(k int) time.Duration {
		ref := filepath.Join(work, fmt.Sprint("ref", k))
		copyDir(t, template, ref)
		return timed(t, "gc", "--root", ref)
	})
	want := objectSet(t, filepath.Join(work, "ref0"))
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	var c drillCount
	for i := 0; c.more(); i++ {
		root := filepath.Join(work, fmt.Sprint("g", i))
		copyDir(t, template, root)
		c.tried++
		if runKilled(t, killDelay(rng, d), "gc", "--root", root) {
			c.killed++
		}
		fsckClean(t, root)
		totalsRight(t, root, false)
		if i%2 == 1 {
			mustRun(t, pullArgs(root, imgs[0])...)
			rmiLeavingImages(t, root, imgs[0].name)
		}
		mustRun(t, "gc", "--root", root)
		fsckClean(t, root)
		totalsRight(t, root, true)
		if got := objectSet(t, root); got != want {
			t.Fatalf("after a killed and a retried gc the store differs from an uninterrupted gc:\n%s\nwant\n%s", got, want)
		}
		checkImage(t, root, imgs[1])
		c.passed++
		os.RemoveAll(root)
	}
	c.check(t, "gc")
	t.Logf("gc (uninterrupted %v): %v", d.Round(time.Millisecond), c)
}

// rmiLeavingImages runs kura rmi of names while this process holds the store's shared lock, so
// that rmi cannot drop the images at once (its TryLock fails) and leaves their removal to gc.
func rmiLeavingImages(t testing.TB, root string, names ...string) {
	t.Helper()
	unlock, err := teststore.Open(t, teststore.At(root)).RLock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	mustRun(t, append([]string{"rmi", "--root", root}, names...)...)
}

// TestCrashDuringComposefsBuild kills kura composefs build (with a digest store) at random points.
// The output image is written atomically: after a kill it is absent or complete; the retried
// build gives the same bytes and the same digest store as an uninterrupted one.
func TestCrashDuringComposefsBuild(t *testing.T) {
	_, imgs := drillSetup(t)
	work := t.TempDir()
	root := filepath.Join(work, "store")
	mustRun(t, pullArgs(root, imgs[0])...)
	tree := filepath.Join(work, "tree")
	mustRun(t, "checkout", "--root", root, imgs[0].name, tree)
	build := func(dir string) []string {
		return []string{"composefs", "build", "--digest-store", filepath.Join(dir, "objects"), tree, filepath.Join(dir, "out.img")}
	}
	// The first build reads a cold tree; kill points come from the fastest.
	ref := filepath.Join(work, "ref0")
	d := fastest(func(k int) time.Duration {
		dir := filepath.Join(work, fmt.Sprint("ref", k))
		os.MkdirAll(dir, 0o755)
		return timed(t, build(dir)...)
	})
	want := treeDigest(t, ref)
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	var c drillCount
	leftTemps := 0
	for i := 0; c.more(); i++ {
		dir := filepath.Join(work, fmt.Sprint("c", i))
		os.MkdirAll(dir, 0o755)
		c.tried++
		if runKilled(t, killDelay(rng, d), build(dir)...) {
			c.killed++
		}
		if b, err := os.ReadFile(filepath.Join(dir, "out.img")); err == nil {
			ok, _ := os.ReadFile(filepath.Join(ref, "out.img"))
			if !bytes.Equal(b, ok) {
				t.Fatalf("a killed build left a partial out.img (%d bytes, complete is %d)", len(b), len(ok))
			}
		}
		mustRun(t, build(dir)...)
		got := treeDigest(t, dir)
		// A kill may leave temp files in the digest store (".tmp-*") and next to the output
		// (".out.img.tmp-*"); nothing else may differ.
		var kept []string
		for _, l := range strings.SplitAfter(got, "\n") {
			if strings.Contains(l, "/.tmp-") || strings.HasPrefix(l, ".out.img.tmp-") {
				leftTemps++
			} else {
				kept = append(kept, l)
			}
		}
		if got = strings.Join(kept, ""); got != want {
			t.Fatalf("killed then retried build differs from an uninterrupted one:\n%s\nwant\n%s", got, want)
		}
		c.passed++
		os.RemoveAll(dir)
	}
	c.check(t, "composefs build")
	t.Logf("composefs build (uninterrupted %v): %v; %d temp files left in digest stores (nothing removes them)", d.Round(time.Millisecond), c, leftTemps)
}

// TestCrashDuringPush kills kura push (store → registry, recompressing to zstd:chunked) at random
// points, each into a fresh repository. After each kill the store's fsck is clean (push only
// reads it, but holds its lock and writes temp files), and the retried push writes the same
// manifest digest as an uninterrupted push, which then pulls back to the same image. At the end
// a gc leaves the store as it was before the pushes.
func TestCrashDuringPush(t *testing.T) {
	reg, imgs := drillSetup(t)
	work := t.TempDir()
	root := filepath.Join(work, "store")
	mustRun(t, pullArgs(root, imgs[0])...)
	mustRun(t, "gc", "--root", root)
	before := objectSet(t, root)
	push := func(repo string) []string {
		return []string{"push", imgs[0].name, "docker://" + reg.Host + "/" + repo + ":latest", "--creds",
			registrytest.Username + ":" + registrytest.Password, "--tls-verify=false", "--root", root, "--json",
			"--level", "1"} // the fastest level: the drill is about the kill, not the ratio
	}
	pushedDigest := func(out string) digest.Digest {
		var rep struct {
			Image digest.Digest `json:"image"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Image == "" {
			t.Fatalf("push output %q: %v", out, err)
		}
		return rep.Image
	}
	var want digest.Digest
	d := fastest(func(k int) time.Duration {
		start := time.Now()
		got := pushedDigest(mustRun(t, push(fmt.Sprint("measure", k))...))
		if want != "" && got != want {
			t.Fatalf("two uninterrupted pushes wrote manifests %s and %s", want, got)
		}
		want = got
		return time.Since(start)
	})
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	var c drillCount
	for i := 0; c.more(); i++ {
		repo := fmt.Sprint("pushed", i)
		c.tried++
		if runKilled(t, killDelay(rng, d), push(repo)...) {
			c.killed++
		}
		fsckClean(t, root)
		if got := pushedDigest(mustRun(t, push(repo)...)); got != want {
			t.Fatalf("retried push wrote manifest %s, an uninterrupted one %s", got, want)
		}
		c.passed++
	}
	// Push only reads the store: after a gc it holds what it held before, whatever the kills left.
	mustRun(t, "gc", "--root", root)
	fsckClean(t, root)
	totalsRight(t, root, true)
	if got := objectSet(t, root); got != before {
		t.Fatalf("after killed and retried pushes and a gc the store differs from before:\n%s\nwant\n%s", got, before)
	}
	// The last pushed copy pulls back to the same image (same DiffIDs; the manifest differs from
	// the original because the layers were recompressed).
	back := drillImage{name: reg.Host + "/" + fmt.Sprint("pushed", c.tried-1) + ":latest", diffIDs: imgs[0].diffIDs, manifest: want}
	other := filepath.Join(work, "back")
	mustRun(t, pullArgs(other, back)...)
	checkImage(t, other, back)
	c.check(t, "push")
	t.Logf("push (uninterrupted %v): %v", d.Round(time.Millisecond), c)
}

// TestConcurrentPullsAndGC runs three kura pulls of overlapping images while kura gc runs again
// and again, in a loop whose every round first drops all names (so gc has everything to remove
// that the pulls have not yet claimed). After each round fsck is clean and every image exports to
// its DiffIDs and checks out.
func TestConcurrentPullsAndGC(t *testing.T) {
	_, imgs := drillSetup(t)
	root := filepath.Join(t.TempDir(), "store")
	rounds := 4
	if longDrills() {
		rounds = 15
	}
	gcRuns := 0
	for r := 0; r < rounds; r++ {
		if r > 0 {
			mustRun(t, "rmi", "--root", root, imgs[0].name, imgs[1].name, imgs[2].name)
		}
		var wg sync.WaitGroup
		errs := make(chan error, len(imgs))
		for _, img := range imgs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if out, err := run(t, pullArgs(root, img)...); err != nil {
					errs <- fmt.Errorf("pull %s: %v\n%s", img.name, err, out)
				}
			}()
		}
		pullsDone := make(chan struct{})
		go func() { wg.Wait(); close(pullsDone) }()
	gcLoop:
		for {
			mustRun(t, "gc", "--root", root)
			gcRuns++
			select {
			case <-pullsDone:
				break gcLoop
			default:
			}
		}
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		fsckClean(t, root)
		totalsRight(t, root, true) // every placement closed, across the gc runs
		for _, img := range imgs {
			checkImage(t, root, img)
		}
	}
	for _, img := range imgs {
		mustRun(t, "checkout", "--root", root, img.name, filepath.Join(t.TempDir(), "rootfs"))
	}
	t.Logf("%d rounds of 3 concurrent pulls against %d gc runs: fsck clean, all images intact", rounds, gcRuns)
}

// TestFullDisk puts the store on a 64 MiB ext4 loop file system filled with ballast, so that a
// pull does not fit. The pull fails saying so (ENOSPC), the store stays consistent, and once the
// ballast is removed the same pull succeeds.
func TestFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "needs root for the loop mount")
	}
	for _, tool := range []string{"mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			testkit.Skip(t, "%s not installed", tool)
		}
	}
	_, imgs := drillSetup(t)
	work := t.TempDir()
	img := filepath.Join(work, "fs.img")
	mnt := filepath.Join(work, "mnt")
	os.MkdirAll(mnt, 0o755)
	if f, err := os.Create(img); err != nil {
		t.Fatal(err)
	} else {
		f.Close()
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		testkit.Skip(t, "loop mount not permitted here: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })

	// Leave 4 MiB free: less than one layer of the image.
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * st.Bsize
	ballast := filepath.Join(mnt, "ballast")
	f, err := os.Create(ballast)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for written := int64(0); written < free-4<<20; written += int64(len(chunk)) {
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	root := filepath.Join(mnt, "store")
	out, err := run(t, pullArgs(root, imgs[0])...)
	if err == nil {
		t.Fatalf("the pull fitted in 4 MiB:\n%s", out)
	}
	if !strings.Contains(out, "no space left on device") {
		t.Fatalf("the pull failed without saying the disk is full:\n%s", out)
	}
	t.Logf("pull on a full disk: %s", lastLine(out))
	fsckClean(t, root)
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	mustRun(t, pullArgs(root, imgs[0])...)
	fsckClean(t, root)
	checkImage(t, root, imgs[0])
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// objectSet lists what a store holds (objects, layers, images, refs) by path, skipping temp
// files and locks, which a killed run may leave or a run recreate.
func objectSet(t testing.TB, root string) string {
	t.Helper()
	var sb strings.Builder
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.Contains(d.Name(), "tmp") || strings.Contains(d.Name(), "lock") {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		sb.WriteString(rel + "\n")
		return nil
	})
	return sb.String()
}

// treeDigest lists every file under dir with the sha256 of its content.
func treeDigest(t testing.TB, dir string) string {
	t.Helper()
	var sb strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(&sb, "%s %x\n", rel, sha256.Sum256(b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return sb.String()
}

// copyDir copies a store (directories and regular files, modes kept).
func copyDir(t testing.TB, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
}
