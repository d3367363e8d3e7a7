package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"path"
	"regexp"
	"sort"
	"strings"
	"text/tabwriter"
	"text/template"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/store"
)

// imagesOptions are kura images' flags, as podman images has them.
type imagesOptions struct {
	format  string
	filters []string
	quiet   bool
	noTrunc bool
	digests bool
}

func init() {
	var o imagesOptions
	cmd := &cobra.Command{
		Use:   "images",
		Short: "List the images in the store",
		Long: `List the images in the store as podman images does: one row per name (REPOSITORY and TAG), and
a row <none> <none> for an image without a name (rmi removes names; gc drops such images).

--filter KEY=VALUE (repeatable; the same key twice matches either value, different keys must all
match): reference=PATTERN (a glob matched against NAME, REPOSITORY and REPOSITORY:TAG),
dangling=true|false, before=IMAGE and since=IMAGE (created before or after that image).

--format takes a Go template over the fields .Repository .Tag .ID .Digest .Created (relative,
"2 hours ago") .CreatedAt .Size .SizeBytes .Names, "table " before it for a header, or "json"
(as --json: docs/json.md).`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error { return runImages(cmd, o) },
	}
	cmd.Flags().StringVar(&o.format, "format", "", "Go template for each row, \"table TEMPLATE\", or json")
	cmd.Flags().StringArrayVarP(&o.filters, "filter", "f", nil, "reference=PATTERN, dangling=true|false, before=IMAGE, since=IMAGE")
	cmd.Flags().BoolVarP(&o.quiet, "quiet", "q", false, "print only image IDs")
	cmd.Flags().BoolVar(&o.noTrunc, "no-trunc", false, "print full image IDs (sha256:…)")
	cmd.Flags().BoolVar(&o.digests, "digests", false, "add a DIGEST column")
	rootCmd.AddCommand(cmd)
}

// imageRow is one image in kura images --json (docs/json.md).
type imageRow struct {
	Names   []string      `json:"names"`
	ID      digest.Digest `json:"id"`
	Created time.Time     `json:"created"`
	Logical int64         `json:"logicalBytes"`
	Unique  int64         `json:"uniqueBytes"`
	Layers  int           `json:"layers"`
}

// imageLine is one row of the table and what --format templates see: podman's field names.
type imageLine struct {
	Repository, Tag string
	ID, Digest      string
	Created         string // relative: "2 hours ago"
	CreatedAt       string
	Size            string // human: "1.2 MB"
	SizeBytes       int64
	Names           []string
}

func runImages(cmd *cobra.Command, o imagesOptions) error {
	match, err := parseImageFilters(o.filters)
	if err != nil {
		return err
	}
	var tmpl *template.Template
	table := o.format == ""
	if f := o.format; f != "" && f != "json" {
		f, table = strings.CutPrefix(f, "table ")
		if tmpl, err = template.New("format").Parse(strings.ReplaceAll(f, `\t`, "\t") + "\n"); err != nil {
			return usageError{fmt.Errorf("--format: %v", err)}
		}
	}
	s, err := openStore()
	if err != nil {
		return err
	}
	jsonOut := global.json || o.format == "json"
	rows, err := listImages(cmd.Context(), s, jsonOut)
	if err != nil {
		return err
	}
	// Newest first, as podman lists them; then by name for a stable order.
	sort.SliceStable(rows, func(i, j int) bool {
		if !rows[i].Created.Equal(rows[j].Created) {
			return rows[i].Created.After(rows[j].Created)
		}
		return strings.Join(rows[i].Names, ",") < strings.Join(rows[j].Names, ",")
	})
	if rows, err = match(rows); err != nil {
		return err
	}
	// Buffered: the table's writer writes each cell apart, a system call each on a terminal.
	out := bufio.NewWriter(cmd.OutOrStdout())
	switch {
	case jsonOut:
		err = printJSON(out, rows)
	case o.quiet:
		for _, r := range rows {
			fmt.Fprintln(out, imageID(r.ID, o.noTrunc))
		}
	case tmpl == nil:
		err = printImageTable(out, imageLines(rows, o.noTrunc, time.Now()), o.digests)
	default:
		err = printImageTemplate(out, tmpl, o.format, table, imageLines(rows, o.noTrunc, time.Now()))
	}
	if err != nil {
		return err
	}
	return out.Flush()
}

