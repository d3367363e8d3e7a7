package store_test

import (
	"context"
	"testing"

	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/storetest"
)

func newStore(t *testing.T) *store.Store {
	t.Helper()
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := s.RLock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	return s
}

func leftovers(s *store.Store) func() int {
	return func() int {
		n, _ := s.TempFiles()
		return n
	}
}

func TestSuite(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Subject {
		s := newStore(t)
		return storetest.Subject{Store: s, Leftovers: leftovers(s)}
	})
}
