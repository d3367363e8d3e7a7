package main

import (
	"fmt"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/ocilayout"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/source"
)

// openSource returns the source a parsed reference names: a registry repository read through
// client, or an OCI layout. Pull, copy and inspect read every image through it.
func openSource(ref imageref.Reference, client *registry.Client) (source.Source, error) {
	switch ref.Transport {
	case imageref.Docker:
		return registry.NewSource(client, ref), nil
	case imageref.OCILayout:
		return ocilayout.NewSource(ref.Dir, ref.Tag), nil
	}
	return nil, fmt.Errorf("reference %s: %w", ref, errdefs.ErrUnsupported)
}
