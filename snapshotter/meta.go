// Package snapshotter serves containerd's snapshots API (containerd.services.snapshots.v1, loaded
// by containerd as a proxy plugin) from Kura: active snapshots are overlay mounts over committed
// parents, and a Prepare carrying the CRI plugin's image labels is answered from Kura's store
// through the layer store's core (pull by reference, per-layer mount), so containerd never
// downloads that layer. docs/snapshotter.md says what works and what does not yet.
package snapshotter

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
)

// Kind is a snapshot's kind, as containerd names them.
type Kind string

const (
	KindView      Kind = "view"
	KindActive    Kind = "active"
	KindCommitted Kind = "committed"
)

// record is one snapshot's bookkeeping, kept in the metadata file.
type record struct {
	ID      int64             `json:"id"`
	Kind    Kind              `json:"kind"`
	Parent  string            `json:"parent,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Created time.Time         `json:"created"`
	Updated time.Time         `json:"updated"`
	// Dir, when set, is the snapshot's file system outside the snapshotter's directory: a layer
	// served by the layer store's core (remote path). It is not removed with the snapshot.
	Dir string `json:"dir,omitempty"`
	// Image and DiffID, when set, are the store's one-layer image and layer a plain-path commit
	// ingested the snapshot into (see ingest); Dir is then that layer's mount.
	Image  digest.Digest `json:"image,omitempty"`
	DiffID digest.Digest `json:"diffID,omitempty"`
	// Layer is the DiffID of the stored layer a remote-path snapshot is on (Dir is its mount):
	// a restart mounts it again from the store before asking the registry.
	Layer digest.Digest `json:"layer,omitempty"`
	// Size and Inodes are a committed snapshot's usage, measured once at commit.
	Size   int64 `json:"size,omitempty"`
	Inodes int64 `json:"inodes,omitempty"`
}

// meta is the whole metadata file: every snapshot by key, and the next directory number.
type meta struct {
	NextID    int64              `json:"next_id"`
	Snapshots map[string]*record `json:"snapshots"`
}

const metaFile = "metadata.json"

// loadMeta reads the metadata file of root; a root without one starts empty.
func loadMeta(root string) (*meta, error) {
	m := &meta{NextID: 1, Snapshots: map[string]*record{}}
	b, err := os.ReadFile(filepath.Join(root, metaFile))
	if os.IsNotExist(err) {
		return m, nil
	}
	if err != nil {
		return nil, fmt.Errorf("snapshotter: %w", err)
	}
	if err := json.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("snapshotter: %s: %v: %w", metaFile, err, errdefs.ErrInvalid)
	}
	if m.Snapshots == nil {
		m.Snapshots = map[string]*record{}
	}
	return m, nil
}

// save writes the metadata file whole: temp file, fsync, rename, so a crash leaves the old
// file or the new one, never a torn one.
func (m *meta) save(root string) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(root, metaFile+".tmp-*")
	if err != nil {
		return fmt.Errorf("snapshotter: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(root, metaFile))
	}
	if err != nil {
		return fmt.Errorf("snapshotter: writing %s: %w", metaFile, err)
	}
	return nil
}

// children says whether any snapshot has key as its parent.
func (m *meta) children(key string) bool {
	for _, r := range m.Snapshots {
		if r.Parent == key {
			return true
		}
	}
	return false
}

// clone copies a record so a reply never aliases the map the lock guards.
func (r *record) clone() *record {
	c := *r
	c.Labels = maps.Clone(r.Labels)
	return &c
}
