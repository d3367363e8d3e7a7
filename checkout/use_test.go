package checkout_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/kura-oci/kura/checkout"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// TestCheckoutRecordsUse: a checkout is recorded as a use of its image (so gc keeps the image
// while the directory lives); a checkout that fails leaves no record.
func TestCheckoutRecordsUse(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	good := teststore.Image(t, s, tarOf(t, tartest.File("a", "content")))
	bad := teststore.Image(t, s, tarOf(t, tartest.Hardlink("l", "missing")))

	dir := filepath.Join(t.TempDir(), "rootfs")
	if _, err := checkout.Checkout(ctx, s, good, dir, checkout.Options{Link: checkout.LinkCopy}); err != nil {
		t.Fatal(err)
	}
	uses, err := s.Uses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := store.CanonicalTarget(dir)
	if len(uses) != 1 || uses[0].Kind != store.UseCheckout || uses[0].Image != good.ID || uses[0].Target != want {
		t.Fatalf("uses after a checkout: %+v", uses)
	}

	if _, err := checkout.Checkout(ctx, s, bad, filepath.Join(t.TempDir(), "bad"), checkout.Options{}); err == nil {
		t.Fatal("a hardlink to a missing target checked out")
	}
	if uses, _ := s.Uses(ctx); len(uses) != 1 {
		t.Fatalf("a failed checkout left a record: %+v", uses)
	}
}
