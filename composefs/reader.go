package composefs

import (
	"encoding/binary"
	"fmt"
	"os"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/verity"
)

// maxDepth bounds directory nesting when reading untrusted images.
const maxDepth = 4096

// MaxImageSize bounds the images ReadImageFile loads into memory.
const MaxImageSize = 1 << 30

// ImageInfo is what the composefs header and EROFS superblock say about an image.
type ImageInfo struct {
	Version int  // composefs format version
	HasACL  bool // some inode carries a POSIX ACL; mount without noacl
}

// ReadImageInfo parses the headers of an image.
func ReadImageInfo(img []byte) (ImageInfo, error) {
	if len(img) < blkSize {
		return ImageInfo{}, fmt.Errorf("composefs image of %d bytes, at least %d expected: %w", len(img), blkSize, errdefs.ErrInvalid)
	}
	le := binary.LittleEndian
	if m := le.Uint32(img[0:]); m != cfsMagic {
		return ImageInfo{}, fmt.Errorf("composefs magic %#x, want %#x: %w", m, uint32(cfsMagic), errdefs.ErrInvalid)
	}
	if v := le.Uint32(img[4:]); v != cfsVersion {
		return ImageInfo{}, fmt.Errorf("composefs header version %d: %w", v, errdefs.ErrUnsupported)
	}
	if m := le.Uint32(img[superOffset:]); m != erofsMagic {
		return ImageInfo{}, fmt.Errorf("EROFS magic %#x, want %#x: %w", m, uint32(erofsMagic), errdefs.ErrInvalid)
	}
	return ImageInfo{Version: int(le.Uint32(img[12:])), HasACL: le.Uint32(img[8:])&cfsFlagACL != 0}, nil
}

// ReadImageFile reads the composefs image at path into a tree.
func ReadImageFile(path string) (*Node, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading composefs image: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading composefs image: %w", err)
	}
	if st.Size() > MaxImageSize {
		return nil, fmt.Errorf("composefs image %s of %d bytes, at most %d allowed: %w", path, st.Size(), MaxImageSize, errdefs.ErrInvalid)
	}
	img := make([]byte, st.Size())
	if _, err := f.ReadAt(img, 0); err != nil {
		return nil, fmt.Errorf("reading composefs image %s: %w", path, err)
	}
	n, err := ReadImage(img)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

// ReadImage turns a composefs image back into the tree it was written from: overlay xattrs
// become payloads, digests and whiteouts again, and the root's whiteout stubs are dropped. Like
// libcomposefs it walks depth first, so the first name of a hard-linked inode carries it.
// Hostile images give an error wrapping errdefs.ErrInvalid, never a panic. Xattr values in the
// tree share memory with img.
func ReadImage(img []byte) (*Node, error) {
	if _, err := ReadImageInfo(img); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	sb := img[superOffset:]
	if sb[12] != blkBits {
		return nil, fmt.Errorf("EROFS block size 2^%d, only 2^%d supported: %w", sb[12], blkBits, errdefs.ErrUnsupported)
	}
	r := &reader{
		img:       img,
		meta:      uint64(le.Uint32(sb[40:])) * blkSize,
		xattrs:    uint64(le.Uint32(sb[44:])) * blkSize,
		buildTime: Timespec{Sec: int64(le.Uint64(sb[24:])), Nsec: le.Uint32(sb[32:])},
		seen:      map[uint64]*Node{},
		dirBudget: uint64(len(img)),
	}
	if r.meta >= uint64(len(img)) || r.xattrs >= uint64(len(img)) {
		return nil, fmt.Errorf("EROFS metadata outside the image: %w", errdefs.ErrInvalid)
	}
	if le.Uint32(sb[80:])&incompatXattrPrefixes != 0 {
		if err := r.readPrefixes(sb); err != nil {
			return nil, err
		}
	}
	root, err := r.node(uint64(le.Uint16(sb[14:])), 0)
	if err != nil {
		return nil, err
	}
	if root == nil || !root.IsDir() {
		return nil, fmt.Errorf("EROFS root is not a directory: %w", errdefs.ErrInvalid)
	}
	return root, nil
}

type reader struct {
	// dirBudget bounds the directory bytes parsed: in a sane image every directory block
	// belongs to one directory, so the total never exceeds the image size.
	dirBudget uint64
	// xattrs of the inode being read: name index and space account.
	xindex   map[string]int
	xaccount int

	img       []byte
	prefixes  []string // long xattr name prefixes
	meta      uint64
	xattrs    uint64
	buildTime Timespec
	seen      map[uint64]*Node
}

