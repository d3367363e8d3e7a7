package lazy

import (
	"context"
	"errors"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/internal/testkit/teststore"
)

// TestStalledFillBoundsEveryReader: two readers of one placeholder whose fetch stalls (the
// registry accepted and sends nothing) each get EIO within the fill timeout of their own
// access. The second used to wait for the first fill's whole timeout and only then start its
// own, so its fill's deadline lay two timeouts after the first access (k timeouts for the k-th).
func TestStalledFillBoundsEveryReader(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("fanotify pre-content groups need root")
	}
	const timeout = 2 * time.Second
	s := teststore.Open(t)
	obj, diffID := digest.FromString("object content"), digest.FromString("layer")
	p := &Pending{Dir: t.TempDir()}
	if err := p.MakePlaceholders(s, diffID, []digest.Digest{obj}); err != nil {
		t.Fatal(err)
	}
	deadlines := make(chan time.Time, 16)
	stall := func(ctx context.Context, _, _ digest.Digest) error {
		dl, _ := ctx.Deadline()
		deadlines <- dl
		<-ctx.Done()
		return ctx.Err()
	}
	f, err := NewFiller(s, stall, timeout, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- f.Run(ctx) }()
	defer func() { cancel(); <-ran; f.Close() }()
	if err := f.Watch(ctx, p, diffID, []digest.Digest{obj}); err != nil {
		t.Fatal(err)
	}
	ph, _ := p.PlaceholderPath(s, diffID, obj)
	errs := make(chan error, 2)
	read := func() { _, err := os.ReadFile(ph); errs <- err }
	first := time.Now()
	go read()
	<-deadlines // the first fill is in flight: the second reader arrives while it stalls
	go read()
	for range 2 {
		if err := <-errs; !errors.Is(err, syscall.EIO) {
			t.Fatalf("read of a stalled placeholder: %v; want EIO", err)
		}
	}
	for len(deadlines) > 0 {
		if dl := <-deadlines; dl.After(first.Add(timeout * 3 / 2)) {
			t.Fatalf("a fill ran until %v after the first access; every reader must be answered within the %v timeout of its own access",
				dl.Sub(first).Round(time.Millisecond), timeout)
		}
	}
}
