package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/kura-oci/kura/auth"
	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
	"github.com/kura-oci/kura/store"
)

// TestMountPendingRacingCompletion: kura mount of a name only a pending lazy pull carries, whose
// pull completes (image recorded, pending pull removed, under the shared lock the mount holds
// too) at each point where that changes the answer: after the image was found missing, and
// after the pending pull was found. Either way the mount succeeds, of the complete image, and
// its file reads right; before, the first failed ("no image or lazy pull named") and the second
// failed on the pending pull's missing TOC.
func TestMountPendingRacingCompletion(t *testing.T) {
	needRootCLI(t)
	for _, stage := range []string{"image missing", "pending found"} {
		t.Run(strings.ReplaceAll(stage, " ", "-"), func(t *testing.T) { testMountRacingCompletion(t, stage) })
	}
}

func testMountRacingCompletion(t *testing.T, stage string) {
	ctx := context.Background()
	reg := registrytest.New(t)
	content := bytes.Repeat([]byte("complete meanwhile\n"), 1000)
	imagetest.Chunked(t, tartest.Tar(t, tartest.Bytes("data", content))).Push(t, reg, "app", "v1")
	r, err := imageref.Parse(reg.Host + "/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	src := registry.NewSource(registry.New(registry.WithKeychain(auth.NewKeychain(auth.WithCreds(registrytest.Username+":"+registrytest.Password)))), r)
	work := t.TempDir()
	s, err := store.Open(filepath.Join(work, "store"), store.WithVerity())
	if err != nil {
		t.Fatal(err)
	}
	lazyOpts := []pull.Option{pull.WithName("app"), pull.WithLazyMode(pull.LazyFanotify)}
	p, err := pull.PullLazy(ctx, s, src, lazyOpts...)
	if err != nil {
		t.Fatal(err)
	}
	completed := false
	mountRaceHook = func(at string) {
		if at != stage || completed {
			return
		}
		completed = true
		if err := pull.ServeLazy(ctx, s, src, p, nil, append(lazyOpts, pull.WithBackgroundHeld(closed()))...); err != nil {
			t.Errorf("completing the lazy pull at %q: %v", at, err)
		}
	}
	oldRoot := global.root
	global.root = s.Root()
	t.Cleanup(func() { mountRaceHook, global.root = nil, oldRoot })

	target := mountTarget(t, work, "mnt")
	cmd := &cobra.Command{}
	var out bytes.Buffer
	cmd.SetContext(ctx)
	cmd.SetOut(&out)
	if err := runMount(cmd, "app", target, []mount.Option{mount.WithVerity(mount.VerityOff)}); err != nil {
		t.Fatalf("kura mount with the pull completing at %q: %v", stage, err)
	}
	t.Cleanup(func() { mount.Unmount(target) })
	if !completed {
		t.Fatalf("the pull was not completed at %q: the test shows nothing", stage)
	}
	if strings.Contains(out.String(), "(lazy, pending)") {
		t.Fatalf("mounted %q, want the complete image", out.String())
	}
	if b, err := os.ReadFile(filepath.Join(target, "data")); err != nil || !bytes.Equal(b, content) {
		t.Fatalf("data through the mount: %d of %d bytes, %v", len(b), len(content), err)
	}
}
