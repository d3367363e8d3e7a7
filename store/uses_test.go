package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// addUse records a use of img under the shared lock.
func addUse(t *testing.T, s *store.Store, u store.Use) store.Use {
	t.Helper()
	ctx := context.Background()
	unlock, err := s.RLock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	u, err = s.AddUse(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// orphan makes a record look as if its writer had exited, as every record does once kura
// mount or checkout returns.
func orphan(t *testing.T, s *store.Store, u store.Use) store.Use {
	t.Helper()
	unlock, err := s.RLock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	u.PID, u.PIDStart = 0, 0
	if err := s.UpdateUse(u); err != nil {
		t.Fatal(err)
	}
	return u
}

func uses(t *testing.T, s *store.Store) []store.Use {
	t.Helper()
	us, err := s.Uses(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return us
}

// TestCheckoutUseKeepsImage: an image whose last name is gone stays through gc while a
// checkout record holds it; rmi refuses its last name without force; the record goes when the
// directory goes (or is made anew) and gc then frees the image.
func TestCheckoutUseKeepsImage(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	img := teststore.Named(t, s, "one", tarOf(t, map[string][]byte{"a": []byte("kept while in use")}))
	dir := filepath.Join(t.TempDir(), "rootfs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	u := orphan(t, s, addUse(t, s, store.Use{Kind: store.UseCheckout, Image: img.ID, Target: dir}))

	_, err := s.RemoveImage(ctx, "one", false)
	if !errors.Is(err, errdefs.ErrInUse) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("rmi of an image in use: %v, want ErrInUse naming %s", err, dir)
	}
	if _, err := s.Ref(ctx, "one"); err != nil {
		t.Fatalf("the refused rmi removed the name: %v", err)
	}
	r, err := s.RemoveImage(ctx, "one", true)
	if err != nil || r.Deleted || len(r.InUse) != 1 || len(r.Untagged) != 1 {
		t.Fatalf("rmi --force: %+v, %v", r, err)
	}
	if res, err := s.GC(ctx); err != nil || res.Images != 0 || res.Objects != 0 {
		t.Fatalf("gc with the image in use: %+v, %v", res, err)
	}
	if _, err := s.Image(ctx, img.ID); err != nil {
		t.Fatalf("gc removed an image in use: %v", err)
	}

	// The same path made anew is another directory: the use is over.
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := uses(t, s); len(got) != 0 {
		t.Fatalf("uses after the directory was replaced: %+v", got)
	}
	if _, err := os.Stat(filepath.Join(s.Root(), "uses", u.ID+".json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the stale record was not dropped: %v", err)
	}
	if res, err := s.GC(ctx); err != nil || res.Images != 1 || res.Objects != 1 {
		t.Fatalf("gc after the use ended: %+v, %v", res, err)
	}
}

// TestUseLiveness: a record is live while its writer runs, whatever its target shows; a mount
// record with no such mount, a checkout whose directory is gone, a record of another boot are
// dropped; ReleaseCheckout drops a checkout's record and keeps the tree.
func TestUseLiveness(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	img := teststore.Named(t, s, "one", tarOf(t, map[string][]byte{"a": []byte("x")}))
	mnt, gone, kept := t.TempDir(), t.TempDir(), t.TempDir()

	m := addUse(t, s, store.Use{Kind: store.UseMount, Image: img.ID, Target: mnt, FSType: "overlay", Source: "composefs"})
	if got := uses(t, s); len(got) != 1 {
		t.Fatalf("a record whose writer runs (the mount not made yet) was dropped: %+v", got)
	}
	orphan(t, s, m)
	if got := uses(t, s); len(got) != 0 {
		t.Fatalf("a mount record with nothing mounted stays: %+v", got)
	}

	orphan(t, s, addUse(t, s, store.Use{Kind: store.UseCheckout, Image: img.ID, Target: gone}))
	k := orphan(t, s, addUse(t, s, store.Use{Kind: store.UseCheckout, Image: img.ID, Target: kept}))
	other := orphan(t, s, addUse(t, s, store.Use{Kind: store.UseCheckout, Image: img.ID, Target: kept}))
	other.BootID = "another boot"
	unlock, _ := s.RLock(ctx)
	s.UpdateUse(other)
	unlock()
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}
	got := uses(t, s)
	if len(got) != 1 || got[0].ID != k.ID {
		t.Fatalf("live uses %+v, want only the checkout at %s", got, kept)
	}
	if err := s.ReleaseCheckout(ctx, kept); err != nil {
		t.Fatal(err)
	}
	if got := uses(t, s); len(got) != 0 {
		t.Fatalf("uses after release: %+v", got)
	}
	if _, err := os.Stat(kept); err != nil {
		t.Fatalf("release removed the tree: %v", err)
	}
	if err := s.ReleaseCheckout(ctx, kept); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("second release: %v, want ErrNotFound", err)
	}

	// gc does not guess what an unreadable record protects.
	bad := filepath.Join(s.Root(), "uses", "0123.json")
	if err := os.WriteFile(bad, []byte("{not json"), 0o444); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GC(ctx); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("gc with an unreadable use record: %v, want an error naming it", err)
	}
	if _, err := s.Image(ctx, img.ID); err != nil {
		t.Fatal(err)
	}
}

