#!/usr/bin/env bash
# Provides everything the ambit testbed runs on, pinned and cached under one directory:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (built from the Go
#   modules of one Kubernetes release), the nodes' kubelet endpoint (kubelet-streaming/, on the
#   kubelet's own streaming server code from the same release), helm (built from its Go module),
#   Istio's echo app (server and client, the app behind Gateway API's conformance suite: real
#   HTTP/1.1, h2c and gRPC peers for the end-to-end tests, and the suite's `echo-advanced`
#   image), Istio's ext_authz sample (the external authorization tests' server, and a pod on
#   the user's path), and from Debian: the standard CNI plugins, nftables, iproute2, tcpdump,
#   and the real clients and servers the tests and benchmarks drive (curl, nghttp2-client for
#   h2load, nginx with its stream module: the benchmark's baseline and, run as a pod, the
#   user's path's JWKS server over HTTPS).
#   `setup.sh conformance` also builds Gateway API's conformance suite as a test binary (not
#   part of `all`: `cargo xtask conformance` and `cargo xtask test` build it when they run it).
#
# Idempotent. A warm rerun checks a stamp per component and does no network work.
# Prints the pinned versions and, last, the path of the env file the testbed reads.
#
#   AMBIT_CACHE_DIR   cache root (default /var/cache/ambit); not under target/, so a fresh
#                     clone on the same machine is warm.
#   AMBIT_SETUP_JOBS  go build -p (default: number of cores)
set -euo pipefail

KUBERNETES_VERSION="v1.35.4"
ETCD_VERSION="v3.6.16"
HELM_VERSION="v3.19.5"
# Istio publishes no semver Go tags: its module is fetched by pseudo-version.
ISTIO_VERSION="v0.0.0-20260827124520-eed52ebb66ad"
GATEWAY_API_VERSION="v1.6.3"
DEBIAN_PACKAGES=(containernetworking-plugins nftables iproute2 tcpdump curl nghttp2-client nginx libnginx-mod-stream)

CACHE="${AMBIT_CACHE_DIR:-/var/cache/ambit}"
JOBS="${AMBIT_SETUP_JOBS:-$(nproc)}"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

export GOTOOLCHAIN=local
export GOMODCACHE="$CACHE/go/mod"
export GOCACHE="$CACHE/go/build"
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0

K8S_DIR="$CACHE/kubernetes-$KUBERNETES_VERSION"
ETCD_DIR="$CACHE/etcd-$ETCD_VERSION"
HELM_DIR="$CACHE/helm-$HELM_VERSION"
ISTIO_DIR="$CACHE/istio-echo-$ISTIO_VERSION"
CONFORMANCE_DIR="$CACHE/gateway-conformance-$GATEWAY_API_VERSION"
# kubelet-streaming is our source: cached by Kubernetes version and a hash of the source.
KUBELET_STREAMING_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kubelet-streaming"
KUBELET_STREAMING_HASH=$(cat "$KUBELET_STREAMING_SRC"/main.go "$KUBELET_STREAMING_SRC"/go.mod "$KUBELET_STREAMING_SRC"/go.sum | sha256sum | cut -c1-16)
KUBELET_STREAMING_DIR="$CACHE/kubelet-streaming-$KUBERNETES_VERSION-$KUBELET_STREAMING_HASH"
# Images are binaries on the testbed: a binary here named like an image's last path segment
# (`istio-echo-server`) is what that image runs. The testbed searches this directory last.
IMAGES_DIR="$CACHE/images"
ENV_FILE="$CACHE/testbed.env"

log() { printf '[ambit-setup] %s\n' "$*" >&2; }

mkdir -p "$CACHE"

debian_packages() {
    local missing=()
    for p in "${DEBIAN_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    if ((${#missing[@]})); then
        log "installing Debian packages: ${missing[*]}"
        if [[ $(id -u) != 0 ]]; then
            log "need root to apt-get install ${missing[*]}"
            exit 1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
}

