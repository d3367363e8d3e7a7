package store_test

import (
	"testing"

	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/storetest"
)

func leftovers(s *store.Store) func() int {
	return func() int {
		n, _ := s.TempFiles()
		return n
	}
}

func TestSuite(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Subject {
		s := teststore.Open(t, teststore.Synced(), teststore.Locked())
		return storetest.Subject{Store: s, Leftovers: leftovers(s)}
	})
}
