package layerstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/auth"
	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
	"github.com/kura-oci/kura/store"
)

// servedPull is a lazy pull being served, its bulk fetch held until release.
type servedPull struct {
	p       *lazy.Pending
	diffID  digest.Digest
	files   map[string][]byte
	release chan struct{}
	done    chan error
}

// versionFiles are the files of version v of an image: shared ones larger than composefs
// inlines (so they are objects, placeholders while missing), and one of the version's own.
func versionFiles(v int) map[string][]byte {
	files := map[string][]byte{}
	for i := 0; i < 8; i++ {
		files[fmt.Sprintf("usr/lib/shared%d", i)] = bytes.Repeat([]byte{byte('a' + i)}, 4096+i)
	}
	files["etc/version"] = bytes.Repeat([]byte(fmt.Sprintf("version %d\n", v)), 100)
	return files
}

// startLazyPull pushes version v as app:v<v> and begins and serves its lazy pull in s.
func startLazyPull(t *testing.T, reg *registrytest.Registry, s *store.Store, v int) *servedPull {
	t.Helper()
	files := versionFiles(v)
	entries := []tartest.Entry{tartest.Dir("etc/"), tartest.Dir("usr/"), tartest.Dir("usr/lib/")}
	for name, b := range files {
		entries = append(entries, tartest.Bytes(name, b))
	}
	img := imagetest.Chunked(t, tartest.Tar(t, entries...))
	tag := fmt.Sprintf("v%d", v)
	img.Push(t, reg, "app", tag)
	r, err := imageref.Parse(reg.Host + "/app:" + tag)
	if err != nil {
		t.Fatal(err)
	}
	src := registry.NewSource(registry.New(registry.WithKeychain(auth.NewKeychain(auth.WithCreds(registrytest.Username+":"+registrytest.Password)))), r)
	sp := &servedPull{diffID: img.DiffIDs[0], files: files, release: make(chan struct{}), done: make(chan error, 1)}
	opts := []pull.Option{pull.WithLazyMode(pull.LazyFanotify), pull.WithLazyStacked(), pull.WithBackgroundHeld(sp.release)}
	if sp.p, err = pull.PullLazy(context.Background(), s, src, opts...); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sp.done <- pull.ServeLazy(context.Background(), s, src, sp.p, func() { close(ready) }, opts...)
	}()
	select {
	case <-ready:
	case err := <-sp.done:
		t.Fatalf("ServeLazy of v%d ended before it was ready: %v", v, err)
	}
	t.Cleanup(func() {
		select {
		case <-sp.release: // complete waited for it
		default:
			close(sp.release)
			<-sp.done
		}
	})
	return sp
}

// complete lets the pull's bulk fetch go and waits for the pull to complete.
func (sp *servedPull) complete(t *testing.T, s *store.Store) {
	t.Helper()
	close(sp.release)
	if err := <-sp.done; err != nil {
		t.Fatalf("lazy pull %s: %v", sp.p.ID, err)
	}
	if !s.HasLayer(sp.diffID) {
		t.Fatalf("lazy pull %s completed without its layer %s", sp.p.ID, sp.diffID)
	}
}

func checkFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s through %s: %d bytes, %v; want its %d bytes", name, dir, len(got), err, len(want))
		}
	}
}

// TestPendingLayerAcrossCompletions: two lazy pulls of two versions sharing files (the BENCHMARKS
// "Defect found (round 4, c1)" case). The second's pending mount reads right bytes before and
// after the first completes; its own completion leaves that mount right; and a mount of its layer
// that comes after its completion (a lookup racing it: the pull removed its directory, the
// placeholders with it) fails as ErrPendingGone, which the lookup answers with the complete layer,
// not with a bare "no such file or directory".
func TestPendingLayerAcrossCompletions(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "lazy pulls mount composefs and use fanotify: they need root")
	}
	ctx := context.Background()
	reg := registrytest.New(t)
	s := teststore.Open(t)
	state := filepath.Join(filepath.Dir(s.Root()), "state-"+filepath.Base(s.Root()))
	testkit.DetachMountsUnder(t, state)
	ls, err := New(s, nil, Options{State: state, Diff: DiffComposefs})
	if err != nil {
		t.Fatal(err)
	}
	v0, v1 := startLazyPull(t, reg, s, 0), startLazyPull(t, reg, s, 1)
	dir, err := ls.PendingDir(ctx, v1.p, v1.diffID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mount.Unmount(dir) })
	v0.complete(t, s)
	checkFiles(t, dir, v1.files)
	if again, err := ls.PendingDir(ctx, v1.p, v1.diffID); err != nil || again != dir {
		t.Fatalf("pending layer looked up again after the other pull completed: %q, %v; want %s", again, err, dir)
	}
	v1.complete(t, s)
	checkFiles(t, dir, v1.files)
	ls.ReleasePending([]digest.Digest{v1.diffID})
	_, err = ls.PendingDir(ctx, v1.p, v1.diffID)
	if !errors.Is(err, ErrPendingGone) || !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("mounting the pending layer of a completed pull: %v; want ErrPendingGone", err)
	}
	full, err := ls.MountLayer(ctx, "", v1.diffID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mount.Unmount(full) })
	checkFiles(t, full, v1.files)
}
