#!/usr/bin/env bash
# Build the medssr image from the repository's Dockerfile, unchanged, with whatever this machine has:
#   - a Docker engine (`docker info` answers): `docker build --target TARGET`, base images from their registry;
#   - otherwise buildah (installed with apt-get when missing), `buildah bud --isolation chroot --layers`:
#       * the base image the Dockerfile's FROM names is pulled when its registry answers; when it does not,
#         a stand-in is made locally (debootstrap --variant=minbase bookworm + python3-venv, python-is-python3,
#         the host's extra CA certificates) and tagged with that name;
#       * the CPU torch wheel and its dependencies are served from a local folder laid out as a PEP 503 index
#         (made from TORCH_WHEELS + pip download), bind-mounted into the build's RUN steps and passed through
#         the Dockerfile's own TORCH_CPU_INDEX build argument.
# Caches live outside the repository: the base root filesystem and the torch index in
# ${MEDSSR_CACHE:-~/.cache/medssr}/image, image layers (torch's among them) in buildah's own storage, so a rebuild
# after a source change redoes only the layers after the sources are copied.
#
#   scripts/build-image.sh [cpu|gpu]        MEDSSR_IMAGE_BUILDER=docker|buildah picks one (default: docker if it answers)
# Exit status 3: no way to build here (no Docker engine and no root for buildah, or no registry for the GPU base).
# The image is tagged with the name the compiled pipeline's steps use: MEDSSR_IMAGE / MEDSSR_GPU_IMAGE, else the
# defaults of medssr/cluster.py (the same variables set the images `medssr pipeline compile` writes).
# Prints the build time and the image size.
set -euo pipefail
# One compound command to the end of the file: bash reads all of it before it runs, so an edit of this file during
# a build does not change that build.
{
TARGET="${1:-cpu}"
case "$TARGET" in cpu | gpu) ;; *) echo "usage: $0 [cpu|gpu]" >&2; exit 2 ;; esac
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n1)"
# medssr.cluster declares the defaults (components/image.py reads them from there).
default_image() { sed -n "s/^$1 = \"\(.*\)\"/\1/p" "$ROOT/medssr/cluster.py"; }
if [[ $TARGET == cpu ]]; then
    IMAGE="${MEDSSR_IMAGE:-$(default_image DEFAULT_IMAGE)}"
else
    IMAGE="${MEDSSR_GPU_IMAGE:-$(default_image DEFAULT_GPU_IMAGE)}"
fi
[[ -n $IMAGE ]] || { echo "no image name: set MEDSSR_IMAGE / MEDSSR_GPU_IMAGE" >&2; exit 2; }
CACHE="${MEDSSR_CACHE:-$HOME/.cache/medssr}/image"
TORCH_WHEELS="${TORCH_WHEELS:-/opt/wheels}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Bump when the local base's recipe changes: an older cached root filesystem is then rebuilt.
BASE_RECIPE=bookworm-minbase-python3-r1

BUILDER="${MEDSSR_IMAGE_BUILDER:-}"

log() { printf '[build-image %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
cannot_build() { log "cannot build here: $*"; exit 3; }
# The default of a global ARG in the Dockerfile (the names its FROM lines use).
dockerfile_arg() { sed -n "s/^ARG $1=//p" "$ROOT/Dockerfile" | head -n1; }
TORCH_VERSION="$(dockerfile_arg TORCH_VERSION)"
START=$SECONDS
report() { log "built $IMAGE (target $TARGET) in $((SECONDS - START)) s; image size $1"; }

# ---------------------------------------------------------------- Docker engine
docker_answers() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }
if [[ $BUILDER == docker ]] || { [[ -z $BUILDER ]] && docker_answers; }; then
    docker_answers || cannot_build "MEDSSR_IMAGE_BUILDER=docker, and no Docker engine answers"
    log "Docker engine found: docker build --target $TARGET -t $IMAGE"
    docker build --target "$TARGET" --build-arg "VERSION=$VERSION" -t "$IMAGE" "$ROOT"
    report "$(numfmt --to=si --suffix=B "$(docker image inspect -f '{{.Size}}' "$IMAGE")")"
    exit 0
