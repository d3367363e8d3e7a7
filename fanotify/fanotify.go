// Package fanotify binds the kernel's fanotify pre-content events (Linux 6.14+): a listener
// marks files, and the first access to any range of a marked file (or its open, with
// OpenPerm) blocks until the listener answers, so it can fill the file before the reader sees
// it. Package lazy builds its fill service on it.
package fanotify

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/errdefs"
)

// Values of include/uapi/linux/fanotify.h (6.14+) that golang.org/x/sys may lack.
const (
	// PreAccess is FAN_PRE_ACCESS: raised before any read or write of a range of a marked
	// file, on a group of class FAN_CLASS_PRE_CONTENT.
	PreAccess = 0x00100000
	// OpenPerm is FAN_OPEN_PERM: raised before a marked file is opened. Opening a file of a
	// composefs mount opens its data-only lower file (the object) on the opener's behalf, so
	// it raises OpenPerm on the object before the opener can read or map it.
	OpenPerm = unix.FAN_OPEN_PERM
	// classPreContent is FAN_CLASS_PRE_CONTENT.
	classPreContent = 0x00000008
	// infoTypeRange is FAN_EVENT_INFO_TYPE_RANGE: the record after the metadata of a
	// pre-content event saying which range is accessed.
	infoTypeRange = 6
	// metadataLen is sizeof(struct fanotify_event_metadata).
	metadataLen = 24
	// rangeInfoLen is sizeof(struct fanotify_event_info_range): hdr (u8 type, u8 pad,
	// u16 len), u32 pad, u64 offset, u64 count.
	rangeInfoLen = 24
	// metadataVersion is FANOTIFY_METADATA_VERSION.
	metadataVersion = 3
	allow           = 0x01 // FAN_ALLOW
	deny            = 0x02 // FAN_DENY
	errnoShift      = 24   // FAN_DENY_ERRNO(err): FAN_DENY | (err & 0xff) << 24
)

// Event is one pre-content or open-permission event (Mask says which). File is the kernel's
// descriptor of the accessed file (read-only; when the access came through an overlay mount
// it is opened on overlay's private clone of the lower mount, so it cannot be written
// through). The caller answers it with Group.Allow or Group.Deny, which also closes File.
type Event struct {
	Mask uint64
	File *os.File
	// PID is the accessing thread's ID (the group reports thread IDs, so that a listener can
	// recognise the accesses of its own writer threads).
	PID int
	// Offset and Count are the accessed range, when HasRange.
	Offset, Count uint64
	HasRange      bool
}

// Group is a fanotify group of class FAN_CLASS_PRE_CONTENT.
type Group struct {
	f *os.File
}

// NewPreContent creates a pre-content group. Needs CAP_SYS_ADMIN; a kernel without
// pre-content events refuses with ErrUnsupported.
func NewPreContent() (*Group, error) {
	// Unlimited marks: a fill service marks each placeholder it fills (an ignore mark), and
	// fs.fanotify.max_user_marks (8192 and up, with the memory) is shared by all of root's groups.
	fd, err := unix.FanotifyInit(classPreContent|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK|
		unix.FAN_UNLIMITED_QUEUE|unix.FAN_UNLIMITED_MARKS|unix.FAN_REPORT_TID, unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		return nil, classify("fanotify_init(FAN_CLASS_PRE_CONTENT)", err)
	}
	// A non-blocking descriptor goes through Go's poller, so Close ends a blocked Read.
	return &Group{f: os.NewFile(uintptr(fd), "fanotify")}, nil
}

