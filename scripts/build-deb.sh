#!/usr/bin/env bash
# Builds the Debian package of Myelin from an already built binary.
#
#   scripts/build-deb.sh [BINARY]
#
# BINARY (or $MYELIN_BIN): the `myelin` executable, default target/release/myelin.
# Writes target/debian/myelin_<version>_<arch>.deb (OUT_DIR overrides the folder)
# and prints its path on the last line. The version is [workspace.package] version
# of Cargo.toml (VERSION overrides it), the architecture dpkg's (ARCH overrides).
# The binary is stripped of debug info in the package (STRIP=0 keeps it).
# Needs dpkg-deb and fakeroot; dpkg-shlibdeps (dpkg-dev), when present, computes
# the shared-library dependencies, otherwise a fixed list for glibc/libstdc++ is used.
# Sources: packaging/debian/ (control.in, maintainer scripts, conffiles, the
# example config myelin.toml, copyright) and packaging/systemd/myelin.service.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${1:-${MYELIN_BIN:-$repo/target/release/myelin}}"
out_dir="${OUT_DIR:-$repo/target/debian}"
maintainer="${MAINTAINER:-Myelin maintainers <maintainers@myelin.invalid>}"

die() { echo "build-deb: $*" >&2; exit 1; }

for tool in dpkg-deb fakeroot; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install dpkg fakeroot)"
done
[ -x "$bin" ] || die "no executable at $bin (cargo build --release --bin myelin)"

# [workspace.package] version = "X.Y.Z"
version="${VERSION:-$(awk '
    /^\[/ { section = $0; next }
    section == "[workspace.package]" && $1 == "version" {
        gsub(/"/, "", $3); print $3; exit
    }' "$repo/Cargo.toml")}"
[ -n "$version" ] || die "no [workspace.package] version in Cargo.toml"
arch="${ARCH:-$(dpkg --print-architecture)}"

# The binary must be the one the version says (a stale build would mislabel the package).
bin_version="$("$bin" --version 2>/dev/null | awk '{ print $2 }')"
if [ -n "$bin_version" ] && [ "$bin_version" != "$version" ] && [ -z "${VERSION:-}" ]; then
    die "$bin reports version $bin_version, Cargo.toml says $version"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
src="$repo/packaging"

install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
    "$root/etc/myelin" "$root/usr/share/doc/myelin"
if [ "${STRIP:-1}" = 1 ] && command -v strip >/dev/null; then
    strip --strip-debug -o "$root/usr/bin/myelin" "$bin"
    chmod 0755 "$root/usr/bin/myelin"
else
    install -m 0755 "$bin" "$root/usr/bin/myelin"
fi
install -m 0644 "$src/systemd/myelin.service" "$root/lib/systemd/system/myelin.service"
install -m 0644 "$src/debian/myelin.toml" "$root/etc/myelin/myelin.toml"
install -m 0644 "$src/debian/copyright" "$root/usr/share/doc/myelin/copyright"
install -m 0644 "$repo/README.md" "$root/usr/share/doc/myelin/README.md"
install -m 0644 "$src/grafana/myelin-dashboard.json" "$root/usr/share/doc/myelin/myelin-dashboard.json"
for script in postinst prerm postrm; do
    install -m 0755 "$src/debian/$script" "$root/DEBIAN/$script"
done
install -m 0644 "$src/debian/conffiles" "$root/DEBIAN/conffiles"

# Shared-library dependencies of the binary, as dpkg-shlibdeps finds them.
depends=""
if command -v dpkg-shlibdeps >/dev/null; then
    mkdir -p "$work/shlibs/debian"
    printf 'Source: myelin\n\nPackage: myelin\nArchitecture: any\n' >"$work/shlibs/debian/control"
    depends="$(cd "$work/shlibs" && dpkg-shlibdeps -O --warnings=0 "$root/usr/bin/myelin" 2>/dev/null |
        sed -n 's/^shlibs:Depends=//p')"
fi
if [ -z "$depends" ]; then
    depends="libc6 (>= 2.34), libgcc-s1 (>= 4.2), libstdc++6 (>= 12)"
fi
# useradd/groupadd for the postinst.
depends="$depends, passwd"

installed_size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
    -e "s|@INSTALLED_SIZE@|$installed_size|" -e "s|@DEPENDS@|$depends|" \
    "$src/debian/control.in" >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort |
    xargs md5sum >DEBIAN/md5sums)
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"

mkdir -p "$out_dir"
deb="$out_dir/myelin_${version}_${arch}.deb"
# fakeroot: every file root:root in the archive without building as root.
fakeroot -- dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
echo "$deb"
