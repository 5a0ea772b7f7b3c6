#!/usr/bin/env bash
# Builds flowmill's container images with buildah (no Docker engine, no registry) and writes
# them as archives that a node's containerd imports (`ctr -n k8s.io images import`).
#
#   scripts/image.sh [all]    every image below, archives in $FLOWMILL_CACHE/images, images.env
#   scripts/image.sh base     the local base: debootstrap bookworm + its python3.11
#   scripts/image.sh build    the flowmill image from the project's Dockerfile, on that base
#   scripts/image.sh pause    the pod sandbox image: a static C program
#   scripts/image.sh trip-fraud  the trip-fraud agent's image: FROM the flowmill image, with the
#                             agent's package installed (k8s/examples/faust/Dockerfile)
#   scripts/image.sh names    the image names and archives, as NAME=value lines
#
# Each image is stamped with its inputs and skipped when they did not change. The flowmill
# image's stamp hashes the build context (the files the Dockerfile copies), the Dockerfile and
# the base, so a clean clone always tests the code it has. Extra CA certificates (a proxy that
# intercepts TLS) reach pip as a build secret: $FLOWMILL_EXTRA_CA, or the host's
# /usr/local/share/ca-certificates/*.crt.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SAY_AS=image
. "$ROOT/scripts/provision/lib.sh"
IMAGES=$CACHE/images

# The image names: this is their one definition; images.env carries them to the node harness.
FLOWMILL_IMAGE=localhost/flowmill:dev
PAUSE_IMAGE=localhost/flowmill-pause:3.10
BASE_IMAGE=localhost/flowmill-base:bookworm
# A user's image built FROM the flowmill image (docs/faust.md); only its node test imports it.
TRIP_FRAUD_IMAGE=localhost/flowmill-trip-fraud:dev
TRIP_FRAUD_CONTEXT=k8s/examples/faust

BASE_SUITE=bookworm # its python3 is 3.11, the version flowmill targets
BASE_PACKAGES=python3,python3-pip,python3-venv,ca-certificates

# buildah's settings and storage live in the cache, selected by these variables, so the
# host's /etc/containers is never touched. cgroupfs and file events: there is no systemd;
# the ulimits: the default asks for more open files than the hard limit here allows.
CONTAINERS_DIR=$CACHE/containers
export CONTAINERS_CONF=$CONTAINERS_DIR/containers.conf
export CONTAINERS_STORAGE_CONF=$CONTAINERS_DIR/storage.conf

write_buildah_config() {
  mkdir -p "$CONTAINERS_DIR" "$IMAGES"
  cat > "$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  cat > "$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "overlay"
graphroot = "$CONTAINERS_DIR/storage"
runroot = "/run/flowmill/containers"
EOF
}

have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }
image_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1"; }

write_archive() {  # write_archive IMAGE FILE: a docker-archive tar that keeps the image's name
  rm -f "$2.tmp"
  buildah push -q "$1" "docker-archive:$2.tmp:$1" >/dev/null
  mv "$2.tmp" "$2"
}

debian_mirror() {  # the mirror the host's apt uses for BASE_SUITE (both sources formats)
  local mirror
  mirror=$({
    sed -E 's/\[[^]]*\] *//' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk -v suite="$BASE_SUITE" '$1 == "deb" && $3 == suite { print $2 }'
    awk -v suite="$BASE_SUITE" 'BEGIN { RS = "" } {
        uri = ""; found = 0; n = split($0, lines, "\n")
        for (i = 1; i <= n; i++) {
          if (lines[i] ~ /^URIs:/) { split(lines[i], u, " "); uri = u[2] }
          if (lines[i] ~ /^Suites:/) { m = split(lines[i], s, " "); for (j = 2; j <= m; j++) if (s[j] == suite) found = 1 }
        }
        if (found && uri != "") print uri
      }' /etc/apt/sources.list.d/*.sources 2>/dev/null
  } | head -n 1) || true
  printf '%s' "${mirror:-http://deb.debian.org/debian}"
}

build_base() {
  local mirror want rootfs ctr
  mirror=$(debian_mirror)
  want="$BASE_SUITE $BASE_PACKAGES $mirror"
  local tarball=$IMAGES/base-rootfs.tar
  if have_stamp images/base "$want" && [ -s "$tarball" ] && have_image "$BASE_IMAGE"; then
    say "$BASE_IMAGE: present"
    return
  fi
  # The rootfs tarball is the slow part (a minute or two); it outlives the image storage.
  if ! have_stamp images/base-rootfs "$want" || [ ! -s "$tarball" ]; then
    say "$BASE_IMAGE: debootstrap $BASE_SUITE from $mirror"
    rootfs=$(mktemp -d "$IMAGES/rootfs.XXXXXX")
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$BASE_SUITE" "$rootfs" "$mirror" >"$IMAGES/debootstrap.log" 2>&1 \
      || { say "debootstrap failed; see $IMAGES/debootstrap.log"; rm -rf "$rootfs"; exit 1; }
    # The host's files that debootstrap copies in do not belong in an image.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname
    tar -C "$rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
    put_stamp images/base-rootfs "$want"
  fi
  say "$BASE_IMAGE: committing the rootfs"
  ctr=$(buildah from scratch)
  buildah add -q "$ctr" "$tarball" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/bash \
    --label org.opencontainers.image.title=flowmill-base \
    --label "org.opencontainers.image.description=Debian $BASE_SUITE minbase with $BASE_PACKAGES" "$ctr"
  buildah commit -q --rm "$ctr" "$BASE_IMAGE" >/dev/null
  put_stamp images/base "$want"
}