// TestExclusiveLock: the delete methods live on *Exclusive (a delete through *Store does not
// compile); they refuse after Unlock; TryLock does not wait for a shared holder.
func TestExclusiveLock(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	img := teststore.Named(t, s, "one", tarOf(t, map[string][]byte{"a": []byte("x")}))
	other := teststore.Open(t, teststore.At(s.Root()), teststore.Synced())
	unlock, err := other.RLock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if x, err := s.TryLock(ctx); x != nil || err != nil {
		t.Fatalf("TryLock while another handle holds the shared lock: %v, %v", x, err)
	}
	unlock()
	x, err := s.TryLock(ctx)
	if err != nil || x == nil {
		t.Fatalf("TryLock on a free store: %v, %v", x, err)
	}
	x.Unlock()
	if err := x.DeleteImage(ctx, img.ID); err == nil {
		t.Fatal("DeleteImage after Unlock")
	}
	if _, err := s.Image(ctx, img.ID); err != nil {
		t.Fatal(err)
	}
	var _ interface { // *Exclusive, not *Store, can remove objects
		Walk(context.Context, func(store.Info) error) error
		Delete(context.Context, digest.Digest) error
	} = x
}

// TestRmiRacesSetRef is case 6 of issue 13: rmi of a name while a pull sets a ref to the same
// image (PutImage then SetRef under the shared lock, as pull does) must never leave a ref to a
// missing image. Each round runs one rmi beside one pull, and a reader that checks under the
// shared lock, until the pull is done, that the ref names a stored image.
func TestRmiRacesSetRef(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := teststore.Open(t, teststore.At(root))
	img := teststore.Named(t, s, "x", tarOf(t, map[string][]byte{"a": []byte("raced")}))
	manifest, _ := s.ImageManifest(ctx, img.ID)
	config, _ := s.ImageConfig(ctx, img.ID)
	handle := func() *store.Store {
		h := teststore.Open(t, teststore.At(root))
		return h
	}
	pull, reader, rmi := handle(), handle(), handle()
	pullOnce := func() error {
		unlock, err := pull.RLock(ctx)
		if err != nil {
			return err
		}
		defer unlock()
		if _, err := pull.PutImage(ctx, manifest, config); err != nil {
			return err
		}
		return pull.SetRef(ctx, "x", img.ID)
	}
	// check reports a ref to a missing image, as seen under the shared lock.
	check := func() error {
		unlock, err := reader.RLock(ctx)
		if err != nil {
			return err
		}
		defer unlock()
		id, err := reader.Ref(ctx, "x")
		if err != nil {
			return nil
		}
		if _, err := reader.Image(ctx, id); err != nil {
			return fmt.Errorf("ref x names a missing image: %w", err)
		}
		return nil
	}
	const rounds = 200
	deleted, untagged := 0, 0
	for i := 0; i < rounds; i++ {
		pulled, checked := make(chan error, 1), make(chan error, 1)
		go func() { pulled <- pullOnce() }()
		go func() {
			for {
				if err := check(); err != nil {
					checked <- err
					return
				}
				select {
				case err := <-pulled:
					pulled <- err // for the round's end
					checked <- check()
					return
				default:
				}
			}
		}()
		r, err := rmi.RemoveImage(ctx, "x", false)
		if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatal(err)
		}
		if err := <-checked; err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if err := <-pulled; err != nil {
			t.Fatal(err)
		}
		if len(r.Untagged) > 0 {
			untagged++
		}
		if r.Deleted {
			deleted++
		}
	}
	rep, err := s.Fsck(ctx, false)
	if err != nil || !rep.Clean() {
		t.Fatalf("fsck: %v %v", rep.Problems, err)
	}
	t.Logf("%d rounds: rmi removed the name %d times, dropped the image at once %d times", rounds, untagged, deleted)
	if untagged == 0 || deleted == 0 {
		t.Fatal("the race was not run: rmi never removed the name, or never dropped the image")
	}
}
