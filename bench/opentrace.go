package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// openTrace records the regular files opened (or executed, ld.so included) through one mount:
// a fanotify notification group with a mount mark, in the untimed trace run only. It sees what
// the container read whichever way Kura served it (a fill, read-ahead, the store), and nothing
// bound over the mount (the pristine programs, ports.conf), which is not the image's.
type openTrace struct {
	fd   int
	mnt  string
	seen map[string]int64 // path under the mount → size
}

// startOpenTrace marks the mount. The events queue in the kernel (up to 16384) until stop
// reads them: no reader runs meanwhile.
func startOpenTrace(mnt string) (*openTrace, error) {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDONLY|unix.O_LARGEFILE)
	if err != nil {
		return nil, fmt.Errorf("fanotify_init: %w", err)
	}
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, unix.FAN_OPEN|unix.FAN_OPEN_EXEC, unix.AT_FDCWD, mnt); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fanotify_mark %s: %w", mnt, err)
	}
	return &openTrace{fd: fd, mnt: mnt, seen: map[string]int64{}}, nil
}

// stop reads the events queued so far, ends the trace and returns the files and their sizes.
func (t *openTrace) stop() (paths []string, bytes int64, err error) {
	defer unix.Close(t.fd)
	if err := t.read(); err != nil {
		return nil, 0, err
	}
	for p, n := range t.seen {
		paths = append(paths, p)
		bytes += n
	}
	sort.Strings(paths)
	return paths, bytes, nil
}

// read takes the queued events until none is left.
func (t *openTrace) read() error {
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(t.fd, buf)
		if err == unix.EAGAIN {
			return nil
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("reading fanotify events: %w", err)
		}
		for p := buf[:n]; len(p) >= fanotifyMetadataSize; {
			l := binary.NativeEndian.Uint32(p[0:4])
			if l < fanotifyMetadataSize || int(l) > len(p) {
				return errors.New("fanotify: malformed event")
			}
			if binary.NativeEndian.Uint64(p[8:16])&unix.FAN_Q_OVERFLOW != 0 {
				return errors.New("fanotify: the event queue overflowed; the trace is incomplete")
			}
			if fd := int32(binary.NativeEndian.Uint32(p[16:20])); fd >= 0 {
				t.note(int(fd))
			}
			p = p[l:]
		}
	}
}

func (t *openTrace) note(fd int) {
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return
	}
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return
	}
	// apache2 runs in a mount namespace of its own: its opens are through a copy of the mount
	// the bench cannot reach, whose paths read from the mount's root.
	if rel, err := filepath.Rel(t.mnt, p); err == nil && !strings.HasPrefix(rel, "..") {
		t.seen[rel] = st.Size
	} else if strings.HasPrefix(p, "/") {
		t.seen[strings.TrimPrefix(p, "/")] = st.Size
	}
}

// fanotifyMetadataSize is sizeof(struct fanotify_event_metadata): event_len, vers, reserved,
// metadata_len, mask, fd, pid.
const fanotifyMetadataSize = 24