func classify(what string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%s: %w: %w", what, errdefs.ErrPermission, err)
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("%s: %w (fanotify pre-content events need Linux 6.14+): %w", what, errdefs.ErrUnsupported, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// marked is every event a mark may ask for; Unmark removes them all.
const marked = PreAccess | OpenPerm

// Mark adds the events of mask (PreAccess, OpenPerm) to the inode of f. PreAccess is raised
// only on descriptors opened after the mark: the kernel decides at open time.
func (g *Group) Mark(f *os.File, mask uint64) error {
	return g.mark(unix.FAN_MARK_ADD, mask, f)
}

// MarkChildren marks the directory path names for the events of mask on the files in it
// (FAN_EVENT_ON_CHILD): one mark stands for a directory of placeholders. A file in it stops
// raising them once IgnorePath says so.
func (g *Group) MarkChildren(path string, mask uint64) error {
	return g.markAt(unix.FAN_MARK_ADD|unix.FAN_MARK_ONLYDIR, mask|unix.FAN_EVENT_ON_CHILD, unix.AT_FDCWD, path)
}

// IgnorePath makes the inode path names raise none of the events of mask any more, whatever
// mark (its own or its directory's) asks for them: an ignore mark that survives the inode's
// modification (FAN_MARK_IGNORE_SURV, Linux 6.0+).
func (g *Group) IgnorePath(path string, mask uint64) error {
	return g.markAt(unix.FAN_MARK_ADD|unix.FAN_MARK_IGNORE_SURV, mask, unix.AT_FDCWD, path)
}

// Unmark removes the mark of f's inode; later opens raise no events.
func (g *Group) Unmark(f *os.File) error {
	return g.mark(unix.FAN_MARK_REMOVE, marked, f)
}

func (g *Group) mark(flags uint, mask uint64, f *os.File) error {
	err := g.markAt(flags, mask, int(f.Fd()), "")
	if err != nil {
		return fmt.Errorf("%s: %w", f.Name(), err)
	}
	return nil
}

func (g *Group) markAt(flags uint, mask uint64, dirfd int, path string) error {
	rc, err := g.f.SyscallConn()
	if err != nil {
		return err
	}
	var merr error
	if err := rc.Control(func(gfd uintptr) {
		merr = unix.FanotifyMark(int(gfd), flags, mask, dirfd, path)
	}); err != nil {
		return err
	}
	if merr != nil {
		return classify("fanotify_mark "+path, merr)
	}
	return nil
}

// Read blocks for events and returns those of one read. A closed group returns os.ErrClosed.
func (g *Group) Read(buf []byte) ([]Event, error) {
	n, err := g.f.Read(buf)
	if err != nil {
		return nil, err
	}
	return parse(buf[:n])
}

// parse decodes a read buffer: metadata records, each followed by its info records.
func parse(b []byte) ([]Event, error) {
	var evs []Event
	for len(b) > 0 {
		if len(b) < metadataLen {
			return evs, fmt.Errorf("fanotify: short event record (%d bytes)", len(b))
		}
		evLen := int(binary.NativeEndian.Uint32(b[0:4]))
		metaLen := int(binary.NativeEndian.Uint16(b[6:8]))
		if b[4] != metadataVersion || evLen < metadataLen || evLen > len(b) || metaLen < metadataLen || metaLen > evLen {
			return evs, fmt.Errorf("fanotify: malformed event record (version %d, length %d of %d)", b[4], evLen, len(b))
		}
		ev := Event{Mask: binary.NativeEndian.Uint64(b[8:16]), PID: int(int32(binary.NativeEndian.Uint32(b[20:24])))}
		if fd := int32(binary.NativeEndian.Uint32(b[16:20])); fd >= 0 {
			ev.File = os.NewFile(uintptr(fd), "fanotify-event")
		}
		parseInfo(&ev, b[metaLen:evLen])
		evs = append(evs, ev)
		b = b[evLen:]
	}
	return evs, nil
}

// parseInfo reads the range record among an event's info records; others are skipped.
func parseInfo(ev *Event, b []byte) {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[2:4]))
		if l < 4 || l > len(b) {
			return
		}
		if b[0] == infoTypeRange && l >= rangeInfoLen {
			ev.Offset = binary.NativeEndian.Uint64(b[8:16])
			ev.Count = binary.NativeEndian.Uint64(b[16:24])
			ev.HasRange = true
		}
		b = b[l:]
	}
}

// Allow lets the access go on and closes the event's descriptor.
func (g *Group) Allow(ev Event) error { return g.respond(ev, allow) }

// Deny fails the access with errno (the kernel accepts EIO, EPERM, EBUSY, ETXTBSY, EAGAIN,
// ENOSPC and EDQUOT; 0 means EPERM) and closes the event's descriptor.
func (g *Group) Deny(ev Event, errno syscall.Errno) error {
	return g.respond(ev, deny|(uint32(errno)&0xff)<<errnoShift)
}

func (g *Group) respond(ev Event, resp uint32) error {
	if ev.File == nil {
		return nil
	}
	defer ev.File.Close()
	var b [8]byte
	binary.NativeEndian.PutUint32(b[0:4], uint32(int32(ev.File.Fd())))
	binary.NativeEndian.PutUint32(b[4:8], resp)
	if _, err := g.f.Write(b[:]); err != nil {
		return fmt.Errorf("answering fanotify event: %w", err)
	}
	return nil
}

// Close ends the group: its marks go, pending events are allowed by the kernel, and a
// blocked Read returns.
func (g *Group) Close() error { return g.f.Close() }
