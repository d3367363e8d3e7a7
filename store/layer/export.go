package layer

import (
	"context"
	"os"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
)

// ExportSource is what Export reads: a stored layer's TOC and tar-split (the metadata role) and
// the objects they name (the objects role). *store.Store implements it; push declares it as
// part of what it reads of a store.
type ExportSource interface {
	LayerTOC(ctx context.Context, diffID digest.Digest) (*chunked.TOC, error)
	LayerTarSplit(ctx context.Context, diffID digest.Digest) ([]byte, error)
	Open(ctx context.Context, d digest.Digest) (*os.File, error)
}
