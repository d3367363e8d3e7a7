package store

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/verity"
)

// bufPool recycles the write buffers of spilled objects (one layer may have thousands).
var bufPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 256<<10) }}

func (w *writer) releaseBuf() {
	if w.bw != nil {
		w.bw.Reset(nil)
		bufPool.Put(w.bw)
		w.bw = nil
	}
}

// memLimit is how much of an object a writer keeps in memory before it spills to a temp file.
// Small objects that turn out to be stored already are then never written at all.
const memLimit = 1 << 20

// Ingest implements Ingester. Each committed object is fsynced, renamed into place and its
// directory fsynced; to ingest many objects at once use a Batch, which syncs the file system
// twice per batch instead of twice per object.
func (s *Store) Ingest(ctx context.Context, expected digest.Digest, size int64) (Writer, error) {
	return s.newWriter(ctx, nil, expected, size)
}

func (s *Store) newWriter(ctx context.Context, b *Batch, expected digest.Digest, size int64) (Writer, error) {
	if err := s.requireLock(); err != nil {
		return nil, err
	}
	if expected != "" {
		if err := checkDigest(expected); err != nil {
			return nil, err
		}
		if b != nil && b.has(expected) || s.HasObject(expected) {
			return nil, fmt.Errorf("object %s: %w", expected, errdefs.ErrAlreadyExists)
		}
	}
	if size < -1 {
		return nil, fmt.Errorf("object size %d: %w", size, errdefs.ErrInvalid)
	}
	w := &writer{s: s, batch: b, expected: expected, size: size, h: sha256.New()}
	if s.verity {
		w.vh = verity.New()
	}
	return w, nil
}

// WriteObject copies r into the store as one object and returns its digest; an object that
// exists already is success.
func WriteObject(ctx context.Context, ing Ingester, r io.Reader, expected digest.Digest, size int64) (digest.Digest, error) {
	w, err := ing.Ingest(ctx, expected, size)
	if errors.Is(err, errdefs.ErrAlreadyExists) {
		return expected, nil
	}
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Abort()
		return "", fmt.Errorf("writing object: %w", err)
	}
	d, err := w.Commit(ctx)
	if err != nil {
		w.Abort()
		return "", err
	}
	return d, nil
}

type writer struct {
	s        *Store
	batch    *Batch
	expected digest.Digest
	size     int64

	h     hash.Hash
	vh    *verity.Hasher // nil unless the store records fs-verity digests
	n     int64
	buf   []byte
	f     *os.File      // temp file once spilled
	bw    *bufio.Writer // buffers f: callers may write in small pieces
	holes bool          // f has holes: its size is set at commit
	pend  int64         // zeros after f's last write, not written yet (see writeSparse)
	done  bool
}

func (w *writer) Write(p []byte) (int, error) {
	if w.done {
		return 0, errors.New("store: write after commit or abort")
	}
	if w.size >= 0 && w.n+int64(len(p)) > w.size {
		return 0, fmt.Errorf("object %s: more than the expected %d bytes: %w", w.expected, w.size, errdefs.ErrDigestMismatch)
	}
	w.hash(p)
	w.n += int64(len(p))
	if w.f == nil && len(w.buf)+len(p) <= memLimit {
		if w.buf == nil && w.size > 0 && w.size <= memLimit {
			w.buf = make([]byte, 0, w.size) // one allocation: the object's size is known
		}
		w.buf = append(w.buf, p...)
		return len(p), nil
	}
	if w.f == nil {
		if err := w.spill(); err != nil {
			return 0, err
		}
	}
	if err := w.writeSparse(p, w.n-int64(len(p))); err != nil {
		return 0, fmt.Errorf("writing temp object: %w", err)
	}
	return len(p), nil
}

// holeBlock is the unit in which zero bytes are recognised: a file system block.
const holeBlock = 4096

// minHole is the shortest run of zeros a temp object skips instead of writing: shorter runs
// (page padding in binaries, small zero fields) cost a block at most, and skipping each would
// cost a flush and a seek.
const minHole = 64 << 10

// writeSparse writes p, which starts at offset off of the temp file. Pieces of zeros between
// block boundaries are not written but counted (pend), across writes, so a run of zeros costs
// no disk whichever way and in whatever pieces it arrives (a zeros chunk, a tar payload, a copy
// of a sparse file); objects stay as sparse as their content allows. Skipping is always right:
// nothing was written there before, and Commit sets the file's size.
func (w *writer) writeSparse(p []byte, off int64) error {
	for len(p) > 0 {
		k := min(int64(len(p)), holeBlock-off%holeBlock)
		if bytes.Equal(p[:k], zeros[:k]) {
			w.pend += k
		} else {
			if err := w.settleZeros(); err != nil {
				return err
			}
			if _, err := w.bw.Write(p[:k]); err != nil {
				return err
			}
		}
		p, off = p[k:], off+k
	}
	return nil
}

