package store

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/kura-oci/kura/errdefs"
)

// The store's object totals (count, apparent bytes, allocated bytes) are kept in usageFile so
// that df does not stat every object. The file is a sequence of usageRecLen-byte records: a base
// written whole (temp file, rename) by gc or fsck --repair under the exclusive lock, then, for each
// placement of new objects, an open record before the first rename and a close record with what
// the renames created, both appended (O_APPEND, one write each) by the writer that placed them and
// carrying the same random ID. Creation is a rename that does not replace, so exactly one writer
// creates each object and only it counts it: concurrent pulls of the same content count it once.
// A record is "KUS1", a kind byte ('B' base, 'O' open, 'C' close), three zero bytes, an 8-byte ID
// (zero in a base), three little-endian int64s (objects, bytes, allocated; zero in an open) and
// the CRC-32C of the 40 bytes before it.
//
// The totals are exact when the file is whole (a base first, every record checking out) and every
// open record has its close. An open without a close is a placement in progress or one a crash
// interrupted: the totals are then unknown, as when the file is missing (a store made before it
// existed, or a gc killed while deleting objects), and df walks objects/ instead; the next gc or
// fsck --repair writes a new base from a walk. A damaged file (torn, garbage, a later base) is
// unknown too, and fsck reports it.
const usageFile = "usage"

const usageRecLen = 44

const (
	usageBase  = 'B'
	usageOpen  = 'O'
	usageClose = 'C'
)

var usageMagic = [4]byte{'K', 'U', 'S', '1'}

// errTotalsUnknown: a placement of objects is in progress or was interrupted (see usageFile).
var errTotalsUnknown = fmt.Errorf("store usage totals are unknown: objects are being placed, or a placement was interrupted: %w", errdefs.ErrNotFound)

// Totals are the store's object figures: what df reports for objects/.
type Totals struct {
	Objects   int64
	Bytes     int64
	Allocated int64
}

func (t Totals) plus(o Totals) Totals {
	return Totals{t.Objects + o.Objects, t.Bytes + o.Bytes, t.Allocated + o.Allocated}
}

func (t Totals) minus(o Totals) Totals {
	return Totals{t.Objects - o.Objects, t.Bytes - o.Bytes, t.Allocated - o.Allocated}
}

// encodeUsageRecord encodes one record.
func encodeUsageRecord(kind byte, id uint64, t Totals) []byte {
	b := make([]byte, usageRecLen)
	copy(b, usageMagic[:])
	b[4] = kind
	binary.LittleEndian.PutUint64(b[8:], id)
	binary.LittleEndian.PutUint64(b[16:], uint64(t.Objects))
	binary.LittleEndian.PutUint64(b[24:], uint64(t.Bytes))
	binary.LittleEndian.PutUint64(b[32:], uint64(t.Allocated))
	binary.LittleEndian.PutUint32(b[40:], crc32.Checksum(b[:40], castagnoli))
	return b
}

// errTotalsCut: the last record is cut short, as an append being written, or one a kill cut
// (a write(2) of a killed process may stop at a page boundary), leaves it.
var errTotalsCut = fmt.Errorf("store usage totals are unknown: the last record is being appended or its append was cut short: %w", errdefs.ErrNotFound)

// parseUsage sums a usage file: its base plus every close record. A defect (no base first, a
// damaged record, a later base, a close without its open, an open with totals, negative totals)
// is an error wrapping ErrInvalid; an open without its close is errTotalsUnknown, and a last
// record cut short (with whole, sound records before it) errTotalsCut. The totals are then
// unknown, never guessed.
func parseUsage(b []byte) (Totals, error) {
	bad := func(why string, args ...any) (Totals, error) {
		return Totals{}, fmt.Errorf("store usage totals: "+why+": %w", append(args, errdefs.ErrInvalid)...)
	}
	cut := len(b) % usageRecLen
	if len(b) < usageRecLen {
		return bad("%d bytes, not whole records", len(b))
	}
	t, err := parseUsageRecords(b[:len(b)-cut])
	if err == nil && cut > 0 {
		return Totals{}, errTotalsCut
	}
	return t, err
}

// parseUsageRecords is parseUsage for whole records.
func parseUsageRecords(b []byte) (Totals, error) {
	bad := func(why string, args ...any) (Totals, error) {
		return Totals{}, fmt.Errorf("store usage totals: "+why+": %w", append(args, errdefs.ErrInvalid)...)
	}
	var t Totals
	open := map[uint64]bool{}
	for i := 0; i < len(b); i += usageRecLen {
		r := b[i : i+usageRecLen]
		if [4]byte(r[:4]) != usageMagic || r[5]|r[6]|r[7] != 0 || binary.LittleEndian.Uint32(r[40:]) != crc32.Checksum(r[:40], castagnoli) {
			return bad("record %d is damaged", i/usageRecLen)
		}
		id := binary.LittleEndian.Uint64(r[8:])
		rt := Totals{int64(binary.LittleEndian.Uint64(r[16:])), int64(binary.LittleEndian.Uint64(r[24:])), int64(binary.LittleEndian.Uint64(r[32:]))}
		switch {
		case (i == 0) != (r[4] == usageBase):
			return bad("record %d: a base must come first, and only there", i/usageRecLen)
		case r[4] == usageBase && id == 0:
			t = rt
		case r[4] == usageOpen && !open[id] && rt == Totals{}:
			open[id] = true
		case r[4] == usageClose && open[id]:
			delete(open, id)
			t = t.plus(rt)
		default:
			return bad("record %d (%q) does not fit", i/usageRecLen, r[4])
		}
	}
	if t.Objects < 0 || t.Bytes < 0 || t.Allocated < 0 {
		return bad("negative totals")
	}
	if len(open) > 0 {
		return Totals{}, errTotalsUnknown
	}
	return t, nil
}

