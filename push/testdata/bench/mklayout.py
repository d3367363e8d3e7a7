#!/usr/bin/env python3
"""mklayout.py TAR DIR: an OCI layout DIR holding one image (ref name "go") whose only layer is TAR,
uncompressed; the source for comparing kura copy with skopeo copy."""
import hashlib, json, os, shutil, sys

src, d = sys.argv[1], sys.argv[2]
shutil.rmtree(d, ignore_errors=True)
os.makedirs(d + '/blobs/sha256')
h = hashlib.sha256()
with open(src, 'rb') as f:
    for b in iter(lambda: f.read(1 << 20), b''):
        h.update(b)
dg, size = h.hexdigest(), os.path.getsize(src)
shutil.copy(src, d + '/blobs/sha256/' + dg)

def put(b):
    x = hashlib.sha256(b).hexdigest()
    open(d + '/blobs/sha256/' + x, 'wb').write(b)
    return x

cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": ["sha256:" + dg]}}).encode()
cd = put(cfg)
m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + cd, "size": len(cfg)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + dg, "size": size}]}).encode()
md = put(m)
open(d + '/oci-layout', 'w').write('{"imageLayoutVersion":"1.0.0"}')
open(d + '/index.json', 'w').write(json.dumps({"schemaVersion": 2, "manifests": [{
    "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + md, "size": len(m),
    "annotations": {"org.opencontainers.image.ref.name": "go"}}]}))