// settleZeros puts the pending zeros before the next data: a hole if the run is long enough,
// else written.
func (w *writer) settleZeros() error {
	n := w.pend
	if n == 0 {
		return nil
	}
	w.pend = 0
	if n < minHole {
		for ; n > 0; n -= min(n, int64(len(zeros))) {
			if _, err := w.bw.Write(zeros[:min(n, int64(len(zeros)))]); err != nil {
				return err
			}
		}
		return nil
	}
	if err := w.bw.Flush(); err != nil {
		return err
	}
	if _, err := w.f.Seek(n, io.SeekCurrent); err != nil {
		return err
	}
	w.holes = true
	return nil
}

// zeros is a source of zero bytes to hash.
var zeros [64 << 10]byte

// WriteHole appends n zero bytes. Once the object is in a file they become a hole where the
// file system allows (a zeros chunk of a zstd:chunked layer costs no disk).
func (w *writer) WriteHole(n int64) error {
	if w.done {
		return errors.New("store: write after commit or abort")
	}
	if n < 0 || w.size >= 0 && w.n+n > w.size {
		return fmt.Errorf("object %s: more than the expected %d bytes: %w", w.expected, w.size, errdefs.ErrDigestMismatch)
	}
	if w.f == nil && int64(len(w.buf))+n <= memLimit {
		for left := n; left > 0; {
			k := min(left, int64(len(zeros)))
			if _, err := w.Write(zeros[:k]); err != nil {
				return err
			}
			left -= k
		}
		return nil
	}
	if w.f == nil {
		if err := w.spill(); err != nil {
			return err
		}
	}
	for left := n; left > 0; {
		k := min(left, int64(len(zeros)))
		w.hash(zeros[:k])
		left -= k
	}
	w.n += n
	w.pend += n
	return nil
}

func (w *writer) spill() error {
	dir, err := w.s.tempShard()
	if err != nil {
		return fmt.Errorf("creating temp object: %w", err)
	}
	f, err := os.CreateTemp(dir, "obj-")
	if err != nil {
		return fmt.Errorf("creating temp object: %w", err)
	}
	w.f = f
	w.bw = bufPool.Get().(*bufio.Writer)
	w.bw.Reset(f)
	if err := w.writeSparse(w.buf, 0); err != nil {
		return fmt.Errorf("writing temp object: %w", err)
	}
	w.buf = nil
	return nil
}

func (w *writer) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	w.buf = nil
	w.releaseBuf()
	if w.f != nil {
		name := w.f.Name()
		w.f.Close()
		if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing temp object: %w", err)
		}
	}
	return nil
}

func (w *writer) Commit(ctx context.Context) (digest.Digest, error) {
	if w.done {
		return "", errors.New("store: commit after commit or abort")
	}
	if w.size >= 0 && w.n != w.size {
		w.Abort()
		return "", fmt.Errorf("object %s: got %d bytes, expected %d: %w", w.expected, w.n, w.size, errdefs.ErrDigestMismatch)
	}
	d := digest.NewDigest(digest.SHA256, w.h)
	if w.expected != "" && d != w.expected {
		w.Abort()
		return "", fmt.Errorf("object: got digest %s, expected %s: %w", d, w.expected, errdefs.ErrDigestMismatch)
	}
	if err := ctx.Err(); err != nil {
		w.Abort()
		return "", err
	}
	if w.vh != nil && w.batch != nil {
		w.batch.rec.noteVerity(d, w.vh.Digest())
	}
	dst, _ := w.s.ObjectPath(d)
	if (w.batch != nil && w.batch.has(d)) || exists(dst) {
		w.Abort()
		return d, nil
	}
	if w.f == nil {
		// Most objects are small and still in memory: one create, write and close.
		w.done = true
		dir, err := w.s.tempShard()
		var tmp string
		if err == nil {
			tmp, err = writeTemp(dir, w.buf, w.batch == nil && !w.s.noSync)
		}
		w.buf = nil
		if err != nil {
			return "", fmt.Errorf("object %s: %w", d, err)
		}
		return w.place(d, tmp, dst)
	}
	f := w.f
	w.done = true
	fail := func(err error) (digest.Digest, error) {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	if w.pend > 0 {
		w.holes = true // trailing zeros: the truncate below makes them a hole
	}
	err := w.bw.Flush()
	w.releaseBuf()
	if err == nil && w.holes {
		err = f.Truncate(w.n) // a trailing hole has no bytes to end the file
	}
	if err != nil {
		return fail(fmt.Errorf("writing temp object: %w", err))
	}
	// Read-only before it gets its name: a visible object is never writable.
	if err := f.Chmod(0o444); err != nil {
		return fail(fmt.Errorf("object %s: %w", d, err))
	}
	if w.batch == nil && !w.s.noSync {
		if err := f.Sync(); err != nil {
			return fail(fmt.Errorf("syncing object %s: %w", d, err))
		}
	}
	if err := f.Close(); err != nil {
		return fail(fmt.Errorf("object %s: %w", d, err))
	}
	return w.place(d, f.Name(), dst)
}

// place hands a complete, verified (and, outside a batch, synced) temp object to its batch, or
// gives it its name.
func (w *writer) place(d digest.Digest, tmp, dst string) (digest.Digest, error) {
	if w.batch != nil {
		w.batch.add(d, tmp)
		return d, nil
	}
	pl := w.s.openPlacement()
	defer pl.close()
	created, err := placeObject(tmp, dst, true)
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("object %s: %w", d, err)
	}
	if created {
		pl.created(dst)
	}
	return d, nil
}

