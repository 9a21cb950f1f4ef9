#!/usr/bin/env bash
# Build the two test images as one-layer OCI archives, with no registry:
#   busybox.tar  rce-guard.test/busybox:1  (busybox-static with every applet linked)
#   pause.tar    rce-guard.test/pause:1    (a static pause binary, see pause.c)
# Usage: build-images.sh OUT_DIR      (needs busybox-static and gcc, see setup.sh)
set -euo pipefail
OUT=${1:?usage: build-images.sh OUT_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# make_image NAME REF ROOTFS_DIR ENTRYPOINT_JSON
make_image() {
  local name=$1 ref=$2 rootfs=$3 entry=$4
  local work; work=$(mktemp -d)
  mkdir -p "$work/blobs/sha256"
  tar --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .
  local layer; layer=$(sha "$work/layer.tar")
  mv "$work/layer.tar" "$work/blobs/sha256/$layer"
  cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin:/sbin:/usr/bin:/usr/sbin"],"Entrypoint":$entry,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$layer"]}}
JSON
  local cfg; cfg=$(sha "$work/config.json")
  local cfg_size; cfg_size=$(size "$work/config.json")
  mv "$work/config.json" "$work/blobs/sha256/$cfg"
  cat > "$work/manifest.oci.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$cfg","size":$cfg_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer","size":$(size "$work/blobs/sha256/$layer")}]}
JSON
  local man; man=$(sha "$work/manifest.oci.json")
  local man_size; man_size=$(size "$work/manifest.oci.json")
  mv "$work/manifest.oci.json" "$work/blobs/sha256/$man"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$work/oci-layout"
  cat > "$work/index.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$man","size":$man_size,"annotations":{"io.containerd.image.name":"$ref","org.opencontainers.image.ref.name":"${ref##*:}"},"platform":{"architecture":"amd64","os":"linux"}}]}
JSON
  cat > "$work/manifest.json" <<JSON
[{"Config":"blobs/sha256/$cfg","RepoTags":["$ref"],"Layers":["blobs/sha256/$layer"]}]
JSON
  tar --numeric-owner --owner=0 --group=0 -C "$work" -cf "$OUT/$name.tar.tmp" oci-layout index.json manifest.json blobs
  mv "$OUT/$name.tar.tmp" "$OUT/$name.tar"
  rm -rf "$work"
  echo "$OUT/$name.tar ($ref, manifest sha256:$man)" >&2
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# busybox: every applet as a symlink in /bin, plus the few files a shell expects.
bb=$tmp/busybox
mkdir -p "$bb/bin" "$bb/etc" "$bb/tmp" "$bb/proc" "$bb/sys" "$bb/dev" "$bb/root"
cp /bin/busybox "$bb/bin/busybox"
for applet in $("$bb/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$bb/bin/$applet"
done
ln -s bin "$bb/sbin"
mkdir -p "$bb/usr" && ln -s ../bin "$bb/usr/bin"
echo 'root:x:0:0:root:/root:/bin/sh' > "$bb/etc/passwd"
echo 'root:x:0:' > "$bb/etc/group"
chmod 1777 "$bb/tmp"
make_image busybox rce-guard.test/busybox:1 "$bb" '["/bin/sh"]'

# pause
pa=$tmp/pause
mkdir -p "$pa"
gcc -static -Os -o "$pa/pause" "$HERE/pause.c"
make_image pause rce-guard.test/pause:1 "$pa" '["/pause"]'
