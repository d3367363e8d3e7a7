package snapshotter

import (
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kura-oci/kura/errdefs"
)

// errFailedPrecondition: the snapshot is in the wrong state for the call (a parent not
// committed, a snapshot with children removed). containerd's errdefs has this class; Kura's
// errdefs does not need it elsewhere, so it lives here.
var errFailedPrecondition = errors.New("failed precondition")

// grpcError maps an error to the gRPC status containerd's proxy client turns back into its own
// errdefs classes (errdefs.FromGRPC): AlreadyExists on a Prepare is what makes containerd skip a
// layer, NotFound on a Stat what makes it create one.
func grpcError(err error) error {
	if err == nil {
		return nil
	}
	code := codes.Unknown
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, errdefs.ErrAlreadyExists):
		code = codes.AlreadyExists
	case errors.Is(err, errFailedPrecondition):
		code = codes.FailedPrecondition
	case errors.Is(err, errdefs.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, errdefs.ErrUnsupported):
		code = codes.Unimplemented
	}
	return status.Error(code, err.Error())
}
