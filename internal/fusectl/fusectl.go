// Package fusectl aborts FUSE connections through the fusectl file system, as the kernel does
// when a server's /dev/fuse descriptor closes: what a kill -9 of the server leaves.
package fusectl

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

const (
	dir   = "/sys/fs/fuse/connections"
	magic = 0x65735543 // FUSE_CTL_SUPER_MAGIC
)

// Conn is the number of the FUSE connection serving the file system whose device is dev
// (st_dev of its root), the name of its directory in fusectl.
func Conn(dev uint64) uint32 { return unix.Major(dev)<<20 | unix.Minor(dev) }

// Abort aborts FUSE connection conn. fusectl is mounted first if it is not (a machine without
// systemd leaves it unmounted). A connection already ended has no directory: nothing to do.
func Abort(conn uint32) error {
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err == nil && sfs.Type != magic {
		if err := unix.Mount("fusectl", dir, "fusectl", 0, ""); err != nil {
			return fmt.Errorf("mounting fusectl: %w", err)
		}
	}
	err := os.WriteFile(fmt.Sprintf("%s/%d/abort", dir, conn), []byte("1"), 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
