package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// RLock takes the store's shared lock: readers, ingests and imports hold it, as many at a time as
// like, across processes. An import holds it from its first object to its ref so that gc (which
// needs the exclusive lock) never sees a half-written image. Call the returned function to release.
func (s *Store) RLock(ctx context.Context) (func(), error) { return s.lock(ctx, unix.LOCK_SH) }

// Lock takes the store's exclusive lock (gc, fsck --repair): it waits for every holder of the
// shared lock to finish. Only the returned *Exclusive can delete objects, layers and images, so a
// delete under the shared lock does not compile: a pull holding the shared lock can never find
// the image it is naming removed under it.
func (s *Store) Lock(ctx context.Context) (*Exclusive, error) {
	if s.held.Load() > 0 {
		// Waiting for every shared holder would include ourselves.
		return nil, errors.New("store: exclusive lock requested through a handle that holds a lock (would deadlock)")
	}
	unlock, err := s.lock(ctx, unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	return &Exclusive{Store: s, unlock: unlock}, nil
}

// TryLock takes the exclusive lock if nobody holds the store's lock now; it returns nil (and no
// error) when someone does. rmi uses it to drop unnamed image records at once when it can.
func (s *Store) TryLock(ctx context.Context) (*Exclusive, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.held.Load() > 0 {
		return nil, nil // held through this handle (another goroutine of a server): taken now
	}
	// lock tries once before it looks at the context: a cancelled one makes it not wait.
	now, cancel := context.WithCancel(ctx)
	cancel()
	x, err := s.Lock(now)
	if errors.Is(err, context.Canceled) && ctx.Err() == nil {
		return nil, nil
	}
	return x, err
}

// Exclusive is the store under its exclusive lock: no import, pull, checkout or mount is between
// its first write and its ref or use record. It has the store's methods and, alone, the ones
// that delete. Call Unlock when done; it is an error to use it after.
type Exclusive struct {
	*Store
	unlock   func()
	released bool
}

// Unlock releases the exclusive lock. Calling it again does nothing.
func (x *Exclusive) Unlock() {
	x.released = true
	x.unlock()
}

// check guards the delete methods against use after Unlock.
func (x *Exclusive) check() error {
	if x == nil || x.released {
		return errors.New("store: delete without the exclusive lock (it was released)")
	}
	return nil
}

// lock opens the lock file anew for every lock: flock locks belong to the open file description,
// so two locks in one process conflict exactly as two processes' locks do.
//
// flock alone would let gc starve: a shared lock is granted whenever no exclusive one is held, so
// pulls that overlap back to back keep the exclusive lock out for ever. An exclusive locker
// therefore first takes the gate (see gate) and holds it until it unlocks, and a shared locker
// waits while the gate is held: gc waits for the shared holders there when it asked, never for
// those that arrive after.
func (s *Store) lock(ctx context.Context, how int) (func(), error) {
	f, err := s.openLockFile(how)
	if err != nil {
		return nil, fmt.Errorf("opening store lock: %w", err)
	}
	gate := gateFree
	if how&unix.LOCK_EX != 0 {
		gate = gateTake
	} else if s.held.Load() > 0 {
		// This handle holds the lock already: waiting behind a gc that waits for us would
		// deadlock, and one more shared lock makes gc wait no longer than it does anyway.
		gate = nil
	}
	if gate != nil {
		shared := how&unix.LOCK_EX == 0
		err := s.poll(ctx, func() (bool, error) {
			if shared && s.held.Load() > 0 {
				// Another lock of this handle got in meanwhile (through the gate before gc took
				// it): gc now waits for that holder, which may wait for us.
				return true, nil
			}
			return gate(f)
		})
		if err != nil {
			f.Close()
			return nil, err
		}
	}
	if s.onGatePassed != nil {
		s.onGatePassed()
	}
	err = s.poll(ctx, func() (bool, error) {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if errors.Is(err, unix.EWOULDBLOCK) || errors.Is(err, unix.EINTR) {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		f.Close()
		return nil, err
	}
	s.held.Add(1)
	var done bool
	return func() {
		if done {
			return
		}
		done = true
		s.held.Add(-1)
		f.Close() // closing the description drops the flock and the gate
	}, nil
}

// poll calls try until it succeeds, fails or ctx ends. It polls rather than blocks so that a
// cancelled context stops the wait (a blocking flock cannot be interrupted): from 1 ms, doubling
// up to 128 ms. try is called once before ctx is looked at, so a cancelled ctx tries once.
func (s *Store) poll(ctx context.Context, try func() (bool, error)) error {
	wait := time.Millisecond
	for waited := false; ; waited = true {
		ok, err := try()
		if err != nil {
			return fmt.Errorf("locking store %s: %w", s.root, err)
		}
		if ok {
			return nil
		}
		if !waited && s.onLockWait != nil {
			s.onLockWait()
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("waiting for store lock: %w", ctx.Err())
		case <-t.C:
		}
		if wait < 100*time.Millisecond {
			wait *= 2
		}
	}
}

// The gate is an open-file-description (OFD) record lock on the first byte of the lock file,
// independent of the flock on the same file. Only exclusive lockers take it (a write lock, held
// on the lock's own description, so closing it at unlock drops both); shared lockers only ask
// whether it is held (F_OFD_GETLK) and so never hold it, and never delay an exclusive locker.
// Binaries that predate the gate ignore it: they can still starve gc, as before.
var gateRange = unix.Flock_t{Whence: 0, Start: 0, Len: 1}

// gateTake tries to take the gate (false, nil: another exclusive locker holds it).
func gateTake(f *os.File) (bool, error) {
	lk := gateRange
	lk.Type = unix.F_WRLCK
	err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EINTR) {
		return false, nil
	}
	return err == nil, err
}

// gateFree reports whether no exclusive locker holds the gate. A descriptor that cannot carry
// record locks (the root directory of a read-only store without a lock file, where no writer
// can be) counts as free.
func gateFree(f *os.File) (bool, error) {
	lk := gateRange
	lk.Type = unix.F_RDLCK
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return true, nil
	}
	return lk.Type == unix.F_UNLCK, nil
}

// openLockFile opens the lock file for flock, which works on a read-only descriptor too: a
// read-only store is locked without creating or writing anything (where even the lock file is
// missing, the root directory itself is locked: no writer can exist there). The exclusive lock
// is only for writers, so a read-only store refuses it.
func (s *Store) openLockFile(how int) (*os.File, error) {
	p := filepath.Join(s.root, fileLock)
	if !s.readOnly {
		return os.OpenFile(p, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	}
	if how&unix.LOCK_EX != 0 {
		return nil, s.writable()
	}
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return os.OpenFile(s.root, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	}
	return f, err
}

// requireLock guards writes: a writer that forgot the lock could race with gc.
func (s *Store) requireLock() error {
	if err := s.writable(); err != nil {
		return err
	}
	if s.held.Load() <= 0 {
		return errors.New("store: write without holding the store lock (call RLock or Lock first)")
	}
	return nil
}
