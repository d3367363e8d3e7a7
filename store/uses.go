package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/mountinfo"
)

// dirUses holds one record per live use of an image (see docs/design.md, "Uses"). It is made
// on the first use, so stores made before it need no upgrade.
const dirUses = "uses"

// UseKind says how an image is in use.
type UseKind string

const (
	// UseMount is a composefs mount (kura mount) that reads the image's objects.
	UseMount UseKind = "mount"
	// UseCheckout is a directory the image was checked out into.
	UseCheckout UseKind = "checkout"
)

// Use is one mount or checkout of an image: a lease, as containerd calls it. While its record
// exists and its target is still there, gc keeps the image, its layers and objects, and rmi
// refuses to remove the image's last name without force.
type Use struct {
	// ID names the record (uses/<ID>.json). It is random, so dropping a record found stale can
	// never remove a newer record for the same target.
	ID      string        `json:"-"`
	Kind    UseKind       `json:"kind"`
	Image   digest.Digest `json:"image"`
	Target  string        `json:"target"` // absolute, symlinks resolved
	Created time.Time     `json:"created"`
	// The writer (kura mount or checkout): while it runs, a mount record without a MountID is
	// live whatever its target shows, so a record written before its mount exists is never
	// dropped as stale.
	PID      int    `json:"pid"`
	PIDStart uint64 `json:"pidStart"`
	// BootID is the kernel's boot ID: after a reboot no mount of before is left.
	BootID string `json:"bootID"`
	// A checkout's target directory, as it was: a directory removed (and perhaps made anew) is
	// another directory.
	Dev   uint64 `json:"dev,omitempty"`
	Ino   uint64 `json:"ino,omitempty"`
	Btime int64  `json:"btime,omitempty"` // ns since the epoch; 0 where the file system has none
	// A mount as /proc/PID/mountinfo shows it: mount namespace (inode of /proc/self/ns/mnt),
	// mount ID (0 until the mount is made), file system type and source.
	MountNS uint64 `json:"mountNS,omitempty"`
	MountID int    `json:"mountID,omitempty"`
	FSType  string `json:"fsType,omitempty"`
	Source  string `json:"source,omitempty"`
}

// CanonicalTarget is the form a use's target is recorded and looked up in: absolute, with
// symlinks resolved (as mountinfo shows mount points). The target must exist.
func CanonicalTarget(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// AddUse records a use of an image, under the shared lock (the image must be stored, and gc
// cannot run until the lock is released, by which time the record is durable). For a mount,
// set FSType and Source to what the mount will show, and call UpdateUse with its MountID once
// it is made. AddUse fills in ID, Created, the writer, and the target's identity.
func (s *Metadata) AddUse(ctx context.Context, u Use) (Use, error) {
	if s.handle.ReadOnly() {
		// Nothing can be removed from a read-only store, so there is nothing to protect: the use
		// goes unrecorded (an empty ID), and UpdateUse and DropUse of it do nothing.
		return Use{}, nil
	}
	if err := s.requireLock(); err != nil {
		return Use{}, err
	}
	if u.Kind != UseMount && u.Kind != UseCheckout {
		return Use{}, fmt.Errorf("use kind %q: %w", u.Kind, errdefs.ErrInvalid)
	}
	if _, err := s.Image(ctx, u.Image); err != nil {
		return Use{}, fmt.Errorf("recording a use: %w", err)
	}
	target, err := CanonicalTarget(u.Target)
	if err != nil {
		return Use{}, fmt.Errorf("recording a use of %s: %w", u.Target, err)
	}
	u.Target, u.Created, u.PID = target, time.Now().UTC(), os.Getpid()
	u.PIDStart, _ = processStart(u.PID)
	u.BootID = bootID()
	if u.Kind == UseCheckout {
		if u.Dev, u.Ino, u.Btime, err = dirIdentity(target); err != nil {
			return Use{}, fmt.Errorf("recording a use of %s: %w", target, err)
		}
	} else {
		u.MountNS = mountNS("self")
	}
	var id [16]byte
	rand.Read(id[:])
	u.ID = hex.EncodeToString(id[:])
	err = os.MkdirAll(filepath.Join(s.root, dirUses), 0o700)
	if err == nil {
		err = s.writeUse(u)
	}
	if errors.Is(err, unix.EROFS) {
		// Nothing can be removed from a store on a read-only file system, so there is nothing
		// to protect: the use goes unrecorded (an empty ID), and UpdateUse and DropUse of it
		// do nothing.
		return Use{}, nil
	}
	if err != nil {
		return Use{}, fmt.Errorf("recording a use: %w", err)
	}
	return u, nil
}

// UpdateUse rewrites a use's record (a mount's ID once it is made), atomically.
func (s *Metadata) UpdateUse(u Use) error {
	if u.ID == "" {
		return nil // never recorded (a read-only store)
	}
	if err := s.requireLock(); err != nil {
		return err
	}
	return s.writeUse(u)
}

func (s *Metadata) writeUse(u Use) error {
	b, err := json.Marshal(u)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(s.root, dirTmp), s.usePath(u.ID), append(b, '\n'), 0o444); err != nil {
		return fmt.Errorf("writing use record: %w", err)
	}
	return nil
}

func (s *Metadata) usePath(id string) string { return filepath.Join(s.root, dirUses, id+".json") }

