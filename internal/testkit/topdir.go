package testkit

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TopDir reports whether directory dir carries FS_TOPDIR_FL (chattr +T), which
// store.SpreadSubdirs sets; it fails the test when the file system cannot say (the scratch
// directories of tests live on this machine's ext4).
func TopDir(t testing.TB, dir string) bool {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		t.Fatalf("FS_IOC_GETFLAGS on %s: %v", dir, err)
	}
	return flags&0x00020000 != 0 // FS_TOPDIR_FL
}
