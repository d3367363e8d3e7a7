package composefs

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"sort"
	"strings"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/verity"
)

// options of WriteImage; defaults are set in WriteImage only.
type options struct {
	minVersion, maxVersion int
	dense                  bool
	stacked                bool
}

// Option changes how WriteImage writes an image.
type Option func(*options)

// WithMinVersion sets the lowest format version to write (default 0).
func WithMinVersion(v int) Option { return func(o *options) { o.minVersion = v } }

// WithMaxVersion sets the highest format version to write (default 1). Version 1 is only
// chosen when the tree has whiteouts.
func WithMaxVersion(v int) Option { return func(o *options) { o.maxVersion = v } }

// WithDenseInodes writes smaller inodes than mkcomposefs, for images only this machine's kernel
// mounts (Linux 6.15 or later); the bytes then differ from mkcomposefs's:
//   - every compact inode carries its mtime, as seconds after the image's epoch (the field Linux
//     6.15 made i_mtime; older kernels show the epoch instead), so an inode takes 32 bytes instead
//     of 64 whenever its mtime has the epoch's nanoseconds and lies within 2^32 s after it;
//   - trusted.overlay.redirect, which every external file carries, is named by a long xattr name
//     prefix (Linux 6.4 or later) instead of spelling out "overlay.redirect" in each inode.
//
// An external file's inode and xattrs then take 128 bytes instead of 192.
func WithDenseInodes() Option { return func(o *options) { o.dense = true } }

// WithStacking writes an image to be mounted above another composefs image in one overlay
// (mount.WithBase), such as a DeltaTree's: its root is not opaque and has no 00..ff stubs, so
// the overlay merges the image below into it, and nodes with HidesLower become overlayfs's own
// whiteouts, hiding the entry below, instead of escaped ones. Such an image needs an overlay
// with data-only object layers (Linux 6.5 or later).
func WithStacking() Option { return func(o *options) { o.stacked = true } }

// wnode is one inode as the writer lays it out; the caller's tree is never modified.
type wnode struct {
	mode, uid, gid, nlink, rdev uint32
	mtime                       Timespec
	size                        uint64
	payload                     string
	content                     []byte
	digest                      *verity.Digest
	xattrs                      []wxattr
	xacct                       uint64 // the writer's xattr space account, see setXattr
	parent                      *wnode
	ents                        []went // directory entries including "." and "..", sorted

	hidesLower bool // Node.HidesLower: written as overlayfs's own whiteout

	ino     uint32
	compact bool
	ipad    uint64
	xsize   uint64
	isize   uint64
	nid     uint64
	nBlocks uint64
	tail    uint64
}

type wxattr struct {
	name   string
	value  []byte
	shared *sharedXattr
}

type went struct {
	name string
	node *wnode
	link bool // hard link, ".", or "..": not a separate inode
}

type sharedXattr struct {
	name   string
	value  []byte
	count  int
	shared bool
	offset uint64
}

func (n *wnode) typ() uint32 { return n.mode & ModeTypeMask }

// setXattr sets one of the xattrs the writer adds (overlay metacopy, redirect, whiteout marks) the
// way libcomposefs does. mkcomposefs writes a clone of the tree, and lcfs_node_clone copies the
// xattrs but not their space account: the account of the UINT16_MAX/2 limit starts at zero and
// counts only what the writer adds, so an inode whose own xattrs fill that limit still gets them.
// The account is a size_t there; replacing an xattr subtracts its size and may wrap, as here.
func (n *wnode) setXattr(name string, value []byte) error {
	for i, x := range n.xattrs {
		if x.name == name {
			n.xacct -= uint64(7 + len(name) + len(x.value))
			n.xattrs = append(n.xattrs[:i], n.xattrs[i+1:]...)
			if len(n.xattrs) == 0 {
				n.xacct = 0
			}
			break
		}
	}
	entry := uint64(7 + len(name) + len(value))
	if len(n.xattrs) == 0 {
		entry += xattrHdrSize
	}
	if n.xacct+entry > maxXattrsSize {
		return fmt.Errorf("xattrs exceed %d bytes adding %s: %w", maxXattrsSize, name, errdefs.ErrInvalid)
	}
	n.xattrs = append(n.xattrs, wxattr{name: name, value: value})
	n.xacct += entry
	return nil
}

func (n *wnode) lookup(name string) bool {
	i := sort.Search(len(n.ents), func(i int) bool { return n.ents[i].name >= name })
	return i < len(n.ents) && n.ents[i].name == name
}

func (n *wnode) insert(e went) {
	i := sort.Search(len(n.ents), func(i int) bool { return n.ents[i].name >= e.name })
	n.ents = append(n.ents, went{})
	copy(n.ents[i+1:], n.ents[i:])
	n.ents[i] = e
}