func bad(format string, args ...any) error {
	return fmt.Errorf("corrupt composefs image: "+format+": %w", append(args, errdefs.ErrInvalid)...)
}

// span returns img[off:off+n] or an error when it is outside the image.
func (r *reader) span(off, n uint64) ([]byte, error) {
	if off > uint64(len(r.img)) || n > uint64(len(r.img))-off {
		return nil, bad("%d bytes at offset %d outside the image of %d", n, off, len(r.img))
	}
	return r.img[off : off+n], nil
}

// node reads the inode nid; it returns nil, nil for a whiteout, which readers skip.
func (r *reader) node(nid uint64, depth int) (*Node, error) {
	if depth > maxDepth {
		return nil, bad("directories nested deeper than %d", maxDepth)
	}
	if first, ok := r.seen[nid]; ok {
		if first.IsDir() {
			return nil, bad("directory inode %d has more than one name", nid)
		}
		return &Node{HardlinkTo: first}, nil
	}
	if nid > (uint64(len(r.img))-r.meta)/slotSize {
		return nil, bad("inode %d outside the image", nid)
	}
	off := r.meta + nid*slotSize
	head, err := r.span(off, compactSize)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	format := le.Uint16(head[0:])
	layout := format >> 1 & 7
	n := &Node{}
	var isize uint64
	var size uint64
	var iu uint32
	icount := le.Uint16(head[2:])
	if format&1 == 0 {
		isize = compactSize
		n.Mode = uint32(le.Uint16(head[4:]))
		n.Nlink = uint32(le.Uint16(head[6:]))
		size = uint64(le.Uint32(head[8:]))
		iu = le.Uint32(head[16:])
		n.UID = uint32(le.Uint16(head[24:]))
		n.GID = uint32(le.Uint16(head[26:]))
		// Linux 6.15 made this field the seconds after the epoch; older writers leave it 0.
		n.Mtime = Timespec{Sec: r.buildTime.Sec + int64(le.Uint32(head[12:])), Nsec: r.buildTime.Nsec}
	} else {
		isize = extendedSize
		ext, err := r.span(off, extendedSize)
		if err != nil {
			return nil, err
		}
		n.Mode = uint32(le.Uint16(ext[4:]))
		size = le.Uint64(ext[8:])
		iu = le.Uint32(ext[16:])
		n.UID = le.Uint32(ext[24:])
		n.GID = le.Uint32(ext[28:])
		n.Mtime = Timespec{Sec: int64(le.Uint64(ext[32:])), Nsec: le.Uint32(ext[40:])}
		n.Nlink = le.Uint32(ext[44:])
	}
	n.Size = size
	typ := n.Mode & ModeTypeMask
	if typ == ModeChar || typ == ModeBlock {
		n.Rdev = iu
	}
	if typ == ModeChar && n.Rdev == 0 {
		if n.Nlink > 1 {
			return nil, bad("whiteout inode %d with %d links", nid, n.Nlink)
		}
		return nil, nil
	}
	if !validMode(n.Mode) {
		return nil, bad("inode %d has mode %o", nid, n.Mode)
	}
	r.seen[nid] = n

	var xsize uint64
	if icount > 0 {
		xsize = xattrHdrSize + uint64(icount-1)*4
	}
	tailpacked := layout == layoutFlatInline
	var tailSize uint64
	if tailpacked {
		tailSize = size % blkSize
	}
	tailOff := off + isize + xsize
	nBlocks := (size + blkSize - 1) / blkSize
	lastOOB := nBlocks
	if tailpacked && nBlocks > 0 {
		lastOOB = nBlocks - 1
	}
	oob := uint64(iu) * blkSize

	switch {
	case typ == ModeDir:
		if layout != layoutFlatPlain && layout != layoutFlatInline {
			return nil, bad("directory inode %d has data layout %d", nid, layout)
		}
		for blk := uint64(0); blk < lastOOB; blk++ {
			bs := uint64(blkSize)
			if !tailpacked && blk+1 == lastOOB && size%blkSize != 0 {
				bs = size % blkSize
			}
			b, err := r.span(oob+blk*blkSize, bs)
			if err != nil {
				return nil, err
			}
			if err := r.readDirBlock(n, b, depth); err != nil {
				return nil, err
			}
		}
		if tailpacked {
			b, err := r.span(tailOff, tailSize)
			if err != nil {
				return nil, err
			}
			if err := r.readDirBlock(n, b, depth); err != nil {
				return nil, err
			}
		}
	case typ == ModeSymlink:
		if size == 0 || size > MaxPayloadLen {
			return nil, bad("symlink inode %d of %d bytes", nid, size)
		}
		at := oob
		if tailpacked {
			at = tailOff
		}
		b, err := r.span(at, size)
		if err != nil {
			return nil, err
		}
		for _, c := range b {
			if c == 0 {
				return nil, bad("symlink inode %d target contains NUL", nid)
			}
		}
		n.Payload = string(b)
	case typ == ModeRegular && size != 0 && (layout == layoutFlatPlain || layout == layoutFlatInline):
		if size > MaxInlineContent {
			return nil, bad("inline file inode %d of %d bytes", nid, size)
		}
		content := make([]byte, 0, size)
		oobSize := size
		if tailpacked {
			oobSize = lastOOB * blkSize
		}
		b, err := r.span(oob, oobSize)
		if err != nil {
			return nil, err
		}
		content = append(content, b...)
		if tailpacked {
			if b, err = r.span(tailOff, tailSize); err != nil {
				return nil, err
			}
			content = append(content, b...)
		}
		if uint64(len(content)) != size {
			return nil, bad("inline file inode %d has %d of %d bytes", nid, len(content), size)
		}
		n.Content = content
	case typ == ModeRegular && size != 0:
		if layout != layoutChunkBased {
			return nil, bad("file inode %d has data layout %d", nid, layout)
		}
	}
	if icount > 0 {
		r.xindex, r.xaccount = map[string]int{}, 0
		if err := r.readXattrs(n, off+isize, xsize); err != nil {
			return nil, fmt.Errorf("inode %d: %w", nid, err)
		}
	}
	return n, nil
}

