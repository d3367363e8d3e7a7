package snapshotter

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	snapshots "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/api/types"

	"github.com/kura-oci/kura/errdefs"
)

// Options configure a Service.
type Options struct {
	// Root holds the metadata file and the snapshots' directories (snapshots/<id>/{fs,work}).
	Root string
	// Remote answers the remote path (a Prepare with the CRI labels); nil: every Prepare is plain.
	Remote Remote
	// Lazy, when set, answers the remote path before the layer is downloaded (see Lazy); Remote
	// is then used for layers a pending pull completed.
	Lazy Lazy
	// Ingester, when set, moves each plain-path commit into Kura's store; nil: a committed
	// snapshot keeps its directory.
	Ingester Ingester
	// Unmounter, when set, takes down the per-layer mounts of the remote path and of commits
	// moved into the store once no snapshot is on them (Remove, Cleanup).
	Unmounter Unmounter
	// Objects, when set, lists a stored layer's objects: a committed snapshot on a stored layer
	// (remote path, or a commit moved into the store) then has as Usage the objects of its layer
	// no other snapshot is charged for (see charge); nil: its files measured as a directory.
	Objects ObjectLister
	Log     *slog.Logger
}

// Service implements containerd's snapshots service. It is safe for concurrent use.
type Service struct {
	snapshots.UnimplementedSnapshotsServer
	root      string
	remote    Remote
	lazy      Lazy
	ingester  Ingester
	unmounter Unmounter
	objects   ObjectLister
	log       *slog.Logger

	mu      sync.Mutex // guards meta, the directories it names, and lookups
	meta    *meta
	charged map[digest.Digest]string // object: the snapshot whose Usage counts it
	lookups int                      // remote-path Prepares between their lookup and their record
	lock    *os.File                 // flock'ed while the Service lives: one server per root
	// lazyGate counts the lazy remote-path Prepares between their lookup and their record;
	// CompleteLazy waits for those under way before it lists the snapshots.
	lazyGate prepareGate
	// beforeLazyGate, if set (tests), runs as CompleteLazy is about to wait at lazyGate.
	beforeLazyGate func()
}

// New opens (or makes) the snapshotter's root and its metadata.
func New(opts Options) (*Service, error) {
	if opts.Root == "" {
		return nil, fmt.Errorf("snapshotter: no root directory: %w", errdefs.ErrInvalid)
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Join(opts.Root, dirSnapshots), 0o700); err != nil {
		return nil, fmt.Errorf("snapshotter: %w", err)
	}
	lock, err := lockRoot(opts.Root)
	if err != nil {
		return nil, err
	}
	m, err := loadMeta(opts.Root)
	if err != nil {
		lock.Close()
		return nil, err
	}
	s := &Service{root: opts.Root, remote: opts.Remote, lazy: opts.Lazy, ingester: opts.Ingester, unmounter: opts.Unmounter,
		objects: opts.Objects, log: opts.Log, meta: m, lock: lock}
	if err := s.loadCharges(); err != nil {
		lock.Close()
		return nil, err
	}
	return s, nil
}

// lockRoot takes the root's lock: two servers on one root would each rewrite the metadata
// file from their own copy and lose the other's snapshots. A killed server's lock goes with it.
func lockRoot(root string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(root, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("snapshotter: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("snapshotter: %s is used by another server: %w", root, errdefs.ErrInUse)
		}
		return nil, fmt.Errorf("snapshotter: locking %s: %w", root, err)
	}
	return f, nil
}

// Close releases the root for another server.
func (s *Service) Close() error { return s.lock.Close() }

const dirSnapshots = "snapshots"

func (s *Service) dir(r *record) string {
	return filepath.Join(s.root, dirSnapshots, strconv.FormatInt(r.ID, 10))
}

// fsDir is the directory holding a snapshot's files (its upper directory while active).
func (s *Service) fsDir(r *record) string {
	if r.Dir != "" {
		return r.Dir
	}
	return filepath.Join(s.dir(r), "fs")
}

// create records a new active or view snapshot under key and makes its directories.
// Called with mu held.
func (s *Service) create(kind Kind, key, parent string, labels map[string]string) (*record, error) {
	if key == "" {
		return nil, fmt.Errorf("snapshotter: empty key: %w", errdefs.ErrInvalid)
	}
	if _, ok := s.meta.Snapshots[key]; ok {
		return nil, fmt.Errorf("snapshotter: snapshot %q: %w", key, errdefs.ErrAlreadyExists)
	}
	if parent != "" {
		p, ok := s.meta.Snapshots[parent]
		if !ok {
			return nil, fmt.Errorf("snapshotter: parent %q: %w", parent, errdefs.ErrNotFound)
		}
		if p.Kind != KindCommitted {
			return nil, fmt.Errorf("snapshotter: parent %q is %s, not committed: %w", parent, p.Kind, errFailedPrecondition)
		}
	}
	now := time.Now().UTC()
	r := &record{ID: s.meta.NextID, Kind: kind, Parent: parent, Labels: labels, Created: now, Updated: now}
	// A directory of this number is a crash's leftover (made, never recorded): start afresh.
	if err := os.RemoveAll(s.dir(r)); err != nil {
		return nil, fmt.Errorf("snapshotter: %w", err)
	}
	for _, d := range []string{"fs", "work"} {
		if err := os.MkdirAll(filepath.Join(s.dir(r), d), 0o755); err != nil {
			return nil, fmt.Errorf("snapshotter: %w", err)
		}
	}
	s.meta.NextID++
	s.meta.Snapshots[key] = r
	if err := s.meta.save(s.root); err != nil {
		delete(s.meta.Snapshots, key)
		os.RemoveAll(s.dir(r))
		return nil, err
	}
	return r, nil
}

// mounts is the mount plan of the snapshot key. Called with mu held.
func (s *Service) mounts(key string) ([]*types.Mount, error) {
	r, ok := s.meta.Snapshots[key]
	if !ok {
		return nil, fmt.Errorf("snapshotter: snapshot %q: %w", key, errdefs.ErrNotFound)
	}
	var lowers []string
	for p := r.Parent; p != ""; {
		pr, ok := s.meta.Snapshots[p]
		if !ok {
			return nil, fmt.Errorf("snapshotter: parent %q of %q: %w", p, key, errdefs.ErrNotFound)
		}
		lowers = append(lowers, s.fsDir(pr))
		p = pr.Parent
	}
	return mountPlan(r.Kind, s.fsDir(r), filepath.Join(s.dir(r), "work"), lowers), nil
}
