#!/usr/bin/env bash
# Build a real kube-apiserver (v1.20.2, Debian's `kubernetes` source package) with Debian's golang-1.19, and
# unpack Debian's etcd-server next to it, into a private cache outside the repository. Used by the test suite
# (tests/plugins/kube.py). Nothing is installed on the system: apt runs with a private configuration and state
# folder, and packages are unpacked with `dpkg-deb -x`.
#
# Idempotent: when the marker (written last) carries this recipe's BUILD_ID, it exits at once.
#   KUBE_DIR=${MEDSSR_CACHE:-$HOME/.cache/medssr}/kube
#   $KUBE_DIR/bin/{kube-apiserver,etcd}  and  $KUBE_DIR/READY
set -euo pipefail

# Bump when the recipe changes: a cache built by an older recipe is rebuilt (tests/plugins/kube.py checks it too).
BUILD_ID=v1.20.2-debian-go1.19-r2
KUBE_DIR="${MEDSSR_CACHE:-$HOME/.cache/medssr}/kube"
MARKER="$KUBE_DIR/READY"
built() { [[ -x "$KUBE_DIR/bin/kube-apiserver" && -x "$KUBE_DIR/bin/etcd" && "$(head -n1 "$MARKER" 2>/dev/null)" == "$BUILD_ID" ]]; }
built && exit 0
# One build at a time per cache: a second caller waits for the first and then finds the binaries.
mkdir -p "$KUBE_DIR"
exec 9>"$KUBE_DIR/.build.lock"
flock 9
built && exit 0

DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WORK="$KUBE_DIR/work"
APT_DIR="$WORK/apt"
DEBS="$WORK/debs"
ROOT="$WORK/root"          # unpacked Debian packages (go toolchain, etcd, reflect2, rsync)
SRC="$WORK/src"            # unpacked kubernetes source package
mkdir -p "$KUBE_DIR/bin" "$APT_DIR"/{etc/apt.conf.d,etc/preferences.d,etc/sources.list.d,state/lists/partial,cache/archives/partial} "$DEBS" "$ROOT" "$SRC"
rm -f "$MARKER"

log() { printf '[build-kube-apiserver %(%H:%M:%S)T] %s\n' -1 "$*"; }

# --- private apt: its own sources, lists and caches; nothing under /var/lib/apt or /etc/apt is touched --------
cat > "$APT_DIR/etc/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR bookworm main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR bookworm main
EOF
: > "$APT_DIR/state/status"
APT_OPTS=(
    -o "Dir::Etc=$APT_DIR/etc"
    -o "Dir::Etc::sourcelist=$APT_DIR/etc/sources.list"
    -o "Dir::Etc::sourceparts=$APT_DIR/etc/sources.list.d"
    -o "Dir::Etc::parts=$APT_DIR/etc/apt.conf.d"
    -o "Dir::Etc::preferencesparts=$APT_DIR/etc/preferences.d"
    -o "Dir::State=$APT_DIR/state"
    -o "Dir::State::status=$APT_DIR/state/status"
    -o "Dir::Cache=$APT_DIR/cache"
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=root"
)
apt_private() { apt-get "${APT_OPTS[@]}" "$@"; }

log "apt update (private lists)"
apt_private update -qq

PACKAGES=(golang-1.19-go golang-1.19-src etcd-server golang-github-modern-go-reflect2-dev)
command -v rsync >/dev/null || PACKAGES+=(rsync libxxhash0 libpopt0)
log "downloading ${PACKAGES[*]}"
(cd "$DEBS" && apt_private download -qq "${PACKAGES[@]}")
for deb in "$DEBS"/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done

log "downloading the kubernetes source package"
(cd "$SRC" && apt_private source -qq --download-only kubernetes)
DSC=$(ls "$SRC"/kubernetes_*.dsc | head -n1)
rm -rf "$SRC/kubernetes"
(cd "$SRC" && dpkg-source --no-check -x "$DSC" kubernetes >/dev/null)

# --- go toolchain from the unpacked package; its symlinks are absolute (/usr/...), so re-point them ---------
GOROOT_DIR="$ROOT/usr/lib/go-1.19"
for link in $(find "$GOROOT_DIR" -maxdepth 2 -type l); do
    target=$(readlink "$link")
    if [[ "$target" == /* ]]; then ln -sfn "$ROOT$target" "$link"; fi
done
export GOROOT="$GOROOT_DIR"
export PATH="$GOROOT/bin:$ROOT/usr/bin:$PATH"
export LD_LIBRARY_PATH="$ROOT/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
go version

# --- GOPATH layout: k8s.io/kubernetes with its vendor tree --------------------------------------------------
GOPATH_DIR="$WORK/gopath"
K8S="$GOPATH_DIR/src/k8s.io/kubernetes"
mkdir -p "$(dirname "$K8S")"
rm -rf "$K8S"
mv "$SRC/kubernetes" "$K8S"

# reflect2 1.0.1 (vendored) segfaults under Go >= 1.18 on the first custom-resource create: use Debian's 1.0.2.
REFLECT2_SRC="$ROOT/usr/share/gocode/src/github.com/modern-go/reflect2"
test -d "$REFLECT2_SRC"
rm -rf "$K8S/vendor/github.com/modern-go/reflect2"
cp -r "$REFLECT2_SRC" "$K8S/vendor/github.com/modern-go/reflect2"

# The schema type check compares reflect.Values with DeepEqual; built with Go 1.19 that takes every zero value
# ("", 0, false) in a custom resource for null and rejects it. Only a real nil is null.
for vendored in github.com/go-openapi/validate k8s.io/kube-openapi/pkg/validation/validate; do
    type_go="$K8S/vendor/$vendored/type.go"
    sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$type_go"
    grep -q '^	if data == nil {$' "$type_go"
done

export GOPATH="$GOPATH_DIR" GO111MODULE=off GOFLAGS="" GOCACHE="$WORK/gocache" CGO_ENABLED=0
export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean
cd "$K8S"
log "make generated_files"
make generated_files >"$WORK/generated_files.log" 2>&1 || { tail -n 40 "$WORK/generated_files.log"; exit 1; }

log "go build kube-apiserver"
# The version the server reports (/version, kubectl version); GOPATH mode sees component-base under vendor/.
VERSION_PKG=k8s.io/kubernetes/vendor/k8s.io/component-base/version
LDFLAGS="-s -w -X $VERSION_PKG.gitVersion=$KUBE_GIT_VERSION -X $VERSION_PKG.gitMajor=1 -X $VERSION_PKG.gitMinor=20"
LDFLAGS+=" -X $VERSION_PKG.gitTreeState=clean -X $VERSION_PKG.buildDate=$(date -u +%FT%TZ)"
go build -ldflags "$LDFLAGS" -o "$KUBE_DIR/bin/kube-apiserver" ./cmd/kube-apiserver
install -m 0755 "$ROOT/usr/bin/etcd" "$KUBE_DIR/bin/etcd"
"$KUBE_DIR/bin/kube-apiserver" --version
"$KUBE_DIR/bin/etcd" --version | sed -n 1p  # sed reads it all: with head, etcd could die of SIGPIPE (exit 141 under pipefail)

# The toolchain, sources and go cache are only needed to build: drop them to keep the cache small.
cd "$KUBE_DIR"
rm -rf "$WORK"
printf '%s\nbuilt %s\n' "$BUILD_ID" "$(date -u +%FT%TZ)" > "$MARKER"
log "done: $KUBE_DIR/bin"
