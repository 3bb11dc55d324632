#!/bin/sh
# Builds ambit's images: the builder (every binary once, static) and one image per binary.
#
#   images/build.sh [BINARY...]        # default: every binary with a crate in this checkout
#
# Environment: ENGINE (podman, docker or buildah; the first found), REGISTRY (ghcr.io/ambit),
# TAG (dev), PLATFORM (e.g. linux/arm64; default: the engine's). Images are tagged
# $REGISTRY/<binary>:$TAG, as charts/ambit expects (image.registry, image.tag).
set -eu
cd "$(dirname "$0")/.."

REGISTRY=${REGISTRY:-ghcr.io/ambit}
TAG=${TAG:-dev}
ENGINE=${ENGINE:-$(command -v podman || command -v docker || command -v buildah || true)}
[ -n "$ENGINE" ] || { echo "no podman, docker or buildah found (set ENGINE)" >&2; exit 1; }

# binary -> crate directory
crate_of() {
  case "$1" in
    ambit-controller) echo crates/controller ;;
    ambit-tunnel) echo crates/tunnel ;;
    ambit-capture) echo crates/capture ;;
    ambit-waypoint) echo crates/waypoint ;;
    *) echo "unknown binary $1 (images/<binary>/Containerfile)" >&2; return 1 ;;
  esac
}

if [ $# -eq 0 ]; then
  for b in ambit-controller ambit-tunnel ambit-capture ambit-waypoint; do
    if [ -d "$(crate_of "$b")" ]; then set -- "$@" "$b"; else echo "skipping $b: no $(crate_of "$b") yet" >&2; fi
  done
fi
for b in "$@"; do crate_of "$b" >/dev/null; done

build() {
  # podman, docker and buildah share these flags; buildah's subcommand is `build` too.
  # shellcheck disable=SC2086
  "$ENGINE" build ${PLATFORM:+--platform "$PLATFORM"} "$@"
}

builder="localhost/ambit-builder:$TAG"
ignore=images/builder/Containerfile.dockerignore
case "$(basename "$ENGINE")" in
  docker) ignore_flag="" ;;   # BuildKit reads <Containerfile>.dockerignore by itself
  *) ignore_flag="--ignorefile $ignore" ;;
esac
echo "==> $builder ($*)"
# shellcheck disable=SC2086
build -f images/builder/Containerfile $ignore_flag --build-arg "BINARIES=$*" -t "$builder" .
for b in "$@"; do
  echo "==> $REGISTRY/$b:$TAG"
  build -f "images/$b/Containerfile" --build-arg "BUILDER=$builder" -t "$REGISTRY/$b:$TAG" "images/$b"
done
echo "built: $(for b in "$@"; do printf '%s ' "$REGISTRY/$b:$TAG"; done)"
echo "push them (podman push / docker push), then: helm install ambit charts/ambit -n ambit-system --create-namespace --set image.registry=$REGISTRY --set image.tag=$TAG"