# A throwaway module that builds the Kubernetes commands. k8s.io/kubernetes is importable only
# if every k8s.io staging module is pinned to the matching v0.<minor>.<patch> tag; the list of
# staging modules is read from the release's own go.mod, so a version bump needs no edits here.
build_kubernetes() {
    local stamp="$K8S_DIR/.complete"
    [[ -f $stamp ]] && return 0
    log "building Kubernetes $KUBERNETES_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl); this takes a while"
    local staging_version="v0.${KUBERNETES_VERSION#v1.}"
    local work="$CACHE/src/kubernetes-$KUBERNETES_VERSION"
    rm -rf "$work" && mkdir -p "$work" "$K8S_DIR"
    local gomod
    gomod=$(cd "$work" && "$GO" mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    {
        echo "module ambit.dev/testbed-build/kubernetes"
        echo
        echo "go 1.25"
        echo
        echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
        echo
        echo "replace ("
        grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/' "$gomod" |
            awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
        echo ")"
    } >"$work/go.mod"
    cat >"$work/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
    local minor="${KUBERNETES_VERSION#v1.}"
    minor="${minor%%.*}"
    local ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    (
        cd "$work"
        "$GO" mod tidy >&2
        "$GO" build -p "$JOBS" -trimpath -ldflags "$ldflags" -o "$K8S_DIR/" \
            k8s.io/kubernetes/cmd/kube-apiserver \
            k8s.io/kubernetes/cmd/kube-controller-manager \
            k8s.io/kubernetes/cmd/kube-scheduler \
            k8s.io/kubernetes/cmd/kubectl
    )
    touch "$stamp"
}

# etcd's server/go.mod has relative replace lines, so `go install pkg@version` refuses it;
# a throwaway module that requires it builds fine.
build_etcd() {
    local stamp="$ETCD_DIR/.complete"
    [[ -f $stamp ]] && return 0
    log "building etcd $ETCD_VERSION"
    local work="$CACHE/src/etcd-$ETCD_VERSION"
    rm -rf "$work" && mkdir -p "$work" "$ETCD_DIR"
    printf 'module ambit.dev/testbed-build/etcd\n\ngo 1.25\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$work/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >"$work/tools.go"
    (
        cd "$work"
        "$GO" mod tidy >&2
        "$GO" build -p "$JOBS" -trimpath -ldflags "-s -w" -o "$ETCD_DIR/etcd" go.etcd.io/etcd/server/v3
    )
    touch "$stamp"
}

build_helm() {
    local stamp="$HELM_DIR/.complete"
    [[ -f $stamp ]] && return 0
    log "building helm $HELM_VERSION"
    local work="$CACHE/src/helm-$HELM_VERSION"
    rm -rf "$work" && mkdir -p "$work" "$HELM_DIR"
    printf 'module ambit.dev/testbed-build/helm\n\ngo 1.25\n\nrequire helm.sh/helm/v3 %s\n' "$HELM_VERSION" >"$work/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport _ "helm.sh/helm/v3/cmd/helm"\n' >"$work/tools.go"
    (
        cd "$work"
        "$GO" mod tidy >&2
        "$GO" build -p "$JOBS" -trimpath \
            -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
            -o "$HELM_DIR/helm" helm.sh/helm/v3/cmd/helm
    )
    touch "$stamp"
}

# The nodes' kubelet endpoint: k8s.io/kubelet's streaming server (exec, port-forward) at the
# release's staging version, pinned by the go.sum next to its source.
build_kubelet_streaming() {
    local stamp="$KUBELET_STREAMING_DIR/.complete"
    [[ -f $stamp ]] && return 0
    log "building kubelet-streaming (k8s.io/kubelet streaming server, $KUBERNETES_VERSION)"
    mkdir -p "$KUBELET_STREAMING_DIR"
    (
        cd "$KUBELET_STREAMING_SRC"
        GOFLAGS=-mod=readonly "$GO" build -p "$JOBS" -trimpath -ldflags "-s -w" -o "$KUBELET_STREAMING_DIR/kubelet-streaming" .
    )
    touch "$stamp"
}

# The echo app of Istio's test framework, from a throwaway module (istio.io/istio's go.mod has no
# replace lines, but a module of its own keeps the build's dependencies pinned by its go.sum).
build_istio_echo() {
    local stamp="$ISTIO_DIR/.complete"
    if [[ ! -f $stamp ]]; then
        log "building Istio's echo app (server, client) at istio.io/istio $ISTIO_VERSION"
        local work="$CACHE/src/istio-echo-$ISTIO_VERSION"
        rm -rf "$work" && mkdir -p "$work" "$ISTIO_DIR"
        printf 'module ambit.dev/testbed-build/istio-echo\n\ngo 1.26\n\nrequire istio.io/istio %s\n' "$ISTIO_VERSION" >"$work/go.mod"
        printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "istio.io/istio/pkg/test/echo/cmd/client"\n\t_ "istio.io/istio/pkg/test/echo/cmd/server"\n)\n' >"$work/tools.go"
        (
            cd "$work"
            "$GO" mod tidy >&2
            "$GO" build -p "$JOBS" -trimpath -ldflags "-s -w" -o "$ISTIO_DIR/server" istio.io/istio/pkg/test/echo/cmd/server
            "$GO" build -p "$JOBS" -trimpath -ldflags "-s -w" -o "$ISTIO_DIR/client" istio.io/istio/pkg/test/echo/cmd/client
        )
        touch "$stamp"
    fi
    # The certificate the echo image carries (its Dockerfile.app copies them to /cert.crt and
    # /cert.key; the conformance suite's echo pods serve TLS with them).
    if [[ ! -f $ISTIO_DIR/cert.key ]]; then
        local moddir
        moddir=$(cd "$CACHE" && "$GO" mod download -json "istio.io/istio@$ISTIO_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
        cp "$moddir/tests/testdata/certs/dns/cert-chain.pem" "$ISTIO_DIR/cert.crt"
        cp "$moddir/tests/testdata/certs/dns/key.pem" "$ISTIO_DIR/cert.key"
    fi
    mkdir -p "$IMAGES_DIR"
    ln -sfn "$ISTIO_DIR/server" "$IMAGES_DIR/istio-echo-server"
    ln -sfn "$ISTIO_DIR/client" "$IMAGES_DIR/istio-echo-client"
    # Gateway API's `echo-advanced` image is this app: an image directory (see
    # crates/testbed/src/node/images.rs) with the server as entrypoint, both binaries on its
    # PATH (the suite runs `kubectl exec … -- client …`) and the certificate at its paths.
    local image="$IMAGES_DIR/echo-advanced"
    mkdir -p "$image/bin" "$image/root"
    ln -sfn "$ISTIO_DIR/server" "$image/entrypoint"
    ln -sfn "$ISTIO_DIR/server" "$image/bin/server"
    ln -sfn "$ISTIO_DIR/client" "$image/bin/client"
    ln -sfn "$ISTIO_DIR/cert.crt" "$image/root/cert.crt"
    ln -sfn "$ISTIO_DIR/cert.key" "$image/root/cert.key"
}

# Istio's ext_authz sample (an Envoy ext_authz v3 server, gRPC and HTTP), the real peer of the
# waypoint's external authorization tests (crates/waypoint/tests/extauthz.rs), from the same
# pinned istio.io/istio as the echo app; on the image path as `istio-extauthz`.
build_istio_extauthz() {
    local dir="$CACHE/istio-extauthz-$ISTIO_VERSION"
    local stamp="$dir/.complete"
    if [[ ! -f $stamp ]]; then
        log "building Istio's ext_authz sample at istio.io/istio $ISTIO_VERSION"
        local work="$CACHE/src/istio-extauthz-$ISTIO_VERSION"
        rm -rf "$work" && mkdir -p "$work" "$dir"
        printf 'module ambit.dev/testbed-build/istio-extauthz\n\ngo 1.26\n\nrequire istio.io/istio %s\n' "$ISTIO_VERSION" >"$work/go.mod"
        printf '//go:build tools\n\npackage tools\n\nimport _ "istio.io/istio/samples/extauthz/cmd/extauthz"\n' >"$work/tools.go"
        (
            cd "$work"
            "$GO" mod tidy >&2
            "$GO" build -p "$JOBS" -trimpath -ldflags "-s -w" -o "$dir/extauthz" istio.io/istio/samples/extauthz/cmd/extauthz
        )
        touch "$stamp"
    fi
    mkdir -p "$IMAGES_DIR"
    ln -sfn "$dir/extauthz" "$IMAGES_DIR/istio-extauthz"
}

# Gateway API's conformance suite as a test binary, run unmodified by `cargo xtask conformance`.
# Its go.mod replaces sigs.k8s.io/gateway-api with a local parent, so a throwaway module pins it.
build_conformance() {
    local stamp="$CONFORMANCE_DIR/.complete"
    [[ -f $stamp ]] && return 0
    log "building Gateway API's conformance suite $GATEWAY_API_VERSION (go test -c)"
    local work="$CACHE/src/gateway-conformance-$GATEWAY_API_VERSION"
    rm -rf "$work" && mkdir -p "$work" "$CONFORMANCE_DIR"
    {
        echo "module ambit.dev/testbed-build/gateway-conformance"
        echo
        echo "go 1.26"
        echo
        echo "require sigs.k8s.io/gateway-api/conformance $GATEWAY_API_VERSION"
        echo
        echo "replace sigs.k8s.io/gateway-api => sigs.k8s.io/gateway-api $GATEWAY_API_VERSION"
    } >"$work/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport _ "sigs.k8s.io/gateway-api/conformance"\n' >"$work/tools.go"
    (
        cd "$work"
        "$GO" mod tidy >&2
        # -t: the suite's own test dependencies (testify), which tidy leaves out for a dependency.
        "$GO" get -t "sigs.k8s.io/gateway-api/conformance@$GATEWAY_API_VERSION" >&2
        "$GO" test -c -p "$JOBS" -trimpath -ldflags "-s -w" -o "$CONFORMANCE_DIR/conformance.test" sigs.k8s.io/gateway-api/conformance
    )
    touch "$stamp"
}

write_env() {
    local cni_dir=/usr/lib/cni
    local tmp="$ENV_FILE.tmp"
    cat >"$tmp" <<EOF
# Written by crates/testbed/setup.sh; read by ambit-testbed.
AMBIT_KUBERNETES_VERSION=$KUBERNETES_VERSION
AMBIT_ETCD_VERSION=$ETCD_VERSION
AMBIT_HELM_VERSION=$HELM_VERSION
AMBIT_ISTIO_VERSION=$ISTIO_VERSION
AMBIT_ETCD=$ETCD_DIR/etcd
AMBIT_KUBE_APISERVER=$K8S_DIR/kube-apiserver
AMBIT_KUBE_CONTROLLER_MANAGER=$K8S_DIR/kube-controller-manager
AMBIT_KUBE_SCHEDULER=$K8S_DIR/kube-scheduler
AMBIT_KUBECTL=$K8S_DIR/kubectl
AMBIT_HELM=$HELM_DIR/helm
AMBIT_KUBELET_STREAMING=$KUBELET_STREAMING_DIR/kubelet-streaming
AMBIT_GATEWAY_API_VERSION=$GATEWAY_API_VERSION
AMBIT_CONFORMANCE_TEST=$CONFORMANCE_DIR/conformance.test
AMBIT_CNI_BIN_DIR=$cni_dir
EOF
    mv "$tmp" "$ENV_FILE"
}

main() {
    local only="${1:-all}"
    log "pinned: kubernetes $KUBERNETES_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION, istio $ISTIO_VERSION, gateway-api conformance $GATEWAY_API_VERSION, debian: ${DEBIAN_PACKAGES[*]}"
    log "cache: $CACHE; go: $("$GO" env GOVERSION 2>/dev/null || echo missing)"
    local start=$SECONDS
    case "$only" in
    all)
        debian_packages
        build_etcd
        build_helm
        build_kubernetes
        build_kubelet_streaming
        build_istio_echo
        build_istio_extauthz
        ;;
    debian) debian_packages ;;
    etcd) build_etcd ;;
    helm) build_helm ;;
    kubernetes) build_kubernetes ;;
    kubelet-streaming) build_kubelet_streaming ;;
    istio-echo) build_istio_echo ;;
    istio-extauthz) build_istio_extauthz ;;
    conformance) build_conformance ;;
    *)
        log "usage: setup.sh [all|debian|etcd|helm|kubernetes|kubelet-streaming|istio-echo|istio-extauthz|conformance]"
        exit 2
        ;;
    esac
    write_env
    log "done in $((SECONDS - start))s"
    echo "$ENV_FILE"
}

main "$@"