fi

# ---------------------------------------------------------------- buildah
[[ $BUILDER == "" || $BUILDER == buildah ]] || die "MEDSSR_IMAGE_BUILDER=$BUILDER: docker or buildah"
# Root: buildah's chroot isolation and the local base (debootstrap, chroot) need it.
[[ $(id -u) == 0 ]] || cannot_build "no Docker engine, and buildah's build here needs root (sudo make image)"
if ! command -v buildah >/dev/null; then
    log "no Docker engine and no buildah: installing buildah and debootstrap with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q buildah debootstrap >&2 \
        || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q buildah debootstrap >&2; }
fi
mkdir -p "$CACHE"
# One build at a time per cache (make test and a user's make image may overlap).
exec 9>"$CACHE/.build.lock"
flock 9

image_exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# A registry answers when its /v2/ endpoint replies at all (401 without credentials counts).
registry_of() {
    local name=$1 first=${1%%/*}
    if [[ $name != */* || ($first != *.* && $first != *:* && $first != localhost) ]]; then
        echo registry-1.docker.io
    else
        echo "$first"
    fi
}
registry_answers() { curl -s -o /dev/null -m 10 "https://$(registry_of "$1")/v2/"; }

# The extra CA certificates this host trusts beyond Debian's set (a TLS-inspecting proxy's, for one), one PEM
# file each, so pip inside the build reaches the package index the way the host does.
extra_host_certs() {
    local rootfs=$1 out=$2
    python3 - "$rootfs/etc/ssl/certs/ca-certificates.crt" /etc/ssl/certs/ca-certificates.crt "$out" <<'EOF'
import pathlib, re, sys
pem = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
base, host, out = (pathlib.Path(p) for p in sys.argv[1:])
known = set(pem.findall(base.read_text()))
extra = [c for c in pem.findall(host.read_text()) if c not in known] if host.exists() else []
out.mkdir(parents=True, exist_ok=True)
for i, cert in enumerate(extra):
    (out / f"host-extra-{i}.crt").write_text(cert + "\n")
print(len(extra))
EOF
}