// imageWriter holds the state of one image being written.
type imageWriter struct {
	version    int
	dense      bool     // WithDenseInodes
	stacked    bool     // WithStacking
	prefixes   []string // long xattr name prefixes, whole names here (dense images only)
	prefixSize uint64   // their table's bytes after the super block
	nodes      []*wnode // breadth-first, the inode order
	minMtime   Timespec
	hasACL     bool
	shared     []*sharedXattr
	sharedSize uint64
	inodesEnd  uint64
	dataBlocks uint64
	currentEnd uint64
}

// WriteImage writes the composefs EROFS image of the tree at root to w. The same tree and
// options always give the same bytes, equal to what mkcomposefs writes for the same tree (but with
// WithDenseInodes).
func WriteImage(w io.Writer, root *Node, opts ...Option) error {
	o := options{minVersion: 0, maxVersion: MaxVersion}
	for _, f := range opts {
		f(&o)
	}
	if o.minVersion < 0 || o.minVersion > MaxVersion || o.maxVersion < 0 || o.maxVersion > MaxVersion {
		return fmt.Errorf("composefs format version %d..%d, supported 0..%d: %w", o.minVersion, o.maxVersion, MaxVersion, errdefs.ErrUnsupported)
	}
	if o.maxVersion < o.minVersion {
		o.maxVersion = o.minVersion
	}
	if root == nil || !root.IsDir() {
		return fmt.Errorf("composefs root must be a directory: %w", errdefs.ErrInvalid)
	}
	iw := &imageWriter{version: o.minVersion, dense: o.dense, stacked: o.stacked}
	if iw.dense {
		iw.prefixes = denseXattrPrefixes
		for _, p := range iw.prefixes {
			_, infix := xattrIndex(p)
			iw.prefixSize += roundUp(2+1+uint64(len(infix)), 4)
		}
	}
	// Version 1 changed how whiteouts are stored; use it only when there is one.
	if iw.version < 1 && o.maxVersion >= 1 && hasWhiteout(root) {
		iw.version = 1
	}
	wroot, err := iw.convert(root, o.stacked)
	if err != nil {
		return err
	}
	if err := iw.rewrite(wroot, wroot); err != nil {
		return err
	}
	if !o.stacked {
		if err := wroot.setXattr(xOpaque, []byte("y")); err != nil {
			return err
		}
		addWhiteoutStubs(wroot)
	}
	iw.computeTree(wroot)
	iw.computeSharedXattrs()
	iw.computeInodes()

	bw := &countWriter{w: bufio.NewWriterSize(w, 1<<20)}
	iw.write(bw)
	if bw.err != nil {
		return fmt.Errorf("writing composefs image: %w", bw.err)
	}
	if err := bw.w.(*bufio.Writer).Flush(); err != nil {
		return fmt.Errorf("writing composefs image: %w", err)
	}
	return nil
}

