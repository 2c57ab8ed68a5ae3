#!/usr/bin/env bash
# Build localhost/silvasonic-base:py3.13, a local stand-in for python:3.13-slim-bookworm, from
# Debian's own packages, so the project image can be built on a machine that reaches Debian's
# mirror and PyPI but no image registry (CI, a development box without docker.io):
#
#   sudo tests/image/build_base.sh            # once; skipped while the image exists
#   podman build --format docker --build-arg BASE_IMAGE=localhost/silvasonic-base:py3.13 \
#       -t localhost/silvasonic_uploader:latest -f Containerfile .
#
# The station (arm64) does not need this: it pulls the production base, the Containerfile's
# default BASE_IMAGE (docs/station-install.md, "Building the image").
#
# What the Containerfile needs from its base, and how this image provides it:
#   - apt-get with working sources       Debian's mirror (--mirror), main + updates + security,
#                                        as the official image's debian.sources
#   - apt cleaning up after itself       the debian:*-slim apt/dpkg settings: no .deb cache,
#                                        no docs/man/locales, no recommends
#   - pip on PATH, able to install       Debian's python3-pip, with the EXTERNALLY-MANAGED marker
#     into the system Python             removed (the official image has none); `pip install`
#                                        writes to /usr/local as in the official image
#   - /usr/local/bin/python3.13          a symlink to Debian's /usr/bin/python3.13 (UV_PYTHON),
#                                        plus python3, python, pip, pip3 as the official image
#   - ENV PATH (the Containerfile        /usr/local/bin first, LANG=C.UTF-8, CMD python3
#     extends $PATH), LANG
#   - ca-certificates, netbase, tzdata   installed, as the official image's runtime packages
#   - (python3-venv)                     not used by the Containerfile (uv makes /opt/venv);
#                                        there because `python -m venv` works in the official image
#
# Differences from the production base: Debian 13 (trixie) instead of 12 (bookworm), because
# bookworm has no Python 3.13; Debian's python3.13 build instead of python.org's source build
# in /usr/local. See docs/station-install.md for what that can and cannot hide.
#
# Needs root (debootstrap, chroot), debootstrap and podman. CPU-light (about 35 s on 2 cores):
# downloads and unpacks .debs; the rootfs lives in a temporary directory removed on exit.
#
# Options:
#   --force           rebuild even if the image exists (replaces the tag)
#   --tag T           image name (default localhost/silvasonic-base:py3.13)
#   --suite S         Debian suite (default trixie; its python3 must be 3.13)
#   --mirror URL      Debian mirror for debootstrap and the image's apt sources
#                     (default http://deb.debian.org/debian)
#   --security URL    security mirror (default: the mirror's host + /debian-security)
#   --no-host-ca      do not copy the host's /usr/local/share/ca-certificates/*.crt into the
#                     image (by default they are, with ENV SSL_CERT_FILE for uv: a build host
#                     behind a TLS-intercepting proxy needs them to reach PyPI)
#
# Podman on a cgroup v1 host, as CI here: CONTAINERS_CONF=tests/image/containers.conf
# (runc, cgroupfs, lowered ulimits); this script only imports, but the project build runs.
set -euo pipefail

TAG=localhost/silvasonic-base:py3.13
SUITE=trixie
MIRROR=http://deb.debian.org/debian
SECURITY=""
FORCE=0
HOST_CA=1
PYTHON_VERSION=3.13 # what the Containerfile's UV_PYTHON names
PACKAGES=(python3 python3-pip python3-venv ca-certificates netbase tzdata)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "build_base: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --no-host-ca) HOST_CA=0 ;;
    --tag) TAG=${2:?--tag needs a value}; shift ;;
    --suite) SUITE=${2:?--suite needs a value}; shift ;;
    --mirror) MIRROR=${2:?--mirror needs a value}; shift ;;
    --security) SECURITY=${2:?--security needs a value}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
MIRROR=${MIRROR%/}
if [ -z "$SECURITY" ]; then
  SECURITY="${MIRROR%/debian}/debian-security"
fi

command -v podman >/dev/null || die "podman is not installed (apt-get install podman runc)"
if [ "$FORCE" = 0 ] && podman image exists "$TAG"; then
  echo "build_base: $TAG exists; nothing to do (--force rebuilds it)"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"

ROOTFS=$(mktemp -d "${TMPDIR:-/var/tmp}/silvasonic-base.XXXXXX")

unmount_all() {  # everything mounted below the rootfs, deepest first
  local mounts
  mounts=$(awk -v root="$ROOTFS" 'index($2, root "/") == 1 { print $2 }' /proc/self/mounts | sort -r)
  for m in $mounts; do umount -l "$m" || true; done
}
cleanup() {
  unmount_all
  # --one-file-system: never follows a mount that survived into the host's /proc, /sys or /dev
  rm -rf --one-file-system "$ROOTFS"
  rm -f "$ROOTFS.log"
}
trap cleanup EXIT

in_root() {
  chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}

start=$(date +%s)
echo "build_base: debootstrap --variant=minbase $SUITE from $MIRROR into $ROOTFS"
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
  || { tail -20 "$ROOTFS.log" >&2; die "debootstrap failed"; }

