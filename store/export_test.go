package store

import (
	"context"

	"github.com/opencontainers/go-digest"
)

// The lookups of ObjectDir that the store keeps to itself, for its external tests.

func ObjectDirSize(o *ObjectDir, d digest.Digest) (int64, error) { return o.size(d) }

func ObjectDirHas(o *ObjectDir, d digest.Digest) bool { return o.has(d) }

func ObjectDirMissing(o *ObjectDir, ds []digest.Digest) digest.Digest { return o.missing(ds) }

// SetLockWaitHook makes s call f each time a lock it asks for cannot be had at once.
func SetLockWaitHook(s *Store, f func()) { s.onLockWait = f }

// SetGatePassedHook makes s call f each time a lock it asks for is past the gate, before its
// flock: the window in which another of its locks can see the handle hold nothing yet.
func SetGatePassedHook(s *Store, f func()) { s.onGatePassed = f }

// ReadTotals returns the store's maintained object totals (see usageFile).
func ReadTotals(s *Store) (Totals, error) { return s.readTotals() }

// WalkTotals counts the objects by a walk: what ReadTotals must equal.
func WalkTotals(s *Store) (Totals, error) { return s.walkTotals(context.Background()) }

// UsageFile is the name of the totals file in the store's root.
const UsageFile = usageFile

// OpenRecord is an open placement record with no close, as a crash leaves one.
func OpenRecord(id uint64) []byte { return encodeUsageRecord(usageOpen, id, Totals{}) }
