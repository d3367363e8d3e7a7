package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/layerstore"
)

// LabelLazy marks a remote-path snapshot on a layer of a pending lazy pull (value "pending"):
// its Dir is that pending layer's mount until CompleteLazy moves it onto the complete layer.
const LabelLazy = "containerd.io/snapshot/kura.lazy"

// Lazy serves the remote path's layers before they are downloaded (kura snapshotter --lazy): the
// layer store's Lazy, which kura layer-store serve --lazy shares.
type Lazy = layerstore.Lazy

// lookupLayer is the remote path's lookup: lazy when a Lazy is set.
func (s *Service) lookupLayer(ctx context.Context, ref string, dgst digest.Digest) (*layerstore.Layer, bool, error) {
	if s.lazy != nil {
		return s.lazy.LookupLazy(ctx, ref, dgst)
	}
	l, err := s.remote.Lookup(ctx, ref, dgst)
	return l, false, err
}

// CompleteLazy moves every snapshot on a pending layer that is complete now onto the complete
// layer's mount (whose use keeps the layer from gc): the mounts containerd asks for later, for
// new containers, stack on it. The pending layer's mount is then detached: running containers
// keep it (their overlay holds its root), and it stays right for them, as every placeholder was
// filled and every object stored before the pull completed. A snapshot still pending is left;
// on a snapshotter's start (Revive) the lookup resumes its pull and remounts its pending layer.
// The Lazy calls it when a pending pull completes.
//
// Without a Lazy (the snapshotter restarted without --lazy), the remote path's lookup pulls each
// such layer whole and the snapshot moves onto it.
//
// It returns how many snapshots it failed to move (their layer not served, served elsewhere, or
// the move not saved): the caller must then keep what holds their layers, since a pending mount
// records no use of its own.
//
// A remote-path Prepare whose lookup answered a pending layer just before the pull completed
// records its snapshot after that answer: CompleteLazy first waits for the Prepares under way
// (lazyGate; new Prepares do not wait for it), so that such a snapshot is in the list it moves.
// Without that wait it was left on its pending mount, with no use on the complete layer, while
// the caller (its move not failed) dropped the private name that kept the layer from gc. A
// Prepare that looks up after the completion is answered the complete layer.
func (s *Service) CompleteLazy(ctx context.Context) (failed int) {
	if s.lazy == nil && s.remote == nil {
		return 0
	}
	if s.beforeLazyGate != nil {
		s.beforeLazyGate()
	}
	s.lazyGate.wait()
	s.mu.Lock()
	todo := map[string]*record{}
	for k, r := range s.meta.Snapshots {
		if r.Labels[LabelLazy] != "" {
			todo[k] = r.clone()
		}
	}
	s.mu.Unlock()
	old := map[string]bool{}
	for k, r := range todo {
		dgst, err := digest.Parse(r.Labels[LabelLayerDigest])
		if err != nil {
			s.log.Error("lazy snapshot has no layer digest", "snapshot", k, "err", err)
			failed++
			continue
		}
		l, pending, err := s.lookupLayer(ctx, r.Labels[LabelImageRef], dgst)
		switch {
		case err != nil:
			s.log.Error("lazy snapshot's layer not served", "snapshot", k, "err", err)
			failed++
		case pending && l.Diff != r.Dir:
			s.log.Error("lazy snapshot's pending layer served elsewhere", "snapshot", k, "dir", l.Diff, "recorded", r.Dir)
			failed++
		case !pending:
			if err := s.moveToComplete(ctx, k, l); err != nil {
				s.log.Error("lazy snapshot not moved to its complete layer", "snapshot", k, "err", err)
				failed++
				continue
			}
			old[r.Dir] = true
			s.log.Info("lazy snapshot on its complete layer", "snapshot", k, "dir", l.Diff)
		}
	}
	s.detachPending(old)
	return failed
}

// prepareGate lets CompleteLazy wait for the Prepares under way when it is called, and only
// for those: a Prepare that enters later joins the next wait, so a steady flow of Prepares never
// holds a completion back, nor does a completion hold back new Prepares.
type prepareGate struct {
	mu  sync.Mutex
	cur *sync.WaitGroup
}

// enter counts a Prepare in; call the returned function when its snapshot is recorded.
func (g *prepareGate) enter() (leave func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cur == nil {
		g.cur = &sync.WaitGroup{}
	}
	wg := g.cur
	wg.Add(1)
	return wg.Done
}

// wait returns once every Prepare that entered before it has left.
func (g *prepareGate) wait() {
	g.mu.Lock()
	wg := g.cur
	g.cur = nil
	g.mu.Unlock()
	if wg != nil {
		wg.Wait()
	}
}

// moveToComplete points the snapshot key at the complete layer l and charges its Usage.
func (s *Service) moveToComplete(ctx context.Context, key string, l *layerstore.Layer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.meta.Snapshots[key]
	if !ok || r.Labels[LabelLazy] == "" {
		return nil // removed, or moved by a concurrent call
	}
	prev := r.clone()
	r.Dir, r.Layer = l.Diff, l.DiffID
	delete(r.Labels, LabelLazy)
	if s.objects != nil {
		if err := s.charge(ctx, key, r, l.DiffID); err != nil {
			s.log.Warn("remote layer's usage not charged", "layer", l.DiffID, "err", err)
		}
	}
	if err := s.meta.save(s.root); err != nil {
		s.meta.Snapshots[key] = prev
		s.uncharge(key)
		return err
	}
	return nil
}

// detachPending detaches the pending layers' mounts no snapshot is on any more.
func (s *Service) detachPending(dirs map[string]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for dir := range dirs {
		s.releasePending(dir)
	}
}

// releasePending detaches the pending layer's mount dir unless a snapshot is on it or a
// remote-path Prepare may be about to record it (as releaseMount). A detached mount lives on for
// the containers stacked on it. The pending pull goes on: gc keeps it until it completes, and
// then nothing keeps its layers but snapshots. Called with mu held.
func (s *Service) releasePending(dir string) {
	if dir == "" || s.lookups > 0 || s.mountsInUse()[dir] {
		return
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) { // EINVAL: not mounted
		s.log.Warn("pending layer's mount not detached", "dir", dir, "err", fmt.Errorf("%w", err))
		return
	}
	os.Remove(dir)
	s.log.Info("pending layer's mount detached", "dir", dir)
}

// reviveLazy resumes the pending pulls of the snapshots on pending layers, or moves those whose
// pull completed (in an earlier run) onto their complete layer.
func (s *Service) reviveLazy(ctx context.Context) { s.CompleteLazy(ctx) }