# The Debian 12 root filesystem of the local base, cached as a tarball (debootstrap takes minutes).
base_rootfs_tar() {
    local tar="$CACHE/base-$BASE_RECIPE.tar"
    if [[ -s $tar ]]; then echo "$tar"; return; fi
    command -v debootstrap >/dev/null || {
        log "debootstrap missing: installing it with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
    }
    local rootfs="$CACHE/base-rootfs"
    rm -rf "$rootfs"
    log "debootstrap --variant=minbase bookworm (python3-venv, python-is-python3, ca-certificates) from $DEBIAN_MIRROR"
    debootstrap --variant=minbase --include=python3-venv,python-is-python3,ca-certificates \
        bookworm "$rootfs" "$DEBIAN_MIRROR" >&2
    local n
    n=$(extra_host_certs "$rootfs" "$rootfs/usr/local/share/ca-certificates")
    log "the host's extra CA certificates copied into the base: $n"
    chroot "$rootfs" update-ca-certificates >&2
    # What python:3.11-slim leaves out as well: apt's lists and caches, documentation.
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/tmp/*
    tar -C "$rootfs" --numeric-owner -cf "$tar.partial" .
    mv "$tar.partial" "$tar"
    rm -rf "$rootfs"
    echo "$tar"
}

make_local_base() {
    local name=$1 tar ctr
    tar=$(base_rootfs_tar)
    log "importing the local base as $name"
    ctr=$(buildah from scratch)
    buildah add --quiet "$ctr" "$tar" / >/dev/null
    buildah config \
        --env LANG=C.UTF-8 \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd python3 \
        --label org.opencontainers.image.description="Debian 12 minbase + python3-venv, made locally by scripts/build-image.sh in place of $name (no registry reachable)" \
        "$ctr"
    buildah commit --quiet --rm "$ctr" "$name" >/dev/null
}

ensure_base() {
    local name=$1
    if image_exists "$name"; then log "base $name: in buildah's storage"; return; fi
    if registry_answers "$name"; then
        log "base $name: pulling from $(registry_of "$name")"
        buildah pull --quiet "$name" >/dev/null && return
        log "pull failed: making the base locally instead"
    fi
    [[ $TARGET == cpu ]] || cannot_build "the $TARGET target needs $name from its registry, and $(registry_of "$name") does not answer"
    make_local_base "$name"
}

# A PEP 503 index ("simple" layout: one folder per normalised project name, each with an index.html linking its
# wheels) holding torch and its dependencies, at the versions constraints.txt pins where it pins them.
torch_index() {
    local index="$CACHE/torch-index/$TORCH_VERSION-$(sha256sum "$ROOT/constraints.txt" | cut -c1-12)"
    if [[ -s $index/READY ]]; then echo "$index"; return; fi
    rm -rf "$index"
    mkdir -p "$index/wheels"  # downloads land here, then move into their project's folder
    log "torch index: pip download torch==$TORCH_VERSION and its dependencies into $index"
    python3 -m pip download -q --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
        --implementation cp --dest "$index/wheels" -c "$ROOT/constraints.txt" \
        $([[ -d $TORCH_WHEELS ]] && echo --find-links "$TORCH_WHEELS") "torch==$TORCH_VERSION" >&2
    python3 - "$index" <<'EOF'
import html, pathlib, re, sys
index = pathlib.Path(sys.argv[1])
projects = {}
for wheel in sorted((index / "wheels").glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    projects.setdefault(name, []).append(wheel)
simple = index / "simple"
for name, wheels in projects.items():
    folder = simple / name
    folder.mkdir(parents=True)
    for wheel in wheels:
        wheel.rename(folder / wheel.name)
    links = "".join(f'<a href="{html.escape(w.name)}">{html.escape(w.name)}</a>\n' for w in wheels)
    (folder / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
links = "".join(f'<a href="{n}/">{n}</a>\n' for n in sorted(projects))
(simple / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
(index / "wheels").rmdir()
(index / "READY").write_text("\n".join(sorted(projects)) + "\n")
EOF
    # Indexes made for earlier constraints are not used again (the build lock keeps other builds out meanwhile).
    find "$CACHE/torch-index" -mindepth 1 -maxdepth 1 ! -name "$(basename "$index")" -exec rm -rf {} +
    echo "$index"
}

BUILD_ARGS=(--build-arg "VERSION=$VERSION")
VOLUMES=()
if [[ $TARGET == cpu ]]; then
    base=$(dockerfile_arg PYTHON_IMAGE)
    ensure_base "$base"
    # The registry's python image and the local stand-in both work with the Dockerfile's default index too;
    # the local index spares the download and pins torch's dependencies to the constraints.
    index=$(torch_index)
    # The folder's name (torch version + constraints digest) is in the URL, so the torch layer's cache key
    # changes with the index's content.
    mounted="/run/medssr-torch-index/$(basename "$index")"
    VOLUMES=(-v "$index:$mounted:ro")
    BUILD_ARGS+=(--build-arg "TORCH_CPU_INDEX=file://$mounted/simple")
else
    ensure_base "$(dockerfile_arg CUDA_IMAGE)"
fi

log "buildah bud --isolation chroot --layers --target $TARGET -t $IMAGE"
buildah bud --isolation chroot --layers --pull=never --target "$TARGET" "${BUILD_ARGS[@]}" "${VOLUMES[@]}" \
    -t "$IMAGE" "$ROOT" >&2
report "$(buildah images --noheading --format '{{.Size}}' "$IMAGE")"
exit 0
}