// listImages lists the rows of `kura images`. Only the JSON has uniqueBytes, which needs every
// layer's objects (Usage); the table and templates list the store's image summaries, at a cost
// that grows with neither the store's bytes nor its images' records.
func listImages(ctx context.Context, s *store.Store, unique bool) ([]imageRow, error) {
	if unique {
		u, err := s.Usage(ctx, store.WithUniqueBytes())
		if err != nil {
			return nil, err
		}
		rows := make([]imageRow, 0, len(u.Images))
		for _, iu := range u.Images {
			rows = append(rows, imageRow{Names: orEmpty(iu.Names), ID: iu.Image.ID, Created: iu.Image.Created, Logical: iu.Logical, Unique: iu.Unique, Layers: len(iu.Image.Layers)})
		}
		return rows, nil
	}
	sums, err := s.ImageSummaries(ctx)
	if err != nil {
		return nil, err
	}
	rows := make([]imageRow, 0, len(sums))
	for _, is := range sums {
		rows = append(rows, imageRow{Names: orEmpty(is.Names), ID: is.ID, Created: is.Created, Logical: is.Logical, Layers: is.Layers})
	}
	return rows, nil
}

// imageID is the ID as podman shows it: 12 hex digits, or the whole digest with --no-trunc.
func imageID(id digest.Digest, noTrunc bool) string {
	if noTrunc {
		return id.String()
	}
	return id.Encoded()[:12]
}

// imageLines makes the table's rows: one per name, one <none> row for an image without names.
func imageLines(rows []imageRow, noTrunc bool, now time.Time) []imageLine {
	var lines []imageLine
	for _, r := range rows {
		l := imageLine{ID: imageID(r.ID, noTrunc), Digest: r.ID.String(), Created: "unknown", Size: humanSize(r.Logical), SizeBytes: r.Logical, Names: r.Names}
		if !r.Created.IsZero() {
			l.Created, l.CreatedAt = humanDuration(now.Sub(r.Created))+" ago", r.Created.Format("2006-01-02 15:04:05 -0700 MST")
		}
		if len(r.Names) == 0 {
			l.Repository, l.Tag = "<none>", "<none>"
			lines = append(lines, l)
		}
		for _, n := range r.Names {
			l.Repository, l.Tag = splitName(n)
			lines = append(lines, l)
		}
	}
	return lines
}

// splitName splits NAME[:TAG] (the tag after the last '/') or NAME@DIGEST; a name without a tag
// shows the tag <none>, as podman does.
func splitName(n string) (repo, tag string) {
	if i := strings.IndexByte(n, '@'); i >= 0 {
		return n[:i], "<none>"
	}
	if i := strings.LastIndexByte(n, ':'); i > strings.LastIndexByte(n, '/') {
		return n[:i], n[i+1:]
	}
	return n, "<none>"
}

func printImageTable(w io.Writer, lines []imageLine, digests bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "REPOSITORY\tTAG\t"
	if digests {
		head += "DIGEST\t"
	}
	fmt.Fprintln(tw, head+"IMAGE ID\tCREATED\tSIZE")
	for _, l := range lines {
		fmt.Fprintf(tw, "%s\t%s\t", l.Repository, l.Tag)
		if digests {
			fmt.Fprintf(tw, "%s\t", l.Digest)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", l.ID, l.Created, l.Size)
	}
	return tw.Flush()
}

// headers are the column titles of "table" templates, as podman names them.
var headers = map[string]string{"ID": "IMAGE ID", "CreatedAt": "CREATED AT", "SizeBytes": "SIZE"}

func printImageTemplate(w io.Writer, tmpl *template.Template, format string, table bool, lines []imageLine) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if table {
		head := regexp.MustCompile(`\{\{\s*\.(\w+)\s*\}\}`).ReplaceAllStringFunc(strings.TrimPrefix(format, "table "), func(m string) string {
			f := regexp.MustCompile(`\w+`).FindString(m)
			if h, ok := headers[f]; ok {
				return h
			}
			return strings.ToUpper(f)
		})
		fmt.Fprintln(tw, strings.ReplaceAll(head, `\t`, "\t"))
	}
	for _, l := range lines {
		if err := tmpl.Execute(tw, l); err != nil {
			return usageError{fmt.Errorf("--format: %v", err)}
		}
	}
	return tw.Flush()
}

