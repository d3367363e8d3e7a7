// Package mount mounts composefs images: a Plan says what will be mounted and how (EROFS image,
// overlayfs with data-only object layers, verity policy, fallbacks) and can be inspected without
// privileges; Mount performs a plan and Unmount undoes it.
package mount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/mountinfo"
)

// Verity is the overlayfs verity policy for objects.
type Verity string

const (
	// VerityOff does not check objects.
	VerityOff Verity = "off"
	// VerityOn checks objects whose metacopy xattr has a digest, when they have fs-verity.
	VerityOn Verity = "on"
	// VerityRequire refuses to read any object without a matching fs-verity digest.
	VerityRequire Verity = "require"
)

// Source and FSType are what mountinfo shows for a composefs mount: they tell Kura's mounts
// from others (Unmount, stacking) and let the store recognise a recorded mount.
const (
	Source = "composefs"
	FSType = "overlay"
)

// overlaySource is what /proc/mounts shows as the overlay's source.
const overlaySource = Source

// Param is one fsconfig(2) parameter; an empty Value is a flag.
type Param struct {
	Key   string
	Value string
}

// Plan describes a composefs mount. Build it with NewPlan; every field is plain data.
type Plan struct {
	// Image is the composefs EROFS image file.
	Image string
	// ObjectDirs are the data-only lower layers holding the objects the image redirects to.
	ObjectDirs []string
	// Target is where the overlay is mounted.
	Target string
	// Verity is the overlay's verity policy.
	Verity Verity
	// UpperDir and WorkDir, when set, make the mount writable.
	UpperDir, WorkDir string
	// Suid and Dev keep setuid/setgid bits and device nodes working through the mount. By
	// default the mount is nosuid and nodev, as podman mounts image content: an image's setuid
	// binary must not give a local user root, nor its device node raw access to a disk.
	Suid, Dev bool
	// EROFS are the fsconfig parameters of the EROFS mount: source, ro, and noacl unless the
	// image has ACLs.
	EROFS []Param
	// Base, when set, is the composefs image that Image was written above (WithBase), and
	// BaseEROFS the parameters of its EROFS mount.
	Base      string
	BaseEROFS []Param
	// ImageDir and BaseDir, when set, are where MountImage has mounted the image and the base
	// already: the overlay takes them from there, and every overlay that does shares their
	// EROFS file systems (inodes, dentries).
	ImageDir, BaseDir string
}

// Option changes a plan.
type Option func(*Plan)

// WithVerity sets the verity policy (default VerityOff).
func WithVerity(v Verity) Option { return func(p *Plan) { p.Verity = v } }

// WithUpper makes the mount writable with an upper and a work directory on the same filesystem.
func WithUpper(upper, work string) Option {
	return func(p *Plan) { p.UpperDir, p.WorkDir = upper, work }
}

// WithSuid lets setuid and setgid bits take effect (mount(8)'s suid).
func WithSuid() Option { return func(p *Plan) { p.Suid = true } }

// WithDev lets device nodes be opened (mount(8)'s dev).
func WithDev() Option { return func(p *Plan) { p.Dev = true } }

// WithBase mounts image above the composefs image base in one overlay: image is a stacked one
// (composefs.WithStacking, such as a composefs.DeltaTree's image) and the mount shows what the
// two merge to. It needs lowerdir+ and datadir+ (Linux 6.7 or later).
func WithBase(base string) Option { return func(p *Plan) { p.Base = base } }

// WithMountedImages takes the image's EROFS file system, and its base's (WithBase), from where
// MountImage has mounted them ("" for one the mount makes itself, and detaches).
func WithMountedImages(imageDir, baseDir string) Option {
	return func(p *Plan) { p.ImageDir, p.BaseDir = imageDir, baseDir }
}

// MountImage mounts a composefs image's EROFS file system alone at target, read-only, nosuid and
// nodev, for overlays to share (WithMountedImages).
func MountImage(image, target string) error {
	params, err := erofsParams(image)
	if err != nil {
		return err
	}
	if err := mountEROFS(image, params, target); err != nil {
		return wrapMountErr(fmt.Sprintf("mounting EROFS image %s at %s", image, target), err)
	}
	return nil
}

