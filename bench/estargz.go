package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// estargzRepo holds the bench versions converted to eStargz, for
// stargz-snapshotter (-ctd-setups with stargz).
const estargzRepo = "bench/estargz"

// benchAgent is the User-Agent of the harness's own registry requests
// (warming, conversion), so that they are not taken for stargz-snapshotter's,
// which come as Go's default Go-http-client.
const benchAgent = "kura-bench"

// EstargzPush is one version converted and pushed.
type EstargzPush struct {
	Version      string        `json:"version"`
	Layer        digest.Digest `json:"layer"`
	Size         int64         `json:"size"`
	DiffID       digest.Digest `json:"diffID"`
	TOCDigest    digest.Digest `json:"tocDigest"`
	Uncompressed int64         `json:"uncompressed"`
}

// ensureEstargz converts every version of kura's pushes (bench/kura:cN,
// zstd:chunked) to eStargz as `ctr-remote image convert --estargz` does
// (the estargz package's Build, gzip at its default level 9, no
// prioritized files: no optimisation run) and pushes it as
// bench/estargz:cN, config rewritten with the new DiffID, layer annotated
// with its TOC digest and uncompressed size. Done once per registry root
// (pushed-estargz.json), each version once.
func ensureEstargz(ctx context.Context, regRoot, regAddr, tmp string, versions []string) error {
	stamp := filepath.Join(regRoot, "pushed-estargz.json")
	var done []EstargzPush
	if b, err := os.ReadFile(stamp); err == nil {
		if err := json.Unmarshal(b, &done); err != nil {
			return fmt.Errorf("%s: %w", stamp, err)
		}
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, v := range versions {
		if slices.ContainsFunc(done, func(p EstargzPush) bool { return p.Version == v }) {
			continue
		}
		p, err := convertEstargz(ctx, regAddr, tmp, v)
		if err != nil {
			return fmt.Errorf("eStargz of %s: %w", v, err)
		}
		log.Printf("eStargz %s: %s, %.1f MB (tar %.1f MB), TOC %s", v, p.Layer, mb(p.Size), mb(p.Uncompressed), p.TOCDigest)
		done = append(done, p)
		b, err := json.MarshalIndent(done, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(stamp, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// convertEstargz converts and pushes one version.
func convertEstargz(ctx context.Context, regAddr, tmp, v string) (EstargzPush, error) {
	p := EstargzPush{Version: v}
	var m ocispec.Manifest
	if err := regJSON(ctx, regAddr, kuraRepo, "/manifests/"+v, &m); err != nil {
		return p, err
	}
	if len(m.Layers) != 1 {
		return p, fmt.Errorf("%d layers, the bench images have one", len(m.Layers))
	}
	var img ocispec.Image
	if err := regJSON(ctx, regAddr, kuraRepo, "/blobs/"+m.Config.Digest.String(), &img); err != nil {
		return p, err
	}
	tarPath := filepath.Join(tmp, v+".tar")
	if err := fetchTar(ctx, regAddr, m.Layers[0].Digest, tarPath); err != nil {
		return p, err
	}
	defer os.Remove(tarPath)
	blobPath := filepath.Join(tmp, v+".esgz")
	if err := buildEstargz(tarPath, blobPath, &p); err != nil {
		return p, err
	}
	defer os.Remove(blobPath)
	if err := pushBlobFile(ctx, regAddr, estargzRepo, blobPath, p.Layer); err != nil {
		return p, err
	}
	img.RootFS.DiffIDs = []digest.Digest{p.DiffID}
	return p, pushEstargzManifest(ctx, regAddr, v, img, p)
}

// fetchTar writes the zstd layer's tar stream to path.
func fetchTar(ctx context.Context, regAddr string, layer digest.Digest, path string) error {
	resp, err := regGet(ctx, regAddr, kuraRepo, "/blobs/"+layer.String(), "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	zr, err := zstd.NewReader(resp.Body)
	if err != nil {
		return err
	}
	defer zr.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, zr); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// buildEstargz runs estargz.Build over the tar and writes the blob to out.
func buildEstargz(tarPath, out string, p *EstargzPush) error {
	f, err := os.Open(tarPath)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	blob, err := estargz.Build(io.NewSectionReader(f, 0, st.Size()))
	if err != nil {
		return err
	}
	defer blob.Close()
	o, err := os.Create(out)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(o, h), blob)
	if cerr := o.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	p.Layer, p.Size = digest.NewDigest(digest.SHA256, h), n
	p.DiffID, p.TOCDigest = blob.DiffID(), blob.TOCDigest()
	p.Uncompressed, err = blob.UncompressedSize()
	return err
}

// pushEstargzManifest pushes the config and the manifest of one version.
func pushEstargzManifest(ctx context.Context, regAddr, v string, img ocispec.Image, p EstargzPush) error {
	cb, err := json.Marshal(img)
	if err != nil {
		return err
	}
	cd := digest.FromBytes(cb)
	if err := pushBlobBytes(ctx, regAddr, estargzRepo, cb, cd); err != nil {
		return err
	}
	m := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: cd, Size: int64(len(cb))},
		Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: p.Layer, Size: p.Size,
			Annotations: map[string]string{
				estargz.TOCJSONDigestAnnotation:         p.TOCDigest.String(),
				estargz.StoreUncompressedSizeAnnotation: strconv.FormatInt(p.Uncompressed, 10),
			}}},
	}
	m.SchemaVersion = 2
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	_, err = regSend(ctx, http.MethodPut, "http://"+regAddr+"/v2/"+estargzRepo+"/manifests/"+v, ocispec.MediaTypeImageManifest, bytes.NewReader(body), int64(len(body)))
	return err
}

// regGet GETs /v2/REPO+path and fails on anything but 200.
func regGet(ctx context.Context, regAddr, repo, path, accept string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+regAddr+"/v2/"+repo+path, nil)
	if err != nil {
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	req.Header.Set("User-Agent", benchAgent)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return resp, nil
}

func regJSON(ctx context.Context, regAddr, repo, path string, v any) error {
	resp, err := regGet(ctx, regAddr, repo, path, ocispec.MediaTypeImageManifest)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(v)
}

// pushBlobFile uploads a blob monolithically (POST, then PUT ?digest=).
func pushBlobFile(ctx context.Context, regAddr, repo, path string, d digest.Digest) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	return pushBlobTo(ctx, regAddr, repo, f, st.Size(), d)
}

func pushBlobBytes(ctx context.Context, regAddr, repo string, b []byte, d digest.Digest) error {
	return pushBlobTo(ctx, regAddr, repo, bytes.NewReader(b), int64(len(b)), d)
}

func pushBlobTo(ctx context.Context, regAddr, repo string, r io.Reader, size int64, d digest.Digest) error {
	resp, err := regSend(ctx, http.MethodPost, "http://"+regAddr+"/v2/"+repo+"/blobs/uploads/", "", nil, 0)
	if err != nil {
		return err
	}
	loc := resp.Header.Get("Location")
	if !strings.HasPrefix(loc, "http") {
		loc = "http://" + regAddr + loc
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	_, err = regSend(ctx, http.MethodPut, loc+sep+"digest="+d.String(), "application/octet-stream", r, size)
	return err
}

// regSend makes one request and fails unless the registry answers 2xx.
func regSend(ctx context.Context, method, u, ctype string, body io.Reader, size int64) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	req.ContentLength = size
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set("User-Agent", benchAgent)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, b)
	}
	return resp, nil
}