// hash feeds content to the object's digests.
func (w *writer) hash(p []byte) {
	w.h.Write(p)
	if w.vh != nil {
		w.vh.Write(p)
	}
}

// tempShards is how many directories under tmp/ hold temp objects. Creating files in one
// directory serialises on its lock: the writers of a pull (one per range request) would queue
// there.
const tempShards = 16

// tempShardPrefix names the temp object directories, tmp/o-0 … tmp/o-15; gc empties them but
// leaves them in place.
const tempShardPrefix = "o-"

// tempShard returns one of the temp object directories, in turn, creating it if this handle has
// not (mkdir would lock tmp/ itself).
func (s *Store) tempShard() (string, error) {
	n := s.tempShards.Add(1) % tempShards
	dir := filepath.Join(s.root, dirTmp, fmt.Sprintf("%s%d", tempShardPrefix, n))
	if s.tempShardMade.Load()&(1<<n) != 0 {
		return dir, nil
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	s.tempShardMade.Or(1 << n)
	return dir, nil
}

// writeTemp writes data to a new read-only temp file in dir with bare syscalls and returns its
// path; with sync it is fsynced.
func writeTemp(dir string, data []byte, sync bool) (string, error) {
	var rnd [12]byte
	for try := 0; ; try++ {
		rand.Read(rnd[:])
		p := dir + "/obj-" + hex.EncodeToString(rnd[:])
		fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o444)
		if err == unix.EEXIST && try < 10 {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("creating temp object: %w", err)
		}
		for b := data; len(b) > 0 && err == nil; {
			var n int
			n, err = unix.Write(fd, b)
			if err == unix.EINTR {
				err = nil
				continue
			}
			if err == nil {
				b = b[n:]
			}
		}
		if err == nil && sync {
			err = unix.Fsync(fd)
		}
		if cerr := unix.Close(fd); err == nil {
			err = cerr
		}
		if err != nil {
			unix.Unlink(p)
			return "", fmt.Errorf("writing temp object: %w", err)
		}
		return p, nil
	}
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// placeObject renames a verified temp file to its object name without replacing an existing
// object (another process may have committed the same content: that is success, with created
// false). With sync, the fan-out directory is fsynced so the name survives a crash. created says
// this call gave the object its name: the caller, and only it, counts it in the store's totals
// (see usageFile).
func placeObject(tmp, dst string, sync bool) (created bool, err error) {
	dir := filepath.Dir(dst)
	err = renameNoReplace(tmp, dst)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return false, err
		}
		if sync {
			if err := syncDir(filepath.Dir(dir)); err != nil {
				return false, err
			}
		}
		err = renameNoReplace(tmp, dst)
	}
	if errors.Is(err, fs.ErrExist) {
		return false, os.Remove(tmp)
	}
	if err != nil {
		return false, err
	}
	if sync {
		return true, syncDir(dir)
	}
	return true, nil
}

func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// File systems without RENAME_NOREPLACE: link fails on an existing name too.
		if err := os.Link(from, to); err != nil {
			return err
		}
		return os.Remove(from)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// writeFileAtomic writes a small metadata file: temp file in tmpDir, fsync, rename over dst,
// fsync dst's directory.
func writeFileAtomic(tmpDir, dst string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(tmpDir, "meta-")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return err
	}
	ok = true
	return syncDir(filepath.Dir(dst))
}

// Batch ingests many objects at once: objects are verified and written to temp files without
// waiting for the disk, then Commit fsyncs them all together (all data durable), renames every
// temp file to its object name and fsyncs the directories (all names durable). Until Commit no
// object of the batch is visible; a crash leaves only temp files.
type Batch struct {
	s       *Store
	mu      sync.Mutex
	pending map[digest.Digest]string
	done    bool
	rec     batchRecord // see scratch.go
}

