#!/usr/bin/env bash
# skaffold's custom builder for machines without a Docker engine (profile `buildah` in
# skaffold.yaml): builds the project's Dockerfile with buildah through scripts/image.sh and
# pushes the result to the registry named in $IMAGE (skaffold sets it, e.g.
# localhost:5000/flowmill:<tag>), over plain HTTP when $FLOWMILL_INSECURE_REGISTRY is 1.
#
# scripts/image.sh keeps buildah's layer cache: the dependency layer depends on
# pyproject.toml alone, so after provisioning built the image once, a rebuild (sources
# changed) re-copies the sources and needs no package index; that is what lets it run
# inside the test node's network namespace, which reaches no registry.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${IMAGE:?skaffold sets IMAGE to the image to build}"

"$ROOT/scripts/image.sh" build >&2
# shellcheck disable=SC1091
. "${FLOWMILL_CACHE:-$HOME/.cache/flowmill}/images/images.env"

if [ "${PUSH_IMAGE:-true}" != true ]; then
  echo "skaffold-buildah: push: false needs a Docker engine to load into; set build.local.push" >&2
  exit 1
fi
tls=()
[ "${FLOWMILL_INSECURE_REGISTRY:-0}" = 1 ] && tls=(--dest-tls-verify=false)
# From the archive image.sh wrote: the same bytes the node imports, and no buildah storage
# settings to repeat here. zstd: layers compress several times faster than with gzip.
skopeo copy -q "${tls[@]}" --format oci --dest-compress-format zstd \
  "docker-archive:$FLOWMILL_IMAGE_ARCHIVE" "docker://$IMAGE" >&2
