package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/kura-oci/kura/errdefs"
)

// totals checks the maintained object totals (see usageFile) against a walk of objects/; repair
// writes the walk's figures as a new base. Unknown totals (missing, or a placement open: one in
// progress or interrupted by a crash) are not damage: df walks instead and the next gc writes
// them; fsck notes them. Without repair fsck holds only the shared lock, so a pull may place
// objects during the walk: every rename happens between an open and a close record, so if the
// file changed during the walk the comparison is skipped (noted), never reported as a problem.
func (f *fsck) totals(ctx context.Context) error {
	before, berr := f.s.readTotals()
	walked, err := f.s.walkTotals(ctx)
	if err != nil {
		return err
	}
	after, aerr := f.s.readTotals()
	var why string
	switch {
	case errors.Is(berr, errdefs.ErrNotFound):
		f.r.TotalsNote = berr.Error()
	case berr != nil:
		why = berr.Error()
	case aerr != nil || after != before:
		f.r.TotalsNote = "store usage totals not compared: objects were placed during the check"
	case before != walked:
		why = fmt.Sprintf("store usage totals say %d objects, %d bytes, %d allocated; the objects are %d, %d bytes, %d allocated",
			before.Objects, before.Bytes, before.Allocated, walked.Objects, walked.Bytes, walked.Allocated)
	}
	if why != "" {
		f.problem("%s", why)
	}
	switch {
	case !f.opts.Repair:
	case why != "":
		f.fix("rewriting the store usage totals", f.x.writeTotals(walked))
	case berr != nil: // unknown, not damage: written without counting a repair
		if err := f.x.writeTotals(walked); err != nil {
			f.unrepaired("writing the store usage totals: %v", err)
		}
	}
	return nil
}