func (r *reader) readDirBlock(dir *Node, b []byte, depth int) error {
	if uint64(len(b)) > r.dirBudget {
		return bad("directories overlap")
	}
	r.dirBudget -= uint64(len(b))
	if len(b) < direntSize {
		if len(b) == 0 {
			return nil
		}
		return bad("directory block of %d bytes", len(b))
	}
	le := binary.LittleEndian
	first := uint64(le.Uint16(b[8:]))
	if first%direntSize != 0 || first == 0 || first > uint64(len(b)) {
		return bad("directory block with name offset %d", first)
	}
	count := first / direntSize
	for i := uint64(0); i < count; i++ {
		e := b[i*direntSize:]
		nid := le.Uint64(e[0:])
		start := uint64(le.Uint16(e[8:]))
		end := uint64(len(b))
		if i+1 < count {
			end = uint64(le.Uint16(b[(i+1)*direntSize+8:]))
		}
		if start < first || end < start || end > uint64(len(b)) {
			return bad("directory entry name at %d..%d in a block of %d", start, end, len(b))
		}
		name := b[start:end]
		if i+1 == count {
			// The last name runs to the first NUL or the end of the block.
			for j, c := range name {
				if c == 0 {
					name = name[:j]
					break
				}
			}
		}
		if string(name) == "." || string(name) == ".." {
			continue
		}
		if err := ValidName(string(name)); err != nil {
			return bad("directory entry: %v", err)
		}
		child, err := r.node(nid, depth+1)
		if err != nil {
			return err
		}
		if child == nil {
			continue // a whiteout stub
		}
		if err := dir.AddChild(string(name), child); err != nil {
			return bad("directory entry %q: %v", name, err)
		}
	}
	return nil
}

func (r *reader) readXattrs(n *Node, off, size uint64) error {
	body, err := r.span(off, size)
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	nShared := uint64(body[4])
	inline := xattrHdrSize + nShared*4
	if inline > size {
		return bad("%d shared xattrs in %d bytes", nShared, size)
	}
	for p := inline; p+xattrEntrySize < size; {
		nameLen, idx := uint64(body[p]), body[p+1]
		valLen := uint64(le.Uint16(body[p+2:]))
		if p+xattrEntrySize+nameLen+valLen > size {
			return bad("xattr entry overruns the inode")
		}
		name := body[p+xattrEntrySize : p+xattrEntrySize+nameLen]
		value := body[p+xattrEntrySize+nameLen : p+xattrEntrySize+nameLen+valLen]
		if err := r.addXattr(n, idx, name, value); err != nil {
			return err
		}
		p += roundUp(xattrEntrySize+nameLen+valLen, 4)
	}
	for i := uint64(0); i < nShared; i++ {
		id := uint64(le.Uint32(body[xattrHdrSize+4*i:]))
		eoff := r.xattrs + id*4
		h, err := r.span(eoff, xattrEntrySize)
		if err != nil {
			return err
		}
		nameLen, idx, valLen := uint64(h[0]), h[1], uint64(le.Uint16(h[2:]))
		e, err := r.span(eoff+xattrEntrySize, nameLen+valLen)
		if err != nil {
			return err
		}
		if err := r.addXattr(n, idx, e[:nameLen], e[nameLen:]); err != nil {
			return err
		}
	}
	return nil
}