// NewPlan plans mounting image with its objects in objectDirs at target. It reads the image
// header (for the ACL flag) but needs no privileges.
func NewPlan(image string, objectDirs []string, target string, opts ...Option) (*Plan, error) {
	p := &Plan{Image: image, ObjectDirs: objectDirs, Target: target, Verity: VerityOff}
	for _, o := range opts {
		o(p)
	}
	switch p.Verity {
	case VerityOff, VerityOn, VerityRequire:
	default:
		return nil, fmt.Errorf("verity mode %q, want off, on or require: %w", p.Verity, errdefs.ErrInvalid)
	}
	if len(p.ObjectDirs) == 0 {
		return nil, fmt.Errorf("composefs mount of %s: no object directory: %w", image, errdefs.ErrInvalid)
	}
	if (p.UpperDir == "") != (p.WorkDir == "") {
		return nil, fmt.Errorf("composefs mount: upper and work directory go together: %w", errdefs.ErrInvalid)
	}
	var err error
	if p.EROFS, err = erofsParams(image); err != nil {
		return nil, err
	}
	if p.Base != "" {
		if p.BaseEROFS, err = erofsParams(p.Base); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// erofsParams are the fsconfig parameters of an image's EROFS mount.
func erofsParams(image string) ([]Param, error) {
	info, err := readInfo(image)
	if err != nil {
		return nil, err
	}
	ps := []Param{{"source", image}, {"ro", ""}}
	if !info.HasACL {
		ps = append(ps, Param{"noacl", ""})
	}
	return ps, nil
}

func readInfo(image string) (composefs.ImageInfo, error) {
	f, err := os.Open(image)
	if err != nil {
		return composefs.ImageInfo{}, fmt.Errorf("opening composefs image: %w", err)
	}
	defer f.Close()
	hdr := make([]byte, 4096)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return composefs.ImageInfo{}, fmt.Errorf("reading composefs image %s: %v: %w", image, err, errdefs.ErrInvalid)
	}
	info, err := composefs.ReadImageInfo(hdr)
	if err != nil {
		return info, fmt.Errorf("%s: %w", image, err)
	}
	return info, nil
}

// attrs are the MOUNT_ATTR_* flags of the overlay, and flags the same as MS_* for mount(2).
func (p *Plan) attrs() (attrs uint64, flags uintptr) {
	if p.ReadOnly() {
		attrs, flags = attrs|unix.MOUNT_ATTR_RDONLY, flags|unix.MS_RDONLY
	}
	if !p.Suid {
		attrs, flags = attrs|unix.MOUNT_ATTR_NOSUID, flags|unix.MS_NOSUID
	}
	if !p.Dev {
		attrs, flags = attrs|unix.MOUNT_ATTR_NODEV, flags|unix.MS_NODEV
	}
	return attrs, flags
}

// ReadOnly reports whether the overlay is mounted read-only (it is unless it has an upper dir).
func (p *Plan) ReadOnly() bool { return p.UpperDir == "" }

// Overlay returns the fsconfig parameters of the overlay mount over the EROFS images mounted at
// imageMounts (the image's, then with WithBase its base's), for the new mount API (paths need no
// escaping there).
func (p *Plan) Overlay(imageMounts ...string) []Param {
	ps := []Param{{"source", overlaySource}, {"metacopy", "on"}, {"redirect_dir", "on"}}
	if p.Verity != VerityOff {
		ps = append(ps, Param{"verity", string(p.Verity)})
	}
	for _, m := range imageMounts {
		ps = append(ps, Param{"lowerdir+", m})
	}
	for _, d := range p.ObjectDirs {
		ps = append(ps, Param{"datadir+", d})
	}
	if p.UpperDir != "" {
		ps = append(ps, Param{"upperdir", p.UpperDir}, Param{"workdir", p.WorkDir})
	}
	return ps
}

// LegacyOverlay returns mount(2) options for kernels without lowerdir+/datadir+: data-only
// layers after "::" (Linux 6.5), or, with dataOnly false, plain lower layers after ":" that the
// image's opaque root and 00..ff whiteouts hide.
func (p *Plan) LegacyOverlay(imageMount string, dataOnly bool) string {
	sep := ":"
	if dataOnly {
		sep = "::"
	}
	lower := escapeOption(imageMount)
	for _, d := range p.ObjectDirs {
		lower += sep + escapeOption(d)
	}
	opts := "metacopy=on,redirect_dir=on,lowerdir=" + lower
	if p.UpperDir != "" {
		opts += ",upperdir=" + escapeOption(p.UpperDir) + ",workdir=" + escapeOption(p.WorkDir)
	}
	if p.Verity != VerityOff {
		opts += ",verity=" + string(p.Verity)
	}
	return opts
}

// escapeOption escapes commas (and backslashes) in a path inside a mount option string.
func escapeOption(s string) string {
	return strings.NewReplacer(`\`, `\\`, ",", `\,`).Replace(s)
}

// permissionHint explains what to do without root.
const permissionHint = "mounting composefs needs root (CAP_SYS_ADMIN); use `kura checkout` to materialise the image in a directory instead"

// Mount performs the plan: mount the EROFS image privately, mount the overlay at the target,
// then detach the EROFS mount (the overlay keeps it alive).
func Mount(ctx context.Context, p *Plan) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("mounting %s at %s: %s: %w", p.Image, p.Target, permissionHint, errdefs.ErrPermission)
	}
	target, err := canonical(p.Target)
	if err != nil {
		return fmt.Errorf("mounting at %s: %w", p.Target, err)
	}
	// Two mounts of one target at once would both find it free and stack: a lock on the
	// directory serialises them (a mount made meanwhile covers the path, and Find sees it).
	unlock, err := lockTarget(target)
	if err != nil {
		return fmt.Errorf("mounting at %s: %w", p.Target, err)
	}
	defer unlock()
	if e, ok, err := Find(target); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("%s is a composefs mount already (mount ID %d): kura umount it first; mounts are not stacked: %w", p.Target, e.ID, errdefs.ErrAlreadyExists)
	}
	if p.Verity == VerityRequire {
		if err := probeVerity(p.ObjectDirs); err != nil {
			return err
		}
	}
	if p.ImageDir != "" {
		return mountOverlays(p, p.ImageDir)
	}
	staging, done, err := stageEROFS(p.Image, p.EROFS)
	if err != nil {
		return err
	}
	defer func() {
		if derr := done(); derr != nil && err == nil {
			err = derr
		}
	}()
	return mountOverlays(p, staging)
}

// stageEROFS mounts an image's EROFS file system at a fresh temporary directory, for an overlay
// to take as a lower layer. done detaches it (the overlay keeps it) and removes the directory.
func stageEROFS(image string, params []Param) (dir string, done func() error, err error) {
	if dir, err = os.MkdirTemp("", ".composefs-"); err != nil {
		return "", nil, fmt.Errorf("mounting composefs: %w", err)
	}
	if err := mountEROFS(image, params, dir); err != nil {
		os.Remove(dir)
		return "", nil, wrapMountErr(fmt.Sprintf("mounting EROFS image %s", image), err)
	}
	return dir, func() error {
		err := unix.Unmount(dir, unix.MNT_DETACH)
		os.Remove(dir)
		if err != nil {
			return fmt.Errorf("detaching EROFS mount %s: %w", dir, err)
		}
		return nil
	}, nil
}

// mountOverlays mounts the overlay over the image's EROFS mount at imageMount: stacked above
// the base's where the plan has one.
func mountOverlays(p *Plan, imageMount string) error {
	if p.Base != "" {
		return mountStacked(p, imageMount)
	}
	if err := mountOverlay(p, imageMount); err != nil {
		return wrapMountErr(fmt.Sprintf("mounting composefs overlay at %s", p.Target), err)
	}
	return nil
}

// lockTarget takes an exclusive flock on the target directory until the returned function runs.
// A process that opened the path before a mount covered it waits on the same inode; one that
// opens it after gets the mount's root, and Find sees the mount.
func lockTarget(target string) (func(), error) {
	fd, err := unix.Open(target, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return func() { unix.Close(fd) }, nil
}

func wrapMountErr(what string, err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%s: %v; %s: %w", what, err, permissionHint, errdefs.ErrPermission)
	}
	if errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("%s: kernel lacks support: %v: %w", what, err, errdefs.ErrUnsupported)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Find returns the composefs mount visible at target, if there is one. target is taken as
// mountinfo shows mount points: absolute, symlinks resolved.
func Find(target string) (mountinfo.Entry, bool, error) {
	entries, err := mountinfo.Read("self")
	if err != nil {
		return mountinfo.Entry{}, false, fmt.Errorf("reading mountinfo: %w", err)
	}
	e, ok := mountinfo.Top(entries, target)
	return e, ok && e.FSType == FSType && e.Source == Source, nil
}

// Unmount unmounts the composefs mount at target. It refuses anything else mounted there: kura
// umount must never take down a mount it did not make.
func Unmount(target string) error {
	abs, err := canonical(target)
	if err != nil {
		return fmt.Errorf("unmounting %s: %w", target, err)
	}
	entries, err := mountinfo.Read("self")
	if err != nil {
		return fmt.Errorf("reading mountinfo: %w", err)
	}
	e, ok := mountinfo.Top(entries, abs)
	if !ok {
		return fmt.Errorf("unmounting %s: not a mount point: %w", target, errdefs.ErrNotFound)
	}
	if e.FSType != FSType || e.Source != Source {
		return fmt.Errorf("unmounting %s: the mount there is %s from %q, not a composefs mount of kura's; use umount(8) for it: %w", target, e.FSType, e.Source, errdefs.ErrInvalid)
	}
	if err := unix.Unmount(abs, 0); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("unmounting %s: %v: %w", target, err, errdefs.ErrPermission)
		}
		return fmt.Errorf("unmounting %s: %w", target, err)
	}
	return nil
}

func canonical(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// probeVerity refuses verity=require where the objects cannot have fs-verity: overlayfs would
// accept the mount and then fail every read of an object with EIO. It measures one object; a
// file system without fs-verity (EOPNOTSUPP, ENOTTY) or an object without it (ENODATA: Kura
// does not enable it) fails. A directory without objects has nothing to refuse.
func probeVerity(dirs []string) error {
	obj, err := anyObject(dirs)
	if err != nil || obj == "" {
		return err
	}
	f, err := os.Open(obj)
	if err != nil {
		return fmt.Errorf("probing fs-verity: %w", err)
	}
	defer f.Close()
	// struct fsverity_digest: u16 algorithm, u16 size (in: buffer size), then the digest.
	buf := make([]byte, 4+64)
	buf[2] = 64
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.FS_IOC_MEASURE_VERITY, uintptr(unsafe.Pointer(&buf[0])))
	if errno == 0 {
		return nil
	}
	why := "the objects' file system has no fs-verity"
	if errno == unix.ENODATA {
		why = "the objects have no fs-verity enabled"
	}
	return fmt.Errorf("--verity require: %s (measuring %s: %v); every read would fail with EIO: mount with --verity off: %w", why, obj, errno, errdefs.ErrUnsupported)
}

// anyObject finds one regular file in the objects' fan-out directories.
func anyObject(dirs []string) (string, error) {
	for _, d := range dirs {
		fans, err := os.ReadDir(d)
		if err != nil {
			return "", fmt.Errorf("probing fs-verity: %w", err)
		}
		for _, fan := range fans {
			if !fan.IsDir() {
				continue
			}
			ents, err := os.ReadDir(filepath.Join(d, fan.Name()))
			if err != nil {
				return "", fmt.Errorf("probing fs-verity: %w", err)
			}
			for _, e := range ents {
				if e.Type().IsRegular() {
					return filepath.Join(d, fan.Name(), e.Name()), nil
				}
			}
		}
	}
	return "", nil
}

// fsMount configures a filesystem with fsopen/fsconfig and attaches it at target.
func fsMount(fstype string, params []Param, attrs uint64, target string) error {
	fd, err := unix.Fsopen(fstype, unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("fsopen %s: %w", fstype, err)
	}
	defer unix.Close(fd)
	for _, p := range params {
		if p.Value == "" {
			err = unix.FsconfigSetFlag(fd, p.Key)
		} else {
			err = unix.FsconfigSetString(fd, p.Key, p.Value)
		}
		if err != nil && p.Key == "verity" && p.Value == string(VerityOn) {
			// Like libcomposefs: verity=on is best effort, only require must be honoured.
			continue
		}
		if err != nil {
			return fmt.Errorf("fsconfig %s %s: %w", fstype, p.Key, err)
		}
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return fmt.Errorf("creating %s: %w", fstype, err)
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, int(attrs))
	if err != nil {
		return fmt.Errorf("fsmount %s: %w", fstype, err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount %s to %s: %w", fstype, target, err)
	}
	return nil
}

// Test hooks that force the fallbacks this kernel would not take by itself.
var (
	forceLoop          bool
	forceLegacyOverlay bool
)

// erofsAttrs: the private EROFS mount is never used for anything but the overlay's lower layer.
const erofsAttrs = unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV

// mountStacked mounts the base image beside the image's EROFS mount at imageMount, then the
// overlay of both over the objects (new mount API only).
func mountStacked(p *Plan, imageMount string) (err error) {
	baseMount := p.BaseDir
	if baseMount == "" {
		var done func() error
		if baseMount, done, err = stageEROFS(p.Base, p.BaseEROFS); err != nil {
			return err
		}
		defer func() {
			if derr := done(); derr != nil && err == nil {
				err = derr
			}
		}()
	}
	// xino: files come from two EROFS file systems whose inode numbers overlap; an overlay
	// stacked on this one (a container's) shows one st_dev for all of them, so without the
	// layer in the inode number's high bits two files could share (st_dev, st_ino), which
	// ld.so, find -samefile and test -ef take for one file.
	attrs, _ := p.attrs()
	if err := fsMount("overlay", append(p.Overlay(imageMount, baseMount), Param{"xino", "on"}), attrs, p.Target); err != nil {
		return wrapMountErr(fmt.Sprintf("mounting composefs overlay of %s above %s at %s", p.Image, p.Base, p.Target), err)
	}
	return nil
}

func mountEROFS(image string, params []Param, target string) error {
	var err error = unix.ENOTBLK
	if !forceLoop {
		err = fsMount("erofs", params, erofsAttrs, target)
	}
	if errors.Is(err, unix.ENOSYS) {
		return legacyEROFS(params, image, target)
	}
	if !errors.Is(err, unix.ENOTBLK) {
		return err
	}
	// The kernel cannot mount EROFS from a file (before 6.12): go through a loop device.
	loop, lerr := attachLoop(image)
	if lerr != nil {
		return fmt.Errorf("%v; loop device: %w", err, lerr)
	}
	defer loop.Close() // autoclear: the device goes away with the mount
	params = append([]Param{{"source", loop.Name()}}, params[1:]...)
	return fsMount("erofs", params, erofsAttrs, target)
}

func legacyEROFS(params []Param, source, target string) error {
	data := ""
	for _, prm := range params {
		if prm.Key == "noacl" {
			data = "noacl"
		}
	}
	return unix.Mount(source, target, "erofs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, data)
}

// attachLoop attaches image read-only to a free loop device with direct I/O and autoclear.
func attachLoop(image string) (*os.File, error) {
	img, err := os.Open(image)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer ctl.Close()
	for tries := 0; tries < 8; tries++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
		}
		dev, err := os.OpenFile(fmt.Sprintf("/dev/loop%d", n), os.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		cfg := unix.LoopConfig{Fd: uint32(img.Fd()), Size: 4096}
		cfg.Info.Flags = unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR | unix.LO_FLAGS_DIRECT_IO
		copy(cfg.Info.File_name[:], image)
		if err := unix.IoctlLoopConfigure(int(dev.Fd()), &cfg); err != nil {
			dev.Close()
			if errors.Is(err, unix.EBUSY) {
				continue // another process took it first
			}
			return nil, fmt.Errorf("LOOP_CONFIGURE: %w", err)
		}
		return dev, nil
	}
	return nil, fmt.Errorf("no free loop device: %w", unix.EBUSY)
}

func mountOverlay(p *Plan, imageMount string) error {
	attrs, flags := p.attrs()
	var err error = unix.EINVAL
	if !forceLegacyOverlay {
		err = fsMount("overlay", p.Overlay(imageMount), attrs, p.Target)
	}
	if err == nil || !(errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS)) {
		return err
	}
	// Older kernels: no lowerdir+/datadir+ (6.7) or no new mount API.
	lerr := unix.Mount(overlaySource, p.Target, "overlay", flags, p.LegacyOverlay(imageMount, true))
	if errors.Is(lerr, unix.EINVAL) {
		lerr = unix.Mount(overlaySource, p.Target, "overlay", flags, p.LegacyOverlay(imageMount, false))
	}
	if lerr != nil {
		return fmt.Errorf("%v; legacy mount: %w", err, lerr)
	}
	return nil
}
