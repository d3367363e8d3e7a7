package tarstream

import (
	"io"
	"sync"

	"github.com/vbatts/tar-split/tar/storage"
)

// Feed is a decoded tar-split that one goroutine appends to, in tar order, while others read
// it as it grows: a rebuild can hash the start of the tar while the rest of the tar-split is
// still being made (predicted), instead of waiting for the whole of it. Entries are never
// changed once appended, so a reader may keep the pointers it got.
type Feed struct {
	mu      sync.Mutex
	grew    sync.Cond
	entries []storage.Entry
	waiting int // readers waiting for an entry
	closed  bool
	err     error
}

// NewFeed returns an empty feed with room for capacity entries.
func NewFeed(capacity int) *Feed {
	f := &Feed{entries: make([]storage.Entry, 0, capacity)}
	f.grew.L = &f.mu
	return f
}

// Append adds e, which the caller no longer changes, after the entries so far.
func (f *Feed) Append(e storage.Entry) {
	f.mu.Lock()
	f.entries = append(f.entries, e)
	wake := f.waiting > 0
	f.mu.Unlock()
	if wake {
		f.grew.Broadcast()
	}
}

// Close ends the feed: err nil means every entry is in; an error is what readers get in place
// of the entries they have not read yet (a prediction failed midway, say). Only the first Close
// counts.
func (f *Feed) Close(err error) {
	f.mu.Lock()
	if !f.closed {
		f.closed, f.err = true, err
	}
	f.mu.Unlock()
	f.grew.Broadcast()
}

// Entries returns the entries once the feed is closed without an error, the error otherwise.
// It waits for Close.
func (f *Feed) Entries() ([]storage.Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for !f.closed {
		f.waiting++
		f.grew.Wait()
		f.waiting--
	}
	if f.err != nil {
		return nil, f.err
	}
	return f.entries, nil
}

// Reader returns a function that returns the feed's entries one by one, in order, waiting for
// those not appended yet: io.EOF after the last one, or the error the feed was closed with.
func (f *Feed) Reader() func() (*storage.Entry, error) {
	i := 0
	return func() (*storage.Entry, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		for i >= len(f.entries) && !f.closed {
			f.waiting++
			f.grew.Wait()
			f.waiting--
		}
		switch {
		case f.err != nil:
			return nil, f.err
		case i >= len(f.entries):
			return nil, io.EOF
		}
		e := &f.entries[i]
		i++
		return e, nil
	}
}

// sliceReader returns a reader of entries as Feed.Reader returns them.
func sliceReader(entries []storage.Entry) func() (*storage.Entry, error) {
	i := 0
	return func() (*storage.Entry, error) {
		if i >= len(entries) {
			return nil, io.EOF
		}
		i++
		return &entries[i-1], nil
	}
}