// readPrefixes reads the long xattr name prefix table (kept in the metadata, not in a packed
// inode, which composefs images never have).
func (r *reader) readPrefixes(sb []byte) error {
	le := binary.LittleEndian
	if le.Uint64(sb[96:]) != 0 {
		return fmt.Errorf("EROFS long xattr prefixes in a packed inode: %w", errdefs.ErrUnsupported)
	}
	off := uint64(le.Uint32(sb[92:])) * 4
	for i := 0; i < int(sb[91]); i++ {
		h, err := r.span(off, 2)
		if err != nil {
			return err
		}
		n := uint64(le.Uint16(h))
		e, err := r.span(off+2, n)
		if err != nil {
			return err
		}
		if n == 0 || e[0] == 0 || int(e[0]) >= len(xattrPrefixByIndex) {
			return bad("long xattr prefix %d: %d bytes, base index %v", i, n, e[:min(n, 1)])
		}
		r.prefixes = append(r.prefixes, xattrPrefixByIndex[e[0]]+string(e[1:]))
		off = roundUp(off+2+n, 4)
	}
	return nil
}

// addXattr undoes what the writer added: overlay xattrs become payload, digest and whiteouts,
// escaped ones get their original names back.
func (r *reader) addXattr(n *Node, idx uint8, suffix, value []byte) error {
	var name string
	switch {
	case idx&xattrLongPrefix != 0 && int(idx&^xattrLongPrefix) < len(r.prefixes):
		name = r.prefixes[idx&^xattrLongPrefix] + string(suffix)
	case idx < xattrLongPrefix && int(idx) < len(xattrPrefixByIndex):
		name = xattrPrefixByIndex[idx] + string(suffix)
	default:
		return bad("xattr name index %d", idx)
	}
	typ := n.Mode & ModeTypeMask
	switch {
	case name == xRedirect:
		if typ == ModeRegular {
			v := value
			if len(v) > 1 && v[0] == '/' {
				v = v[1:]
			}
			n.Payload = string(v)
		}
		return nil
	case name == xMetacopy:
		if typ == ModeRegular && len(value) == 4+verity.Size {
			var d verity.Digest
			copy(d[:], value[4:])
			n.Digest = &d
		}
		return nil
	case name == xEscWhiteout && typ == ModeRegular:
		n.Mode = ModeChar | n.Mode&^ModeTypeMask
		n.Rdev = 0
		n.Size = 0
		return nil
	case name == xEscWhiteouts || name == xUserWhiteout || name == xUserWhiteouts:
		return nil
	case len(name) >= len(xEscapePrefix) && name[:len(xEscapePrefix)] == xEscapePrefix:
		name = xOverlayPrefix + name[len(xEscapePrefix):]
	case len(name) >= len(xOverlayPrefix) && name[:len(xOverlayPrefix)] == xOverlayPrefix:
		return nil
	}
	if err := CheckXattr(name, value); err != nil {
		return bad("%v", err)
	}
	// Values alias the image (a shared value may be referenced by every inode); the full
	// slice expression keeps appends from writing into it.
	v := value[:len(value):len(value)]
	if i, ok := r.xindex[name]; ok {
		r.xaccount -= 7 + len(name) + len(n.Xattrs[i].Value)
		n.Xattrs[i].Value = v
	} else {
		r.xindex[name] = len(n.Xattrs)
		n.Xattrs = append(n.Xattrs, Xattr{Name: name, Value: v})
		if len(n.Xattrs) == 1 {
			r.xaccount += xattrHdrSize
		}
	}
	r.xaccount += 7 + len(name) + len(v)
	if r.xaccount > 65535 {
		return bad("xattrs of inode exceed 65535 bytes")
	}
	return nil
}
