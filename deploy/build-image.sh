#!/bin/sh
# Builds the agent's OCI image without a container registry, from Debian packages only
# (docs/deploy.md, "The image"):
#   1. the agent and dfctl, built here with the project's toolchain (`cargo xtask setup`);
#   2. a minimal Debian 12 root filesystem from the apt mirror this machine uses
#      (debootstrap --variant=minbase), with the two binaries in /usr/local/bin;
#   3. an OCI image layout made from it by umoci, packed as an oci-archive tarball
#      (`podman load -i`, `skopeo copy oci-archive:… docker://…`, `ctr image import`).
#
# Usage (as root: debootstrap needs it):
#   deploy/build-image.sh [OUTPUT.tar] [TAG]
#   default: target/image/dragonflow-agent.oci.tar, tag = the workspace's version
# Needs: debootstrap and umoci (`cargo xtask setup` installs both).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/image/dragonflow-agent.oci.tar}
# The workspace's version ([workspace.package] in Cargo.toml).
tag=${2:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)}
# BIN_DIR=DIR takes dragonflow-agent and dfctl from DIR instead of a release build.
bin=${BIN_DIR:-$root/target/release}
# The suite and mirror the host's apt uses (deb822 sources first, then sources.list), so
# the image's packages come from where this machine's do.
suite=bookworm
mirror=$(sed -n 's/^URIs: *\([^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
[ -n "$mirror" ] || mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*debian\) bookworm main.*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n1)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

for tool in debootstrap umoci; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: run cargo xtask setup" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap needs it)" >&2; exit 1; }

if [ -z "${BIN_DIR:-}" ]; then
    echo "== building the agent (release)"
    (cd "$root" && cargo build --release -p dragonflow-agent --bins)
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/df-image.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

echo "== debootstrap $suite from $mirror"
debootstrap --variant=minbase "$suite" "$work/rootfs" "$mirror"
install -m 0755 "$bin/dragonflow-agent" "$bin/dfctl" \
    "$work/rootfs/usr/local/bin/"
# Nothing in the image needs apt's caches or logs.
rm -rf "$work/rootfs/var/cache/apt/archives"/*.deb "$work/rootfs/var/lib/apt/lists"/* \
    "$work/rootfs/var/log"/*

echo "== OCI image dragonflow-agent:$tag"
umoci init --layout "$work/oci"
umoci new --image "$work/oci:$tag"
# unpack gives a bundle whose rootfs/ becomes the layer on repack.
umoci unpack --image "$work/oci:$tag" "$work/bundle"
rmdir "$work/bundle/rootfs"
mv "$work/rootfs" "$work/bundle/rootfs"
umoci repack --image "$work/oci:$tag" "$work/bundle"
umoci config --image "$work/oci:$tag" \
    --config.entrypoint /usr/local/bin/dragonflow-agent \
    --config.workingdir / \
    --config.exposedports 9465/tcp \
    --config.label org.opencontainers.image.title=dragonflow-agent \
    --config.label "org.opencontainers.image.version=$tag" \
    --architecture amd64 --os linux
umoci gc --layout "$work/oci"

mkdir -p "$(dirname "$out")"
# An oci-archive is the layout directory as a tar.
tar -C "$work/oci" -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "== wrote $out (oci-archive, dragonflow-agent:$tag)"
