package main

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"text/template"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
)

// inspectOptions are kura inspect's flags, as skopeo inspect has them.
type inspectOptions struct {
	raw, config bool
	format      string
	rf          registryFlags
}

func init() {
	var o inspectOptions
	cmd := &cobra.Command{
		Use:   "inspect docker://HOST/REPO[:TAG|@DIGEST] | oci:DIR[:TAG] | NAME|ID",
		Short: "Show an image's manifest, config or a summary, from a registry, an OCI layout or the store",
		Long: `Show an image as skopeo inspect does: by default a JSON summary (docs/json.md: name, digest,
repoTags, created, architecture, os, layers, layersData, env, labels); --raw prints the manifest
bytes exactly as stored or served, --config the config blob's bytes; --format a Go template over
the summary with skopeo's field names ({{.Name}} {{.Digest}} {{.RepoTags}} {{.Created}}
{{.Architecture}} {{.Os}} {{.Layers}} {{.LayersData}} {{.Env}} {{.Labels}}).

docker:// and oci: references are read from the registry or the layout (the manifest chosen for
--platform from an index; repoTags is left empty, as listing a repository's tags costs a request
per page); anything else names an image in the store, whose repoTags are its names.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runInspect(cmd, args[0], &o) },
	}
	o.rf.register(cmd)
	cmd.Flags().BoolVar(&o.raw, "raw", false, "print the manifest bytes exactly")
	cmd.Flags().BoolVar(&o.config, "config", false, "print the config blob's bytes exactly")
	cmd.Flags().StringVarP(&o.format, "format", "f", "", "Go template over the summary")
	rootCmd.AddCommand(cmd)
}

// inspectJSON is kura inspect's summary. The JSON names follow Kura's style (camelCase), the Go
// names skopeo's, so that --format templates written for skopeo work.
type inspectJSON struct {
	Name         string            `json:"name"`
	Digest       digest.Digest     `json:"digest"`
	RepoTags     []string          `json:"repoTags"`
	Created      string            `json:"created"` // RFC 3339; "" when the config has none
	Architecture string            `json:"architecture"`
	Os           string            `json:"os"`
	Layers       []digest.Digest   `json:"layers"`
	LayersData   []inspectLayer    `json:"layersData"`
	Env          []string          `json:"env"`
	Labels       map[string]string `json:"labels"`
}

type inspectLayer struct {
	MIMEType    string            `json:"mediaType"`
	Digest      digest.Digest     `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
}

// inspected is what every kind of source yields: the bytes, and the names to report.
type inspected struct {
	name             string
	repoTags         []string
	manifest, config []byte
}

func runInspect(cmd *cobra.Command, arg string, o *inspectOptions) error {
	if o.raw && o.config {
		return usageError{fmt.Errorf("--raw and --config: choose one")}
	}
	var tmpl *template.Template
	if o.format != "" {
		t, err := template.New("format").Parse(o.format + "\n")
		if err != nil {
			return usageError{fmt.Errorf("--format: %v", err)}
		}
		tmpl = t
	}
	in, err := inspectSource(cmd, arg, &o.rf)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	switch {
	case o.raw:
		_, err := out.Write(in.manifest)
		return err
	case o.config:
		_, err := out.Write(in.config)
		return err
	}
	sum, err := summarize(in)
	if err != nil {
		return err
	}
	if tmpl != nil {
		if err := tmpl.Execute(out, sum); err != nil {
			return usageError{fmt.Errorf("--format: %v", err)}
		}
		return nil
	}
	return printJSON(out, sum)
}

// inspectSource reads the manifest and config from a registry or a layout (docker://, oci:) or
// the store (anything else).
func inspectSource(cmd *cobra.Command, arg string, rf *registryFlags) (inspected, error) {
	ctx := cmd.Context()
	prefix, _, _ := strings.Cut(arg, ":")
	if strings.HasPrefix(arg, "docker://") || prefix == "oci" || otherTransport(prefix) {
		ref, err := imageref.Parse(arg)
		if err != nil {
			return inspected{}, refError(err)
		}
		client, err := rf.client()
		if err != nil {
			return inspected{}, err
		}
		src, err := openSource(ref, client)
		if err != nil {
			return inspected{}, err
		}
		img, err := src.Resolve(ctx)
		if err != nil {
			return inspected{}, err
		}
		name := img.Name
		if ref.Transport == imageref.Docker {
			name = ref.Repository().String() // as skopeo: the repository, without tag or digest
		}
		return inspected{name: name, repoTags: []string{}, manifest: img.ManifestBytes, config: img.ConfigBytes}, nil
	}
	s, err := openStore()
	if err != nil {
		return inspected{}, err
	}
	img, err := s.ResolveImage(ctx, arg)
	if err != nil {
		return inspected{}, err
	}
	refs, err := s.Refs(ctx)
	if err != nil {
		return inspected{}, err
	}
	in := inspected{name: arg, repoTags: []string{}}
	for n, id := range refs {
		if id == img.ID {
			in.repoTags = append(in.repoTags, n)
		}
	}
	sort.Strings(in.repoTags)
	if in.manifest, err = s.ImageManifest(ctx, img.ID); err != nil {
		return inspected{}, err
	}
	if in.config, err = s.ImageConfig(ctx, img.ID); err != nil {
		return inspected{}, err
	}
	return in, nil
}

// otherTransport names the transports of containers/image that Kura does not read: inspect
// refuses them as unsupported (exit 6) rather than looking for a store name. (A store name may
// hold a ':', NAME:TAG, so only a known transport prefix sends an argument outside the store.)
func otherTransport(prefix string) bool {
	switch prefix {
	case "docker-archive", "oci-archive", "dir", "containers-storage", "docker-daemon", "sif", "tarball":
		return true
	}
	return false
}

// summarize parses the manifest and config into the summary skopeo inspect prints.
func summarize(in inspected) (inspectJSON, error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(in.manifest, &m); err != nil {
		return inspectJSON{}, fmt.Errorf("manifest of %s: %v: %w", in.name, err, errdefs.ErrInvalid)
	}
	var c ocispec.Image
	if err := json.Unmarshal(in.config, &c); err != nil {
		return inspectJSON{}, fmt.Errorf("config of %s: %v: %w", in.name, err, errdefs.ErrInvalid)
	}
	sum := inspectJSON{Name: in.name, Digest: digest.FromBytes(in.manifest), RepoTags: orEmpty(in.repoTags),
		Architecture: c.Architecture, Os: c.OS, Layers: []digest.Digest{}, LayersData: []inspectLayer{},
		Env: orEmpty(c.Config.Env), Labels: c.Config.Labels}
	if c.Created != nil {
		sum.Created = c.Created.UTC().Format(time.RFC3339Nano)
	}
	if sum.Labels == nil {
		sum.Labels = map[string]string{}
	}
	for _, l := range m.Layers {
		ann := l.Annotations
		if ann == nil {
			ann = map[string]string{}
		}
		sum.Layers = append(sum.Layers, l.Digest)
		sum.LayersData = append(sum.LayersData, inspectLayer{MIMEType: l.MediaType, Digest: l.Digest, Size: l.Size, Annotations: ann})
	}
	return sum, nil
}