// BuildImage returns the image of the tree at root.
func BuildImage(root *Node, opts ...Option) ([]byte, error) {
	var b bytes.Buffer
	if err := WriteImage(&b, root, opts...); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func hasWhiteout(n *Node) bool {
	for _, c := range n.children {
		if c.HardlinkTo != nil {
			continue
		}
		if c.Mode&ModeTypeMask == ModeChar && c.Rdev == 0 && !c.HidesLower {
			return true
		}
		if c.IsDir() && hasWhiteout(c) {
			return true
		}
	}
	return false
}

// convert copies the caller's tree into writer nodes, validating it on the way.
func (iw *imageWriter) convert(root *Node, stacked bool) (*wnode, error) {
	m := map[*Node]*wnode{}
	var mk func(n *Node, parent *wnode) (*wnode, error)
	mk = func(n *Node, parent *wnode) (*wnode, error) {
		wn, err := newWnode(n)
		if err == nil && n.HidesLower && (!stacked || wn.typ() != ModeChar || wn.rdev != 0) {
			err = fmt.Errorf("HidesLower is for 0/0 character devices of stacked images: %w", errdefs.ErrInvalid)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n.Path(), err)
		}
		wn.hidesLower = n.HidesLower
		wn.parent = parent
		m[n] = wn
		for _, c := range n.children {
			if c.HardlinkTo != nil {
				continue
			}
			if _, err := mk(c, wn); err != nil {
				return nil, err
			}
		}
		return wn, nil
	}
	wroot, err := mk(root, nil)
	if err != nil {
		return nil, err
	}
	wroot.parent = wroot
	// Now every inode exists; hard links can point anywhere in the tree.
	var link func(n *Node) error
	link = func(n *Node) error {
		wn := m[n]
		wn.ents = make([]went, 0, len(n.children)+2)
		for _, c := range n.children {
			if c.HardlinkTo == nil {
				wn.ents = append(wn.ents, went{name: c.name, node: m[c]})
				continue
			}
			t := c.Target()
			if t == nil {
				return fmt.Errorf("%s: hard link cycle: %w", c.Path(), errdefs.ErrInvalid)
			}
			wt := m[t]
			if wt == nil {
				return fmt.Errorf("%s: hard link to a node outside the tree: %w", c.Path(), errdefs.ErrInvalid)
			}
			if wt.typ() == ModeDir {
				return fmt.Errorf("%s: hard link to a directory: %w", c.Path(), errdefs.ErrInvalid)
			}
			wn.ents = append(wn.ents, went{name: c.name, node: wt, link: true})
		}
		for _, c := range n.children {
			if c.IsDir() {
				if err := link(c); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := link(root); err != nil {
		return nil, err
	}
	return wroot, nil
}

func newWnode(n *Node) (*wnode, error) {
	if !validMode(n.Mode) {
		return nil, fmt.Errorf("invalid mode %o: %w", n.Mode, errdefs.ErrInvalid)
	}
	if len(n.Payload) > MaxPayloadLen {
		return nil, fmt.Errorf("payload of %d bytes, at most %d allowed: %w", len(n.Payload), MaxPayloadLen, errdefs.ErrInvalid)
	}
	wn := &wnode{mode: n.Mode, uid: n.UID, gid: n.GID, nlink: n.Nlink, rdev: n.Rdev, mtime: n.Mtime,
		size: n.Size, payload: n.Payload, digest: n.Digest}
	switch n.Mode & ModeTypeMask {
	case ModeRegular:
		if len(n.Content) > 0 {
			if len(n.Content) > MaxInlineContent {
				return nil, fmt.Errorf("inline content of %d bytes, at most %d allowed: %w", len(n.Content), MaxInlineContent, errdefs.ErrInvalid)
			}
			if uint64(len(n.Content)) != n.Size {
				return nil, fmt.Errorf("inline content of %d bytes for size %d: %w", len(n.Content), n.Size, errdefs.ErrInvalid)
			}
			wn.content = n.Content
		} else if n.Size > 0 {
			if _, count := chunking(n.Size); count > maxChunks {
				return nil, fmt.Errorf("file size %d too big: %w", n.Size, errdefs.ErrInvalid)
			}
		}
	case ModeSymlink:
		if n.Payload == "" {
			return nil, fmt.Errorf("symlink without target: %w", errdefs.ErrInvalid)
		}
		wn.size = uint64(len(n.Payload))
	}
	seen := make(map[string]bool, len(n.Xattrs))
	size := 0 // the tree's own xattrs, as lcfs_node_set_xattr accounts them
	for _, x := range n.Xattrs {
		if err := CheckXattr(x.Name, x.Value); err != nil {
			return nil, err
		}
		if seen[x.Name] {
			return nil, fmt.Errorf("duplicate xattr %s: %w", x.Name, errdefs.ErrInvalid)
		}
		seen[x.Name] = true
		wn.xattrs = append(wn.xattrs, wxattr{name: x.Name, value: x.Value})
		size += 7 + len(x.Name) + len(x.Value)
	}
	if len(wn.xattrs) > 0 {
		size += xattrHdrSize
	}
	if size > 65535 {
		return nil, fmt.Errorf("xattrs of %d bytes, at most 65535 allowed: %w", size, errdefs.ErrInvalid)
	}
	return wn, nil
}

// rewrite adds the overlayfs xattrs to every inode, depth first like libcomposefs.
func (iw *imageWriter) rewrite(n, parent *wnode) error {
	// Escape the caller's own overlay xattrs so overlayfs shows them instead of acting on them.
	for i := range n.xattrs {
		if len(n.xattrs[i].name) >= len(xOverlayPrefix) && n.xattrs[i].name[:len(xOverlayPrefix)] == xOverlayPrefix {
			n.xattrs[i].name = xEscapePrefix + n.xattrs[i].name[len(xOverlayPrefix):]
		}
	}
	switch {
	case n.typ() == ModeRegular && n.size > 0 && n.content == nil:
		if n.payload == "" && iw.stacked {
			// Without a redirect the overlay would read the image below's file at that path.
			return fmt.Errorf("file of %d bytes without content or object in a stacked image: %w", n.size, errdefs.ErrInvalid)
		}
		var meta []byte
		if n.digest != nil {
			meta = verity.MetacopyXattr(*n.digest)
		}
		if err := n.setXattr(xMetacopy, meta); err != nil {
			return err
		}
		if n.payload != "" {
			if err := n.setXattr(xRedirect, []byte("/"+n.payload)); err != nil {
				return err
			}
		}
	case n.typ() == ModeChar && n.rdev == 0 && !n.hidesLower:
		// A whiteout in the tree becomes a regular file that overlayfs shows as a whiteout.
		n.size = 0
		n.mode = ModeRegular | n.mode&^ModeTypeMask
		for _, x := range []struct {
			n      *wnode
			name   string
			value  string
			always bool
		}{
			{n, xEscWhiteout, "", true},
			{n, xUserWhiteout, "", true},
			{parent, xEscWhiteouts, "", true},
			{parent, xUserWhiteouts, "", true},
			{parent, xEscOpaque, "x", false},
			{parent, xUserOpaque, "x", false},
		} {
			if !x.always && iw.version < 1 {
				continue
			}
			if err := x.n.setXattr(x.name, []byte(x.value)); err != nil {
				return err
			}
		}
	}
	if n.typ() == ModeDir {
		n.insert(went{name: ".", node: n, link: true})
		n.insert(went{name: "..", node: parent, link: true})
		for _, e := range n.ents {
			if e.link {
				continue
			}
			if err := iw.rewrite(e.node, n); err != nil {
				return err
			}
		}
	}
	return nil
}

const stubHex = "0123456789abcdef"

// isStubName says whether a root entry called name takes the place of one of the whiteout stubs
// 00..ff (addWhiteoutStubs), which the image then lacks.
func isStubName(name string) bool {
	return len(name) == 2 && strings.IndexByte(stubHex, name[0]) >= 0 && strings.IndexByte(stubHex, name[1]) >= 0
}

// addWhiteoutStubs adds whiteouts 00..ff to the root; with the legacy lowerdir=IMG:OBJECTS
// mount they hide the object directories of the data layer.
func addWhiteoutStubs(root *wnode) {
	selinux, hasSelinux := []byte(nil), false
	for _, x := range root.xattrs {
		if x.name == xSelinux {
			selinux, hasSelinux = x.value, true
		}
	}
	for i := 0; i < 256; i++ {
		name := string([]byte{stubHex[i>>4], stubHex[i&15]})
		if root.lookup(name) {
			continue
		}
		stub := &wnode{mode: ModeChar | 0o644, nlink: 1, uid: root.uid, gid: root.gid, mtime: root.mtime, parent: root}
		if hasSelinux {
			stub.xattrs = []wxattr{{name: xSelinux, value: selinux}}
		}
		root.insert(went{name: name, node: stub})
	}
}

// computeTree numbers inodes breadth-first and gathers image-wide facts.
func (iw *imageWriter) computeTree(root *wnode) {
	iw.minMtime = root.mtime
	nsecs := map[uint32]int{} // dense images: inodes by mtime nanoseconds
	defer func() {
		if iw.dense {
			iw.minMtime = denseEpoch(iw.nodes, nsecs)
		}
	}()
	iw.nodes = append(iw.nodes[:0], root)
	for i := 0; i < len(iw.nodes); i++ {
		n := iw.nodes[i]
		if n.typ() == ModeDir {
			nlink := uint32(2)
			for _, e := range n.ents {
				if !e.link && e.node.typ() == ModeDir {
					nlink++
				}
			}
			n.nlink = nlink
		}
		slices.SortFunc(n.xattrs, func(a, b wxattr) int { return strings.Compare(a.name, b.name) })
		if n.mtime.Sec < iw.minMtime.Sec || n.mtime.Sec == iw.minMtime.Sec && n.mtime.Nsec < iw.minMtime.Nsec {
			iw.minMtime = n.mtime
		}
		if iw.dense {
			nsecs[n.mtime.Nsec]++
		}
		n.ino = uint32(i)
		for _, x := range n.xattrs {
			if x.name == xACLAccess || x.name == xACLDefault {
				iw.hasACL = true
			}
		}
		for _, e := range n.ents {
			if !e.link {
				iw.nodes = append(iw.nodes, e.node)
			}
		}
	}
}

// computeSharedXattrs puts every (name, value) pair used by more than one inode in the shared
// table, in libcomposefs' canonical order.
func (iw *imageWriter) computeSharedXattrs() {
	// Two-level index (name, then value) so lookups of existing pairs allocate nothing.
	byKey := map[string]map[string]*sharedXattr{}
	var all []*sharedXattr
	for _, n := range iw.nodes {
		for i := range n.xattrs {
			x := &n.xattrs[i]
			vals := byKey[x.name]
			if vals == nil {
				vals = map[string]*sharedXattr{}
				byKey[x.name] = vals
			}
			s := vals[string(x.value)]
			if s == nil {
				s = &sharedXattr{name: x.name, value: x.value}
				vals[string(x.value)] = s
				all = append(all, s)
			}
			s.count++
			x.shared = s
		}
	}
	// Name descending, then value length descending, then value bytes descending.
	sort.Slice(all, func(i, j int) bool {
		a, b := all[i], all[j]
		if a.name != b.name {
			return a.name > b.name
		}
		if len(a.value) != len(b.value) {
			return len(a.value) > len(b.value)
		}
		return bytes.Compare(a.value, b.value) > 0
	})
	var off uint64
	for _, s := range all {
		if s.count > 1 {
			s.shared = true
			s.offset = off
			iw.shared = append(iw.shared, s)
			off += iw.xattrEntryLen(s.name, s.value)
		}
	}
	iw.sharedSize = off
	// Past the per-inode limit of shared references, further shared pairs are stored inline.
	for _, n := range iw.nodes {
		nShared := 0
		for i := range n.xattrs {
			if n.xattrs[i].shared.shared && nShared < maxSharedRefs {
				nShared++
			} else {
				n.xattrs[i].shared = nil
			}
		}
	}
}

// denseEpoch is a dense image's epoch: among the inodes with the most common nanoseconds (most
// often 0, as tar headers give), the earliest mtime of the widest run that fits in 2^32 s, so
// the most inodes can be compact whatever outliers the tree has.
func denseEpoch(nodes []*wnode, nsecs map[uint32]int) Timespec {
	var nsec uint32
	for ns, c := range nsecs {
		if c > nsecs[nsec] || c == nsecs[nsec] && ns < nsec {
			nsec = ns
		}
	}
	var secs []int64
	for _, n := range nodes {
		if n.mtime.Nsec == nsec {
			secs = append(secs, n.mtime.Sec)
		}
	}
	if len(secs) == 0 {
		return Timespec{Sec: nodes[0].mtime.Sec, Nsec: nsec}
	}
	slices.Sort(secs)
	best, bestCount := secs[0], 0
	for i, j := 0, 0; i < len(secs); i++ {
		for j < len(secs) && uint64(secs[j])-uint64(secs[i]) <= 0xFFFFFFFF {
			j++
		}
		if j-i > bestCount {
			best, bestCount = secs[i], j-i
		}
	}
	return Timespec{Sec: best, Nsec: nsec}
}

// denseXattrPrefixes are the long xattr name prefixes of dense images: whole names, so the
// entries that use them carry no name bytes at all.
var denseXattrPrefixes = []string{xRedirect}

// entryName is how an xattr entry names name: a name index (a long prefix's, with the
// long-prefix bit, in dense images) and the rest of the name.
func (iw *imageWriter) entryName(name string) (uint8, string) {
	for i, p := range iw.prefixes {
		if strings.HasPrefix(name, p) {
			return xattrLongPrefix | uint8(i), name[len(p):]
		}
	}
	return xattrIndex(name)
}

func (iw *imageWriter) xattrEntryLen(name string, value []byte) uint64 {
	_, suffix := iw.entryName(name)
	return roundUp(uint64(xattrEntrySize+len(suffix)+len(value)), 4)
}

func (iw *imageWriter) xattrCounts(n *wnode) (nShared int, inlineSize uint64) {
	for _, x := range n.xattrs {
		if x.shared != nil {
			nShared++
		} else {
			inlineSize += iw.xattrEntryLen(x.name, x.value)
		}
	}
	return
}

func xattrBodySize(nShared int, inlineSize uint64) uint64 {
	if nShared == 0 && inlineSize == 0 {
		return 0
	}
	return roundUp(xattrHdrSize+uint64(nShared)*4+inlineSize, 4)
}

// chunking returns the chunk size bits and chunk count for an external file of size bytes:
// as few chunks as possible, at least one block each.
func chunking(size uint64) (chunkBits uint32, count uint64) {
	chunkBits = uint32(bits.Len64(size - 1))
	if chunkBits < blkBits {
		chunkBits = blkBits
	}
	if chunkBits-blkBits > chunkBlkBitsMask {
		chunkBits = chunkBlkBitsMask + blkBits
	}
	chunk := uint64(1) << chunkBits
	return chunkBits, (size + chunk - 1) / chunk
}

func (iw *imageWriter) dirSize(n *wnode) (nBlocks, tail uint64) {
	var block uint64
	for _, e := range n.ents {
		l := uint64(direntSize + len(e.name))
		if block+l > blkSize {
			nBlocks++
			block = 0
		}
		block += l
	}
	// Never inline more than half a block.
	if block > blkSize/2 {
		nBlocks++
		block = 0
	}
	return nBlocks, block
}

func (iw *imageWriter) inodeDataSize(n *wnode) {
	n.nBlocks, n.tail = 0, 0
	switch n.typ() {
	case ModeDir:
		n.nBlocks, n.tail = iw.dirSize(n)
	case ModeSymlink:
		n.tail = uint64(len(n.payload))
	case ModeRegular:
		if n.size == 0 {
			break
		}
		if n.content != nil {
			n.nBlocks, n.tail = n.size/blkSize, n.size%blkSize
			if n.tail > blkSize/2 {
				n.nBlocks++
				n.tail = 0
			}
		} else {
			_, count := chunking(n.size)
			n.tail = count * 4
		}
	}
}

func (iw *imageWriter) fitsCompact(n *wnode) bool {
	if !iw.mtimeFitsCompact(n.mtime) || n.nlink > 0xFFFF || n.uid > 0xFFFF || n.gid > 0xFFFF {
		return false
	}
	size := n.size
	if n.typ() == ModeDir {
		size = n.nBlocks*blkSize + n.tail
	}
	return size <= 0xFFFFFFFF
}

// mtimeFitsCompact says whether a compact inode can carry mtime: it must be the epoch itself, or
// in a dense image have its nanoseconds and lie within 2^32 s after it.
func (iw *imageWriter) mtimeFitsCompact(t Timespec) bool {
	if !iw.dense {
		return t == iw.minMtime
	}
	// The difference as unsigned: two int64 seconds may lie more than 2^63 apart.
	return t.Nsec == iw.minMtime.Nsec && t.Sec >= iw.minMtime.Sec && uint64(t.Sec)-uint64(iw.minMtime.Sec) <= 0xFFFFFFFF
}

// tailPadding returns the padding before an inode at pos so its inline tail does not cross a
// block boundary, moving the tail to a block of its own when padding cannot help.
func (iw *imageWriter) tailPadding(n *wnode, pos, inodeSize, xsize uint64) uint64 {
	nonTail := inodeSize + xsize
	total := nonTail + n.tail
	if n.typ() == ModeSymlink {
		// A symlink keeps inode and target in one block, or moves the target out.
		posBlock := pos / blkSize
		endBlock := (pos + total - 1) / blkSize
		if total/blkSize > 0 {
			n.nBlocks++
			n.tail = 0
		}
		if posBlock != endBlock {
			return roundUp(pos, blkSize) - pos
		}
		return 0
	}
	remainder := blkSize - (pos+nonTail)%blkSize
	if remainder < n.tail {
		pad := roundUp(remainder, slotSize)
		remainder = blkSize - (pos+nonTail+pad)%blkSize
		if n.tail <= remainder {
			return pad
		}
		n.nBlocks++
		n.tail = 0
		return roundUp(pos, blkSize) - pos
	}
	return 0
}

func (iw *imageWriter) computeInodes() {
	pos := uint64(superOffset+superSize) + iw.prefixSize
	metaStart := pos / blkSize * blkSize
	for _, n := range iw.nodes {
		iw.inodeDataSize(n)
		n.compact = iw.fitsCompact(n)
		inodeSize := uint64(extendedSize)
		if n.compact {
			inodeSize = compactSize
		}
		nShared, inlineSize := iw.xattrCounts(n)
		n.xsize = xattrBodySize(nShared, inlineSize)
		aligned := roundUp(pos, slotSize)
		n.ipad = aligned - pos
		pos = aligned
		pad := iw.tailPadding(n, pos, inodeSize, n.xsize)
		n.ipad += pad
		pos += pad
		n.isize = inodeSize + n.xsize + n.tail
		iw.dataBlocks += n.nBlocks
		n.nid = (pos - metaStart) / slotSize
		pos += n.isize
	}
	iw.inodesEnd = roundUp(pos, slotSize)
}

// countWriter tracks the offset and keeps the first error.
type countWriter struct {
	w   io.Writer
	n   uint64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	k, err := c.w.Write(p)
	c.n += uint64(k)
	if err == nil && k < len(p) {
		err = io.ErrShortWrite
	}
	c.err = err
	return k, err
}

var zeros [blkSize]byte

func (c *countWriter) pad(n uint64) {
	for n > 0 {
		k := min(n, uint64(len(zeros)))
		c.Write(zeros[:k])
		n -= k
	}
}

func (c *countWriter) align(a uint64) { c.pad(roundUp(c.n, a) - c.n) }

func (iw *imageWriter) write(w *countWriter) {
	le := binary.LittleEndian
	var hdr [cfsHeaderSize]byte
	le.PutUint32(hdr[0:], cfsMagic)
	le.PutUint32(hdr[4:], cfsVersion)
	if iw.hasACL {
		le.PutUint32(hdr[8:], cfsFlagACL)
	}
	le.PutUint32(hdr[12:], uint32(iw.version))
	w.Write(hdr[:])
	w.pad(superOffset - cfsHeaderSize)

	dataStart := roundUp(iw.inodesEnd+iw.sharedSize, blkSize)
	buf := make([]byte, 0, 2*blkSize)
	var sb [superSize]byte
	le.PutUint32(sb[0:], erofsMagic)
	le.PutUint32(sb[8:], compatMtime|compatFilter)
	sb[12] = blkBits
	le.PutUint16(sb[14:], uint16(iw.nodes[0].nid))
	le.PutUint64(sb[16:], uint64(len(iw.nodes)))
	le.PutUint64(sb[24:], uint64(iw.minMtime.Sec))
	le.PutUint32(sb[32:], iw.minMtime.Nsec)
	le.PutUint32(sb[36:], uint32(dataStart/blkSize+iw.dataBlocks))
	le.PutUint32(sb[40:], uint32((superOffset+superSize)/blkSize))
	le.PutUint32(sb[44:], uint32(iw.inodesEnd/blkSize))
	if len(iw.prefixes) > 0 {
		le.PutUint32(sb[80:], incompatXattrPrefixes)
		sb[91] = byte(len(iw.prefixes))
		le.PutUint32(sb[92:], (superOffset+superSize)/4)
	}
	w.Write(sb[:])
	for _, p := range iw.prefixes { // the long prefix table: length, base index, infix
		idx, infix := xattrIndex(p)
		e := binary.LittleEndian.AppendUint16(buf[:0], uint16(1+len(infix)))
		e = append(append(e, idx), infix...)
		w.Write(e)
		w.align(4)
	}

	iw.currentEnd = dataStart
	for _, n := range iw.nodes {
		buf = iw.appendInode(buf[:0], n)
		w.Write(buf)
	}
	w.align(slotSize)
	for _, s := range iw.shared {
		w.Write(iw.appendXattrEntry(buf[:0], s.name, s.value))
	}
	w.align(blkSize)
	for _, n := range iw.nodes {
		if n.typ() == ModeDir {
			buf = appendDirents(buf[:0], n, true, false)
			w.Write(buf)
		}
		iw.writeFileBlocks(w, n)
	}
}

func (iw *imageWriter) appendXattrEntry(b []byte, name string, value []byte) []byte {
	idx, suffix := iw.entryName(name)
	start := len(b)
	b = append(b, byte(len(suffix)), idx, byte(len(value)), byte(len(value)>>8))
	b = append(b, suffix...)
	b = append(b, value...)
	for (len(b)-start)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func (iw *imageWriter) xattrFilter(n *wnode) uint32 {
	var bitsSet uint32
	for _, x := range n.xattrs {
		idx, suffix := xattrIndex(x.name)
		bitsSet |= 1 << (xxh32([]byte(suffix), filterSeed+uint32(idx)) & (filterBits - 1))
	}
	return 0xFFFFFFFF &^ bitsSet
}

func (iw *imageWriter) appendInode(b []byte, n *wnode) []byte {
	le := binary.LittleEndian
	for i := uint64(0); i < n.ipad; i++ {
		b = append(b, 0)
	}
	nShared, _ := iw.xattrCounts(n)
	var icount uint16
	if n.xsize > 0 {
		icount = uint16((n.xsize-xattrHdrSize)/4 + 1)
	}
	layout := uint16(layoutFlatPlain)
	if n.tail > 0 {
		layout = layoutFlatInline
	}
	var size uint64
	var chunkFormat uint16
	var chunkCount uint64
	external := false
	switch n.typ() {
	case ModeDir:
		size = n.nBlocks*blkSize + n.tail
	case ModeRegular:
		size = n.size
		if size > 0 && n.content == nil {
			external = true
			var cb uint32
			cb, chunkCount = chunking(size)
			layout = layoutChunkBased
			chunkFormat = uint16(cb - blkBits)
		}
	case ModeSymlink:
		if n.nBlocks == 0 {
			size = n.tail
		} else {
			size = n.size
		}
	}
	// i_u: block address, device number, or chunk format. libcomposefs writes the block
	// address first and then the chunk format over its low half; keep that.
	var iu uint32
	switch n.typ() {
	case ModeChar, ModeBlock:
		iu = n.rdev
	case ModeDir, ModeRegular, ModeSymlink:
		if n.nBlocks > 0 {
			iu = uint32(iw.currentEnd / blkSize)
			iw.currentEnd += blkSize * n.nBlocks
		}
		if external {
			iu = iu&0xFFFF0000 | uint32(chunkFormat)
		}
	}
	var version uint16
	if !n.compact {
		version = 1
	}
	format := layout<<1 | version
	if n.compact {
		var in [compactSize]byte
		le.PutUint16(in[0:], format)
		le.PutUint16(in[2:], icount)
		le.PutUint16(in[4:], uint16(n.mode))
		le.PutUint16(in[6:], uint16(n.nlink))
		le.PutUint32(in[8:], uint32(size))
		if iw.dense {
			le.PutUint32(in[12:], uint32(n.mtime.Sec-iw.minMtime.Sec))
		}
		le.PutUint32(in[16:], iu)
		le.PutUint32(in[20:], n.ino)
		le.PutUint16(in[24:], uint16(n.uid))
		le.PutUint16(in[26:], uint16(n.gid))
		b = append(b, in[:]...)
	} else {
		var in [extendedSize]byte
		le.PutUint16(in[0:], format)
		le.PutUint16(in[2:], icount)
		le.PutUint16(in[4:], uint16(n.mode))
		le.PutUint64(in[8:], size)
		le.PutUint32(in[16:], iu)
		le.PutUint32(in[20:], n.ino)
		le.PutUint32(in[24:], n.uid)
		le.PutUint32(in[28:], n.gid)
		le.PutUint64(in[32:], uint64(n.mtime.Sec))
		le.PutUint32(in[40:], n.mtime.Nsec)
		le.PutUint32(in[44:], n.nlink)
		b = append(b, in[:]...)
	}
	if n.xsize > 0 {
		var h [xattrHdrSize]byte
		le.PutUint32(h[0:], iw.xattrFilter(n))
		h[4] = byte(nShared)
		b = append(b, h[:]...)
		for _, x := range n.xattrs {
			if x.shared != nil {
				b = le.AppendUint32(b, uint32((iw.inodesEnd%blkSize+x.shared.offset)/4))
			}
		}
		for _, x := range n.xattrs {
			if x.shared == nil {
				b = iw.appendXattrEntry(b, x.name, x.value)
			}
		}
	}
	switch {
	case n.typ() == ModeDir:
		b = appendDirents(b, n, false, true)
	case n.typ() == ModeSymlink:
		if n.nBlocks == 0 {
			b = append(b, n.payload...)
		}
	case n.typ() == ModeRegular && n.tail > 0:
		if n.content != nil {
			b = append(b, n.content[n.size-n.tail:]...)
		} else {
			for i := uint64(0); i < chunkCount; i++ {
				b = le.AppendUint32(b, nullAddr)
			}
		}
	}
	return b
}

// appendDirents appends a directory's full blocks (blocks) and/or its inline tail (tail).
func appendDirents(b []byte, n *wnode, blocks, tail bool) []byte {
	var blockSize, written uint64
	first := 0
	for i, e := range n.ents {
		l := uint64(direntSize + len(e.name))
		if blockSize+l > blkSize {
			if blocks {
				b = appendDirentChunk(b, n.ents[first:i], blkSize)
			}
			written++
			blockSize = 0
			first = i
		}
		blockSize += l
	}
	if written < n.nBlocks {
		if blocks {
			b = appendDirentChunk(b, n.ents[first:], blkSize)
		}
		blockSize = 0
		first = len(n.ents)
	}
	if tail && blockSize > 0 {
		b = appendDirentChunk(b, n.ents[first:], 1)
	}
	return b
}

func appendDirentChunk(b []byte, ents []went, align int) []byte {
	le := binary.LittleEndian
	start := len(b)
	nameoff := len(ents) * direntSize
	for _, e := range ents {
		b = le.AppendUint64(b, e.node.nid)
		b = le.AppendUint16(b, uint16(nameoff))
		b = append(b, fileType(e.node.mode), 0)
		nameoff += len(e.name)
	}
	for _, e := range ents {
		b = append(b, e.name...)
	}
	for (len(b)-start)%align != 0 {
		b = append(b, 0)
	}
	return b
}

// writeFileBlocks writes the data block of a file or symlink whose data is not inline.
func (iw *imageWriter) writeFileBlocks(w *countWriter, n *wnode) {
	if n.nBlocks == 0 {
		return
	}
	var data []byte
	switch n.typ() {
	case ModeRegular:
		if n.content == nil {
			// An external file's chunk table that did not fit inline: a block of null chunks.
			var blk [blkSize]byte
			for i := range blk {
				blk[i] = 0xFF
			}
			w.Write(blk[:])
			return
		}
		data = n.content
	case ModeSymlink:
		data = []byte(n.payload)
	default:
		return
	}
	// libcomposefs writes only the first block (data here never exceeds one block plus a tail).
	w.Write(data[:min(uint64(len(data)), blkSize)])
	w.align(blkSize)
}