// readTotals returns the maintained totals; the error wraps ErrNotFound when they are unknown
// (missing, or a placement open) and ErrInvalid when the file is damaged.
func (s *Store) readTotals() (Totals, error) {
	b, err := os.ReadFile(filepath.Join(s.root, usageFile))
	if errors.Is(err, fs.ErrNotExist) {
		return Totals{}, fmt.Errorf("store usage totals are missing: %w", errdefs.ErrNotFound)
	}
	if err != nil {
		return Totals{}, fmt.Errorf("store usage totals: %w", err)
	}
	return parseUsage(b)
}

// totals is df's object figures: the maintained totals, or, when they are unknown or damaged,
// a walk of objects/ (walked true). The caller holds the shared lock.
func (s *Store) totals(ctx context.Context) (t Totals, walked bool, err error) {
	if t, err = s.readTotals(); err == nil {
		return t, false, nil
	}
	t, err = s.walkTotals(ctx)
	return t, true, err
}

// placement counts the objects one writer creates, between an open and a close record.
type placement struct {
	s    *Store
	id   uint64
	open bool // the open record is written: the close must follow
	made Totals
}

// openPlacement appends the open record before the writer's first rename. It never creates the
// file: without a base there is nothing to add to. If the append fails the file is removed, so
// the totals become unknown rather than wrong.
func (s *Store) openPlacement() *placement {
	p := &placement{s: s}
	if s.readOnly {
		return p
	}
	var id [8]byte
	for p.id == 0 {
		rand.Read(id[:])
		p.id = binary.LittleEndian.Uint64(id[:])
	}
	p.open = s.appendUsage(encodeUsageRecord(usageOpen, p.id, Totals{}))
	return p
}

// created counts an object this writer has just given its name.
func (p *placement) created(path string) {
	if p.open {
		p.made = p.made.plus(statCreated(path))
	}
}

// close appends what the placement created. Called on every path out of the renames, failures
// included: an open left without its close makes the totals unknown until the next gc.
func (p *placement) close() {
	if p.open {
		p.s.appendUsage(encodeUsageRecord(usageClose, p.id, p.made))
		p.open = false
	}
}

// appendUsage appends one record to an existing usage file; false if it did not. A file that
// does not hold whole records ends in an append a kill cut short: it is removed rather than
// appended to, as every record after the cut would be read out of step (damage).
func (s *Store) appendUsage(rec []byte) bool {
	path := filepath.Join(s.root, usageFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return false
	}
	if fi, serr := f.Stat(); serr != nil || fi.Size()%usageRecLen != 0 {
		f.Close()
		os.Remove(path)
		return false
	}
	_, err = f.Write(rec)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return false
	}
	return true
}

// statCreated is what a newly created object adds to the totals.
func statCreated(path string) Totals {
	fi, err := os.Lstat(path)
	if err != nil {
		return Totals{}
	}
	return Totals{Objects: 1, Bytes: fi.Size(), Allocated: allocated(fi)}
}

// writeTotals replaces the usage file with a base record, folding every delta. Only under the
// exclusive lock: no writer appends meanwhile.
func (x *Exclusive) writeTotals(t Totals) error {
	if err := x.check(); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(x.root, dirTmp), filepath.Join(x.root, usageFile), encodeUsageRecord(usageBase, 0, t), 0o644)
}

// dropTotals removes the usage file before a change no delta describes (gc deleting objects,
// fsck --repair): killed before the new base is written, the store then has no totals (df walks,
// the next gc writes them) rather than wrong ones.
func (x *Exclusive) dropTotals() error {
	if err := x.check(); err != nil {
		return err
	}
	err := os.Remove(filepath.Join(x.root, usageFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("store usage totals: %w", err)
	}
	return nil
}

// walkTotals counts the objects by listing and stat-ing every one: the reference the maintained
// totals must equal.
func (o *Objects) walkTotals(ctx context.Context) (Totals, error) {
	var t Totals
	err := o.Walk(ctx, func(i Info) error {
		t = t.plus(Totals{Objects: 1, Bytes: i.Size, Allocated: i.Allocated})
		return nil
	})
	return t, err
}

// createZeroTotals gives a store being created a zero base, unless it has one already: two
// processes creating the store at once must not overwrite the deltas of the first one's pull.
func createZeroTotals(root string) error {
	f, err := os.CreateTemp(root, "usage-")
	if err != nil {
		return err
	}
	_, err = f.Write(encodeUsageRecord(usageBase, 0, Totals{}))
	if err == nil {
		err = f.Chmod(0o644) // readable by whoever may read the store (df of a read-only store)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = renameNoReplace(f.Name(), filepath.Join(root, usageFile))
	}
	os.Remove(f.Name())
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	return err
}