// parseImageFilters turns --filter flags into a function that keeps the matching rows.
func parseImageFilters(filters []string) (func([]imageRow) ([]imageRow, error), error) {
	byKey := map[string][]string{}
	for _, f := range filters {
		k, v, ok := strings.Cut(f, "=")
		switch {
		case !ok || v == "":
			return nil, usageError{fmt.Errorf("--filter %q: want KEY=VALUE", f)}
		case k == "dangling" && v != "true" && v != "false":
			return nil, usageError{fmt.Errorf("--filter %q: want dangling=true or dangling=false", f)}
		case k == "reference":
			if _, err := path.Match(v, ""); err != nil {
				return nil, usageError{fmt.Errorf("--filter %q: %v", f, err)}
			}
		case k != "dangling" && k != "before" && k != "since":
			return nil, usageError{fmt.Errorf("--filter %q: unknown key (want reference, dangling, before or since)", f)}
		}
		byKey[k] = append(byKey[k], v)
	}
	return func(rows []imageRow) ([]imageRow, error) {
		times := map[string]time.Time{}
		for _, ref := range append(byKey["before"], byKey["since"]...) {
			t, err := createdOf(rows, ref)
			if err != nil {
				return nil, err
			}
			times[ref] = t
		}
		var kept []imageRow
		for _, r := range rows {
			if anyOf(byKey["reference"], func(p string) bool { return referenceMatches(p, r.Names) }) &&
				anyOf(byKey["dangling"], func(v string) bool { return (v == "true") == (len(r.Names) == 0) }) &&
				anyOf(byKey["before"], func(ref string) bool { return r.Created.Before(times[ref]) }) &&
				anyOf(byKey["since"], func(ref string) bool { return r.Created.After(times[ref]) }) {
				kept = append(kept, r)
			}
		}
		return orEmpty(kept), nil
	}, nil
}

// anyOf is true when no values were given for a key, or one of them matches.
func anyOf(values []string, match func(string) bool) bool {
	if len(values) == 0 {
		return true
	}
	for _, v := range values {
		if match(v) {
			return true
		}
	}
	return false
}

// referenceMatches matches a glob against each name, its repository and its repository:tag.
func referenceMatches(pattern string, names []string) bool {
	for _, n := range names {
		repo, tag := splitName(n)
		for _, cand := range []string{n, repo, repo + ":" + tag} {
			if ok, _ := path.Match(pattern, cand); ok {
				return true
			}
		}
	}
	return false
}

// createdOf is the creation time of the image a before= or since= filter names (a name or an
// ID prefix, as elsewhere).
func createdOf(rows []imageRow, ref string) (time.Time, error) {
	hex := strings.TrimPrefix(ref, "sha256:")
	for _, r := range rows {
		if strings.HasPrefix(r.ID.Encoded(), hex) && len(hex) >= 4 {
			return r.Created, nil
		}
		for _, n := range r.Names {
			if n == ref {
				return r.Created, nil
			}
		}
	}
	return time.Time{}, fmt.Errorf("--filter before/since: image %q: %w", ref, errdefs.ErrNotFound)
}

// humanSize is a size as podman prints it: three significant digits, decimal units.
func humanSize(n int64) string {
	units := []string{"B", "kB", "MB", "GB", "TB", "PB"}
	f, i := float64(n), 0
	for f >= 1000 && i < len(units)-1 {
		f /= 1000
		i++
	}
	return fmt.Sprintf("%.3g %s", f, units[i])
}

// humanDuration is a duration as podman (docker/go-units) words it: "About an hour", "3 days".
func humanDuration(d time.Duration) string {
	switch s := int(d.Seconds()); {
	case s < 1:
		return "Less than a second"
	case s == 1:
		return "1 second"
	case s < 60:
		return fmt.Sprintf("%d seconds", s)
	}
	switch m := int(d.Minutes()); {
	case m == 1:
		return "About a minute"
	case m < 60:
		return fmt.Sprintf("%d minutes", m)
	}
	switch h := int(d.Hours() + 0.5); {
	case h == 1:
		return "About an hour"
	case h < 48:
		return fmt.Sprintf("%d hours", h)
	case h < 24*7*2:
		return fmt.Sprintf("%d days", h/24)
	case h < 24*30*2:
		return fmt.Sprintf("%d weeks", h/24/7)
	case h < 24*365*2:
		return fmt.Sprintf("%d months", h/24/30)
	default:
		return fmt.Sprintf("%d years", int(d.Hours())/24/365)
	}
}
