package composefs

// On-disk constants of the EROFS format (Linux fs/erofs/erofs_fs.h) and of the composefs header,
// restricted to what composefs images use.
const (
	blkSize        = 4096
	blkBits        = 12
	slotSize       = 32 // inodes are addressed in 32-byte slots (nid)
	superOffset    = 1024
	superSize      = 128
	compactSize    = 32
	extendedSize   = 64
	direntSize     = 12
	xattrHdrSize   = 12
	xattrEntrySize = 4
	cfsHeaderSize  = 32

	cfsMagic     = 0xd078629a
	cfsVersion   = 1
	cfsFlagACL   = 1
	erofsMagic   = 0xE0F5E1E2
	compatMtime  = 0x2
	compatFilter = 0x4

	incompatXattrPrefixes = 0x40 // EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES: long name prefixes
	xattrLongPrefix       = 0x80 // EROFS_XATTR_LONG_PREFIX: the name index is a long prefix's

	layoutFlatPlain  = 0
	layoutFlatInline = 2
	layoutChunkBased = 4

	chunkBlkBitsMask = 0x1f
	nullAddr         = 0xFFFFFFFF
	// maxChunks: libcomposefs keeps the null chunk table of an external file within one block.
	maxChunks = 1024

	maxSharedRefs = 128 // EROFS_XATTR_LONG_PREFIX: more shared references per inode stay inline
	filterSeed    = 0x25BBE08F
	filterBits    = 32

	// MaxVersion is the newest composefs image format version.
	MaxVersion = 1
)

// EROFS dirent file types.
const (
	ftUnknown = 0
	ftReg     = 1
	ftDir     = 2
	ftChr     = 3
	ftBlk     = 4
	ftFIFO    = 5
	ftSock    = 6
	ftSymlink = 7
)

func fileType(mode uint32) uint8 {
	switch mode & ModeTypeMask {
	case ModeRegular:
		return ftReg
	case ModeDir:
		return ftDir
	case ModeChar:
		return ftChr
	case ModeBlock:
		return ftBlk
	case ModeFIFO:
		return ftFIFO
	case ModeSocket:
		return ftSock
	case ModeSymlink:
		return ftSymlink
	}
	return ftUnknown
}

func validMode(mode uint32) bool { return fileType(mode) != ftUnknown }

// Xattr name prefixes EROFS stores as an index, in the order libcomposefs tries them.
var xattrPrefixes = []struct {
	prefix string
	index  uint8
}{
	{"user.", 1},
	{"system.posix_acl_access", 2},
	{"system.posix_acl_default", 3},
	{"trusted.", 4},
	{"security.", 6},
}

// xattrPrefixByIndex maps an on-disk name index back to its prefix (index 5 is lustre.).
var xattrPrefixByIndex = []string{"", "user.", "system.posix_acl_access", "system.posix_acl_default", "trusted.", "lustre.", "security."}

func xattrIndex(name string) (uint8, string) {
	for _, p := range xattrPrefixes {
		if len(name) >= len(p.prefix) && name[:len(p.prefix)] == p.prefix {
			return p.index, name[len(p.prefix):]
		}
	}
	return 0, name
}

func roundUp(x, a uint64) uint64 { return (x + a - 1) / a * a }

// Overlay xattr names that composefs writes and reads.
const (
	xOverlayPrefix = "trusted.overlay."
	xEscapePrefix  = "trusted.overlay.overlay."
	xMetacopy      = "trusted.overlay.metacopy"
	xRedirect      = "trusted.overlay.redirect"
	xOpaque        = "trusted.overlay.opaque"
	xEscWhiteout   = "trusted.overlay.overlay.whiteout"
	xEscWhiteouts  = "trusted.overlay.overlay.whiteouts"
	xEscOpaque     = "trusted.overlay.overlay.opaque"
	xUserWhiteout  = "user.overlay.whiteout"
	xUserWhiteouts = "user.overlay.whiteouts"
	xUserOpaque    = "user.overlay.opaque"
	xSelinux       = "security.selinux"
	xACLAccess     = "system.posix_acl_access"
	xACLDefault    = "system.posix_acl_default"
)

// xxh32 is the 32-bit xxHash, which EROFS uses for its xattr name bloom filter.
func xxh32(p []byte, seed uint32) uint32 {
	const (
		p1 = 2654435761
		p2 = 2246822519
		p3 = 3266489917
		p4 = 668265263
		p5 = 374761393
	)
	rotl := func(x uint32, r uint) uint32 { return x<<r | x>>(32-r) }
	le := func(b []byte) uint32 { return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24 }
	round := func(acc, in uint32) uint32 { return rotl(acc+in*p2, 13) * p1 }
	n := len(p)
	var h uint32
	if n >= 16 {
		v1, v2, v3, v4 := seed+p1+p2, seed+p2, seed, seed-p1
		for len(p) >= 16 {
			v1 = round(v1, le(p[0:]))
			v2 = round(v2, le(p[4:]))
			v3 = round(v3, le(p[8:]))
			v4 = round(v4, le(p[12:]))
			p = p[16:]
		}
		h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)
	} else {
		h = seed + p5
	}
	h += uint32(n)
	for len(p) >= 4 {
		h = rotl(h+le(p)*p3, 17) * p4
		p = p[4:]
	}
	for _, c := range p {
		h = rotl(h+uint32(c)*p5, 11) * p1
	}
	h ^= h >> 15
	h *= p2
	h ^= h >> 13
	h *= p3
	h ^= h >> 16
	return h
}