// NewBatch starts a batch. The caller must hold a store lock until Commit or Abort.
func (s *Store) NewBatch() *Batch {
	return &Batch{s: s, pending: map[digest.Digest]string{}}
}

// Ingest is Store.Ingest within the batch.
func (b *Batch) Ingest(ctx context.Context, expected digest.Digest, size int64) (Writer, error) {
	return b.s.newWriter(ctx, b, expected, size)
}

func (b *Batch) has(d digest.Digest) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.pending[d]
	return ok
}

// OpenPending opens object d if it is pending in the batch: written and verified, not yet
// committed. Otherwise the error wraps ErrNotFound (a caller then opens the stored object). It
// is exported for the partial import (package store/layer), which rebuilds the tar for the
// DiffID from the objects it assembles while they are fetched and committed (a layer is
// recorded only if the DiffID matches; objects committed for a layer that is not are gc's).
// During a commit it waits for the commit's end.
func (b *Batch) OpenPending(d digest.Digest) (*os.File, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	tmp, ok := b.pending[d]
	if !ok || b.done {
		return nil, fmt.Errorf("object %s is not pending: %w", d, errdefs.ErrNotFound)
	}
	return os.Open(tmp)
}

// Len is the number of distinct objects the batch holds, written and not yet committed.
func (b *Batch) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.pending)
}

func (b *Batch) add(d digest.Digest, tmp string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.pending[d]; ok {
		os.Remove(tmp)
		return
	}
	b.pending[d] = tmp
	b.rec.noteObject(d)
}

// Commit makes every object of the batch visible and durable: it fsyncs the temp files (many at
// once, so the file system can group the journal commits), renames them, then fsyncs the fan-out
// directories it touched.
func (b *Batch) Commit(ctx context.Context) (err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	defer func() { b.rec.settle(err == nil) }()
	if b.done {
		return errors.New("store: batch already finished")
	}
	b.done = true
	if len(b.pending) == 0 {
		return nil
	}
	tmps := make([]string, 0, len(b.pending))
	for _, tmp := range b.pending {
		tmps = append(tmps, tmp)
	}
	// Many objects: one syncfs(2) of the store's file system is far cheaper than thousands of
	// fsyncs and gives the same guarantee (every temp file durable before any rename).
	bulk := len(tmps) > syncfsThreshold
	if bulk {
		if err := b.s.syncfs(); err != nil {
			b.abortLocked()
			return err
		}
	} else if err := b.s.parallel(ctx, tmps, syncFile); err != nil {
		b.abortLocked()
		return err
	}
	dirs := map[string]bool{}
	pl := b.s.openPlacement() // counts what this batch creates (see usageFile)
	defer pl.close()
	for d, tmp := range b.pending {
		if err := ctx.Err(); err != nil {
			b.abortLocked()
			return err
		}
		dst, _ := b.s.ObjectPath(d)
		if !exists(filepath.Dir(dst)) {
			dirs[filepath.Join(b.s.root, dirObjects)] = true
		}
		created, err := placeObject(tmp, dst, false)
		if err != nil {
			b.abortLocked()
			return fmt.Errorf("object %s: %w", d, err)
		}
		if created {
			pl.created(dst)
		}
		dirs[filepath.Dir(dst)] = true
		delete(b.pending, d)
	}
	pl.close()
	if bulk {
		return b.s.syncfs()
	}
	list := make([]string, 0, len(dirs))
	for d := range dirs {
		list = append(list, d)
	}
	return b.s.parallel(ctx, list, syncDir)
}

// syncfsThreshold is the batch size above which Commit syncs the whole file system instead of
// each file and directory.
const syncfsThreshold = 64

// syncfs flushes the store's file system (data and metadata) to disk.
func (s *Store) syncfs() error {
	if s.noSync {
		return nil
	}
	f, err := os.Open(s.root)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncing the store's file system: %w", err)
	}
	return nil
}

// parallel runs fn on every path with a few workers; fsyncs issued together are cheaper.
func (s *Store) parallel(ctx context.Context, paths []string, fn func(string) error) error {
	if s.noSync {
		return nil
	}
	const workers = 16
	ch := make(chan string)
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for range min(workers, len(paths)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var first error
			for p := range ch {
				if err := fn(p); err != nil && first == nil {
					first = err
				}
			}
			errc <- first
		}()
	}
	for _, p := range paths {
		if ctx.Err() != nil {
			break
		}
		ch <- p
	}
	close(ch)
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			return err
		}
	}
	return ctx.Err()
}

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", p, err)
	}
	return nil
}

// Abort removes the batch's temp files.
func (b *Batch) Abort() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done = true
	b.abortLocked()
	b.rec.settle(false)
	return nil
}

func (b *Batch) abortLocked() {
	for d, tmp := range b.pending {
		os.Remove(tmp)
		delete(b.pending, d)
	}
}