# apt and dpkg as in debian:*-slim: the .debs are deleted after each install, no translations,
# no recommends, and docs/man pages/locales are not unpacked (copyright files are)
cat >"$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'Acquire::Languages "none";' >"$ROOTFS/etc/apt/apt.conf.d/docker-no-languages"
echo 'Acquire::GzipIndexes "true";' >"$ROOTFS/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$ROOTFS/etc/apt/apt.conf.d/docker-autoremove-suggests"
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
EOF

# the image's apt sources: the same mirror, reachable from inside a build container as from here
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -e "$ROOTFS$keyring" ] || keyring=/usr/share/keyrings/debian-archive-keyring.pgp
rm -f "$ROOTFS/etc/apt/sources.list"
cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: $keyring

Types: deb
URIs: $SECURITY
Suites: $SUITE-security
Components: main
Signed-By: $keyring
EOF

cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
mount -t proc proc "$ROOTFS/proc"
echo "build_base: apt-get upgrade and install ${PACKAGES[*]}"
# in the chroot, apt downloads as root (the _apt sandbox cannot reach debootstrap's root-owned
# dirs) and dpkg runs without a pty (no /dev/pts here); neither setting goes into the image
apt=(apt-get -o APT::Sandbox::User=root -o Dpkg::Use-Pty=0)
in_root "${apt[@]}" update -qq
in_root "${apt[@]}" upgrade -y -qq >/dev/null
in_root "${apt[@]}" install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
in_root "${apt[@]}" clean
umount "$ROOTFS/proc"

# the slim image's files, not only future installs: drop what debootstrap unpacked before the
# dpkg excludes existed
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$ROOTFS"/usr/share/{man,info,groff,linda,lintian/overrides}/*
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +

# The build host's own trust anchors (a TLS-intercepting proxy's CA, a company CA) go in too:
# without them the project build cannot reach PyPI from a network where the host needs them.
# uv trusts only its bundled roots unless SSL_CERT_FILE names a bundle, hence that ENV. Only
# when the host has such certificates; --no-host-ca leaves them out.
cas=()
if [ "$HOST_CA" = 1 ]; then
  for crt in /usr/local/share/ca-certificates/*.crt; do [ -f "$crt" ] && cas+=("$crt"); done
fi
ca_env=()
if [ ${#cas[@]} -gt 0 ]; then
  echo "build_base: adding the host's local CA certificates: ${cas[*]}"
  cp "${cas[@]}" "$ROOTFS/usr/local/share/ca-certificates/"
  in_root update-ca-certificates >/dev/null 2>&1 # (rehash warns about the bundle itself)
  ca_env=(--change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt')
fi

# Python as the official image has it: /usr/local/bin/python3.13 (UV_PYTHON), python3, python,
# pip, pip3; and `pip install` into the system Python allowed (no EXTERNALLY-MANAGED marker)
[ -x "$ROOTFS/usr/bin/python$PYTHON_VERSION" ] \
  || die "$SUITE has no python$PYTHON_VERSION (the Containerfile's UV_PYTHON), only:" \
    "$(find "$ROOTFS/usr/bin" -maxdepth 1 -name 'python3.*' -printf '%f ')"
ln -sf "/usr/bin/python$PYTHON_VERSION" "$ROOTFS/usr/local/bin/python$PYTHON_VERSION"
for name in python3 python; do ln -sf "python$PYTHON_VERSION" "$ROOTFS/usr/local/bin/$name"; done
for name in pip pip3 "pip$PYTHON_VERSION"; do ln -sf /usr/bin/pip3 "$ROOTFS/usr/local/bin/$name"; done
rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED

# what Podman provides at run time, and the build host's traces
: >"$ROOTFS/etc/resolv.conf"
: >"$ROOTFS/etc/hostname"
: >"$ROOTFS/etc/machine-id"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/log/* \
  "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/*

python_full=$(in_root "/usr/local/bin/python$PYTHON_VERSION" -c 'import platform; print(platform.python_version())')
pip_version=$(in_root pip --version | cut -d' ' -f2)
debian_version=$(cat "$ROOTFS/etc/debian_version")
unmount_all

previous=$(podman image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
echo "build_base: importing as $TAG (Debian $debian_version, Python $python_full, pip $pip_version)"
tar -C "$ROOTFS" --numeric-owner --xattrs \
  --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' --exclude='./run/*' -c . \
  | podman import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV PYTHON_VERSION=$python_full" \
    --change 'CMD ["python3"]' \
    ${ca_env[@]+"${ca_env[@]}"} \
    --change "LABEL org.opencontainers.image.description=\"Local stand-in for python:$PYTHON_VERSION-slim: Debian $SUITE ($debian_version), Debian's Python $python_full, pip $pip_version; built by tests/image/build_base.sh\"" \
    --message "tests/image/build_base.sh: debootstrap $SUITE from $MIRROR" \
    --quiet - "$TAG" >/dev/null
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$TAG")" ]; then
  # --force: the replaced base goes, unless an image built on it still uses it
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
echo "build_base: $TAG built in $(($(date +%s) - start)) s"
podman images "$TAG"