// DropUse removes a use's record (an unmount, a released checkout, a failed mount). Dropping
// needs no lock: it only lets gc free more, and gc reads the records under its exclusive lock.
func (s *Metadata) DropUse(u Use) error {
	if u.ID == "" {
		return nil // never recorded
	}
	if err := os.Remove(s.usePath(u.ID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("dropping use record: %w", err)
	}
	return syncDir(filepath.Join(s.root, dirUses))
}

// Uses returns the live uses, and drops the records of uses that are gone: a mount no longer
// in its namespace's mountinfo (unmounted by hand, or a reboot), a checkout directory that is
// gone or is another directory now. A record whose state cannot be checked counts as live.
func (s *Metadata) Uses(ctx context.Context) ([]Use, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, dirUses))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing uses: %w", err)
	}
	var live []Use
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue // a stray file protects nothing
		}
		u, err := s.readUse(id)
		if errors.Is(err, fs.ErrNotExist) {
			continue // dropped meanwhile (an umount, another listing)
		}
		if err != nil {
			// gc must not guess what an unreadable record protects: it stops, and says which.
			return nil, fmt.Errorf("%w (remove %s if nothing uses it)", err, s.usePath(id))
		}
		if ok, err := u.live(); err != nil || ok {
			live = append(live, u)
			continue
		}
		s.DropUse(u) // a read-only store keeps it; it protects nothing there anyway
	}
	return live, ctx.Err()
}

func (s *Metadata) readUse(id string) (Use, error) {
	b, err := os.ReadFile(s.usePath(id))
	if err != nil {
		return Use{}, fmt.Errorf("reading use record %s: %w", id, err)
	}
	var u Use
	if err := json.Unmarshal(b, &u); err != nil {
		return Use{}, fmt.Errorf("use record %s: %v: %w", id, err, errdefs.ErrInvalid)
	}
	u.ID = id
	return u, nil
}

// ReleaseCheckout drops the records of checkouts into dir: the tree stays, and gc may then free
// the image once nothing else names or uses it. ErrNotFound if none was recorded.
func (s *Metadata) ReleaseCheckout(ctx context.Context, dir string) error {
	target, err := CanonicalTarget(dir)
	if err != nil {
		return fmt.Errorf("releasing checkout %s: %w", dir, err)
	}
	ents, err := os.ReadDir(filepath.Join(s.root, dirUses))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	n := 0
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		u, err := s.readUse(id)
		if !ok || err != nil || u.Kind != UseCheckout || u.Target != target {
			continue
		}
		if err := s.DropUse(u); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("no checkout recorded at %s: %w", target, errdefs.ErrNotFound)
	}
	return nil
}

// live says whether the use is still there. Errors mean "cannot tell"; callers keep the record.
func (u Use) live() (bool, error) {
	if u.BootID != bootID() {
		return false, nil
	}
	switch u.Kind {
	case UseCheckout:
		dev, ino, btime, err := dirIdentity(u.Target)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
			return false, nil
		}
		return err == nil && dev == u.Dev && ino == u.Ino && btime == u.Btime, err
	case UseMount:
		if start, err := processStart(u.PID); u.MountID == 0 && err == nil && start == u.PIDStart {
			return true, nil // its writer is still making the mount
		}
		entries, err := mountsIn(u.MountNS)
		if err != nil || entries == nil {
			return err != nil, err
		}
		for _, e := range entries {
			if e.Point == u.Target && e.FSType == u.FSType && e.Source == u.Source && (u.MountID == 0 || e.ID == u.MountID) {
				return true, nil
			}
		}
		return false, nil
	}
	return true, nil // a kind this build does not know: keep it
}

// dirIdentity is what tells a directory from another made at the same path later.
func dirIdentity(p string) (dev, ino uint64, btime int64, err error) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE|unix.STATX_INO|unix.STATX_BTIME, &st); err != nil {
		return 0, 0, 0, &fs.PathError{Op: "statx", Path: p, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, 0, 0, &fs.PathError{Op: "statx", Path: p, Err: unix.ENOTDIR}
	}
	if st.Mask&unix.STATX_BTIME != 0 {
		btime = st.Btime.Sec*1e9 + int64(st.Btime.Nsec)
	}
	return unix.Mkdev(st.Dev_major, st.Dev_minor), st.Ino, btime, nil
}

// processStart is a process's start time (clock ticks after boot, field 22 of /proc/PID/stat):
// with the PID it names one process, even after the PID is reused.
func processStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

// mountNS is the inode of a process's mount namespace, 0 if unknown.
func mountNS(pid string) uint64 {
	var st unix.Stat_t
	if unix.Stat("/proc/"+pid+"/ns/mnt", &st) != nil {
		return 0
	}
	return st.Ino
}

// mountsIn returns the mounts of namespace ns, read through a process in it (this one if it is
// ours); nil and no error when no process is left in it, so its mounts are gone.
func mountsIn(ns uint64) ([]mountinfo.Entry, error) {
	if ns == 0 || ns == mountNS("self") {
		return mountinfo.Read("self")
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil || mountNS(p.Name()) != ns {
			continue
		}
		if entries, err := mountinfo.Read(p.Name()); err == nil {
			return entries, nil
		}
	}
	return nil, nil
}
