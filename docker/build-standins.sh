#!/usr/bin/env bash
# Build stand-ins for the official images docker-compose.yaml uses, for machines that reach no image
# registry: a Debian bookworm base from debootstrap, then Airflow (Debian's Python 3.11 + this project's
# pinned wheels, built on this host), Postgres 15 and Redis 7 from Debian packages.
#
#   docker/build-standins.sh > standins.env      # then: docker compose --env-file standins.env up --build
#
# Prints the image variables to point docker-compose.yaml at them (AIRFLOW_IMAGE_NAME=..., ...). Each image
# is tagged with a hash of what it is built from and is not rebuilt while that tag exists. Needs root
# (debootstrap), a running Docker engine, the Debian mirror, and Python 3.11 with pip (PYTHON, default
# python3) able to download or build the wheels of requirements.txt under constraints.txt.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
here="$root/docker"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
python="${PYTHON:-python3}"
repo="${STANDIN_REPOSITORY:-openai-batch-standin}"
work="$(mktemp -d "${TMPDIR:-/tmp}/openai-batch-standins.XXXXXX")"
trap 'rm -rf "$work"' EXIT

log() { echo "build-standins: $*" >&2; }
have() { docker image inspect "$1" >/dev/null 2>&1; }

base="$repo/debian:bookworm-$(echo "debootstrap minbase bookworm $mirror v1" | sha256sum | cut -c1-12)"
if have "$base"; then
  log "reusing $base"
else
  log "debootstrap bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >&2
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
  tar -C "$work/rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' - "$base" >&2
  rm -rf "$work/rootfs"
fi

# A tag from the content of the files an image is built from, and from the base it is built on.
tag_of() {  # tag_of <name> <file>...
  local name="$1"
  shift
  echo "$repo/$name:$( (sha256sum "$@" | sed 's/ .*\// /'; echo "$base") | sha256sum | cut -c1-12)"
}

build() {  # build <tag> <context>
  log "building $1"
  docker build --quiet --force-rm --build-arg "BASE_IMAGE=$base" --tag "$1" "$2" >&2
}

airflow="$(tag_of airflow "$here/airflow/Dockerfile" "$here/airflow/entrypoint" \
  "$root/requirements.txt" "$root/constraints.txt")"
if have "$airflow"; then
  log "reusing $airflow"
else
  "$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' || {
    log "PYTHON must be Python 3.11, as the image's Debian python3 is: the wheels are built for it"
    exit 1
  }
  mkdir -p "$work/airflow"
  cp "$here/airflow/Dockerfile" "$here/airflow/entrypoint" "$root/requirements.txt" \
    "$root/constraints.txt" "$work/airflow/"
  log "collecting wheels for requirements.txt under constraints.txt"
  wheels="$work/airflow/wheels"
  "$python" -m pip wheel --quiet --disable-pip-version-check \
    -r "$root/requirements.txt" -c "$root/constraints.txt" -w "$wheels" >&2
  # Debian's python3 is 3.11.2. pip evaluates markers for the interpreter it runs on, so what the tree
  # needs only below 3.11.3 is named here (redis: async-timeout; python_full_version < "3.11.3"). The
  # pins are kept exactly: the few wheels that declare a later 3.11 patch release (soupsieve: >=3.11.5)
  # are installed regardless (--ignore-requires-python in the Dockerfile).
  "$python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
    -c "$root/constraints.txt" -d "$wheels" "async-timeout>=4.0.3" >&2
  build "$airflow" "$work/airflow"
fi
echo "AIRFLOW_IMAGE_NAME=$airflow"

for name in postgres redis; do
  image="$(tag_of "$name" "$here/$name"/*)"
  if have "$image"; then
    log "reusing $image"
  else
    build "$image" "$here/$name"
  fi
  echo "${name^^}_IMAGE_NAME=$image"
done