context_hash() {  # the files the Dockerfile copies (tracked or new, as in the work tree) and the base
  local sources
  sources=$(awk '$1 == "COPY" && $2 !~ /^--/ { for (i = 2; i < NF; i++) print $i }' "$ROOT/Dockerfile")
  {
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- Dockerfile .dockerignore $sources \
      | xargs -0 -r sh -c 'for f; do [ -f "$f" ] && sha256sum "$f"; done; true' _)
    image_id "$BASE_IMAGE"
  } | sha256sum | cut -c1-16
}

extra_ca() {  # prints a PEM bundle of the extra CA certificates, or nothing when there are none
  local bundle=$IMAGES/extra-ca.pem
  if [ -n "${FLOWMILL_EXTRA_CA:-}" ]; then
    printf '%s' "$FLOWMILL_EXTRA_CA"
  elif compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cat /usr/local/share/ca-certificates/*.crt > "$bundle"
    printf '%s' "$bundle"
  fi
}

build_flowmill() {
  build_base
  local want archive=$IMAGES/flowmill.tar ca version
  want=$(context_hash)
  if have_stamp images/flowmill "$want" && [ -s "$archive" ] && have_image "$FLOWMILL_IMAGE"; then
    say "$FLOWMILL_IMAGE: present"
    return
  fi
  say "$FLOWMILL_IMAGE: building the Dockerfile on $BASE_IMAGE"
  local secret=()
  ca=$(extra_ca)
  [ -n "$ca" ] && secret=(--secret "id=ca,src=$ca")
  version=$(python3 -c 'import tomllib, sys; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")
  buildah bud -q --layers --network host -f "$ROOT/Dockerfile" "${secret[@]}" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VERSION=$version" \
    -t "$FLOWMILL_IMAGE" "$ROOT" >/dev/null
  write_archive "$FLOWMILL_IMAGE" "$archive"
  put_stamp images/flowmill "$want"
}

build_trip_fraud() {
  build_flowmill
  local want archive=$IMAGES/trip-fraud.tar ca
  want=$( (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- "$TRIP_FRAUD_CONTEXT" \
      | xargs -0 -r sh -c 'for f; do [ -f "$f" ] && sha256sum "$f"; done; true' _
    image_id "$FLOWMILL_IMAGE") | sha256sum | cut -c1-16)
  if have_stamp images/trip-fraud "$want" && [ -s "$archive" ] && have_image "$TRIP_FRAUD_IMAGE"; then
    say "$TRIP_FRAUD_IMAGE: present"
    return
  fi
  say "$TRIP_FRAUD_IMAGE: building $TRIP_FRAUD_CONTEXT/Dockerfile FROM $FLOWMILL_IMAGE"
  local secret=()
  ca=$(extra_ca)
  [ -n "$ca" ] && secret=(--secret "id=ca,src=$ca")
  # As a user builds it (docs/faust.md), with the locally built flowmill image as its FROM.
  buildah bud -q --layers --network host "${secret[@]}" \
    --build-arg "FLOWMILL_IMAGE=$FLOWMILL_IMAGE" \
    -t "$TRIP_FRAUD_IMAGE" "$ROOT/$TRIP_FRAUD_CONTEXT" >/dev/null
  write_archive "$TRIP_FRAUD_IMAGE" "$archive"
  put_stamp images/trip-fraud "$want"
}

build_pause() {
  local source=$ROOT/scripts/provision/pause/pause.c archive=$IMAGES/pause.tar want tmp ctr
  want=$( (cat "$source"; gcc --version | head -n 1) | sha256sum | cut -c1-16)
  if have_stamp images/pause "$want" && [ -s "$archive" ] && have_image "$PAUSE_IMAGE"; then
    say "$PAUSE_IMAGE: present"
    return
  fi
  say "$PAUSE_IMAGE: compiling pause.c"
  tmp=$(mktemp -d)
  gcc -static -O2 -s -Wall -Wextra -Werror -o "$tmp/pause" "$source"
  ctr=$(buildah from scratch)
  buildah copy -q "$ctr" "$tmp/pause" /pause >/dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 \
    --label org.opencontainers.image.title=flowmill-pause "$ctr"
  buildah commit -q --rm "$ctr" "$PAUSE_IMAGE" >/dev/null
  rm -rf "$tmp"
  write_archive "$PAUSE_IMAGE" "$archive"
  put_stamp images/pause "$want"
}

names() {
  cat <<EOF
FLOWMILL_IMAGE=$FLOWMILL_IMAGE
FLOWMILL_IMAGE_ARCHIVE=$IMAGES/flowmill.tar
PAUSE_IMAGE=$PAUSE_IMAGE
PAUSE_IMAGE_ARCHIVE=$IMAGES/pause.tar
TRIP_FRAUD_IMAGE=$TRIP_FRAUD_IMAGE
TRIP_FRAUD_IMAGE_ARCHIVE=$IMAGES/trip-fraud.tar
EOF
}

write_buildah_config
case "${1:-all}" in
  base) build_base ;;
  build) build_flowmill ;;
  pause) build_pause ;;
  trip-fraud) build_trip_fraud ;;
  names) names; exit 0 ;;
  all) build_pause; build_flowmill; build_trip_fraud ;;
  *) echo "usage: $0 [all|base|build|pause|trip-fraud|names]" >&2; exit 2 ;;
esac
names > "$IMAGES/images.env"
