#!/usr/bin/env bash
# Build dist/k3snoded_<ver>_<arch>.deb and dist/k3snoded-<ver>-1.<arch>.rpm from the one
# description in packaging/meta.sh. Run from anywhere; needs dpkg-deb, rpmbuild, python3.11 with
# venv, and libsystemd-dev (systemd-python is built from source). Offline is fine when pip's
# configured index has the pinned versions.
#
#   packaging/build.sh              both packages
#   PKG_FORMATS=deb packaging/build.sh
#   DIST=/tmp/out K3SNODED_VERSION_SUFFIX=+test1 packaging/build.sh
#
# How the virtualenv ends up at /opt/k3snoded without touching the build machine's /opt:
# venvs are not relocatable, because their scripts and pyvenv.cfg carry absolute paths. It is
# created at <stage>/opt/k3snoded and filled with --no-compile; the scripts that carry the stage
# path are removed (console and activate scripts: /usr/bin/k3snoded runs `python -m k3snoded`),
# pyvenv.cfg is rewritten, the bytecode is compiled with /opt/k3snoded as its source path, and
# the build fails if the stage path is left anywhere in the tree. The package is built from
# the working tree (what the tests test); build releases from a clean checkout. The venv's bin/python links to $PKG_PYTHON (/usr/bin/python3.11), a
# path that exists on the target.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=packaging/meta.sh
. packaging/meta.sh

DIST=${DIST:-dist}
PKG_FORMATS=${PKG_FORMATS:-deb rpm}
umask 022
WORK=$(mktemp -d /tmp/k3snoded-pkg.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
log() { echo "build: $*" >&2; }
quiet_pip() { grep -v -e "is ignored" -e "^$" || true; }

[ -n "$PKG_VERSION" ] || { log "no __version__ in k3snoded/__init__.py"; exit 1; }
[ -x "$PKG_PYTHON" ] || { log "$PKG_PYTHON is missing (apt-get install python3.11-venv)"; exit 1; }
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

# 1. The private virtualenv. --------------------------------------------------------------
# Hermetic: pip neither reads nor writes a cache (a wheel that scripts/setup.sh built from
# source with another interpreter carried a RUNPATH into that interpreter's directory), and
# the build user's home (pip config, user site) is replaced by an empty one.
export HOME=$WORK/home PIP_NO_CACHE_DIR=1 PYTHONNOUSERSITE=1
mkdir -p "$HOME"
VSTAGE=$WORK/venv
VENV=$VSTAGE$VENV_DIR
log "virtualenv with $PKG_PYTHON ($("$PKG_PYTHON" -V 2>&1))"
"$PKG_PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --no-compile --no-deps --use-pep517 -r requirements/runtime.txt \
  "${PKG_EXTRA_PINS[@]}" 2>&1 | quiet_pip
# The project from a copy of the working tree (a build would write build/ into the checkout).
mkdir -p "$WORK/src"
cp -r pyproject.toml README.md k3snoded "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
"${PIP[@]}" install --no-compile --no-deps "$WORK/src" 2>&1 | quiet_pip
"$VENV/bin/python" -m pip --disable-pip-version-check check >&2 # every runtime dependency is pinned in requirements/runtime.txt
"$VENV/bin/python" -c "import aiohttp, zeroconf, yaml, pymysql, psycopg2, pyroute2, systemd.daemon, k3snoded"
# The venv is sealed: no installer inside it, no record of where it was built.
"${PIP[@]}" uninstall -y pip setuptools 2>&1 | quiet_pip
for d in "$VENV"/lib/python3.*/site-packages/k3snoded-*.dist-info; do
  rm -f "$d/direct_url.json"
  sed -i '/direct_url\.json/d' "$d/RECORD"
done
find "$VENV" -name __pycache__ -prune -exec rm -rf {} +
# /usr/bin/k3snoded is the one entry point: drop the dependencies' console scripts (pyroute2's
# dhcp client, idna, ...) and the activate scripts, keep only the interpreter links.
find "$VENV/bin" -mindepth 1 -maxdepth 1 ! -name 'python' ! -name 'python3' ! -name 'python3.*' \
  -exec rm -f {} +
# Extension modules carry symbols the wheels did not strip; bundled shared libraries do not
# need to be executable.
find "$VENV/lib" -name '*.cpython-*.so' -exec strip --strip-unneeded {} +
find "$VENV/lib" -path '*.libs/*.so*' -type f -exec chmod 0644 {} +
# Relocate: rewrite the stage path in every text file under bin/ and in pyvenv.cfg.
for f in "$VENV"/bin/* "$VENV/pyvenv.cfg"; do
  if [ -f "$f" ] && [ ! -L "$f" ] && grep -qIF "$VSTAGE" "$f"; then
    sed -i "s#$VSTAGE##g" "$f"
  fi
done
# Bytecode with the final source paths. unchecked-hash: the files only change through the
# package manager, so the interpreter never needs to re-check or rewrite them.
"$PKG_PYTHON" -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \
  -s "$VSTAGE" -p / "$VENV/lib" >/dev/null
if grep -rlF "$VSTAGE" "$VSTAGE" >"$WORK/leftover"; then
  log "the build path is still named in:"; cat "$WORK/leftover" >&2; exit 1
fi

# 2. One staged tree per format, from PKG_FILES. ------------------------------------------
stage() { # stage ROOT UNITDIR ENVFILE
  local root=$1 unitdir=$2 envfile=$3 entry src dst mode
  mkdir -p "$root"
  cp -a "$VSTAGE/." "$root/"
  for entry in "${PKG_FILES[@]}"; do
    IFS='|' read -r src dst mode <<<"$entry"
    src=$(echo "$src" | xargs); dst=$(echo "$dst" | xargs); mode=$(echo "$mode" | xargs)
    src=${src//\{example\}/$PKG_EXAMPLE}
    dst=${dst//\{unitdir\}/$unitdir}; dst=${dst//\{envfile\}/$envfile}
    if [ "$src" = "-" ]; then
      install -d -m "${mode#d}" "$root$dst"
    elif [[ $dst == *.gz && $src != *.gz ]]; then
      install -d -m 0755 "$(dirname "$root$dst")"
      gzip -9n -c "$src" >"$root$dst"
      chmod "$mode" "$root$dst"
    else
      install -D -m "$mode" "$src" "$root$dst"
    fi
  done
}

# 3. The .deb. -----------------------------------------------------------------------------
build_deb() {
  local arch root=$WORK/deb out
  arch=$(dpkg --print-architecture)
  stage "$root" "$DEB_UNITDIR" "$DEB_ENVFILE"
  install -D -m 0644 packaging/files/copyright "$root/usr/share/doc/$PKG_NAME/copyright"
  install -D -m 0644 packaging/lintian-overrides "$root/usr/share/lintian/overrides/$PKG_NAME"
  {
    echo "$PKG_NAME ($PKG_VERSION) unstable; urgency=medium"
    echo
    echo "  * Release $PKG_VERSION (see the project's git history)."
    echo
    echo " -- $PKG_MAINTAINER  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
  } | gzip -9n >"$root/usr/share/doc/$PKG_NAME/changelog.gz"
  chmod 0644 "$root/usr/share/doc/$PKG_NAME/changelog.gz"
  install -d -m 0755 "$root/DEBIAN"
  {
    echo "Package: $PKG_NAME"
    echo "Version: $PKG_VERSION"
    echo "Architecture: $arch"
    echo "Maintainer: $PKG_MAINTAINER"
    echo "Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)"
    echo "Depends: $DEB_DEPENDS"
    echo "Recommends: $DEB_RECOMMENDS"
    echo "Section: admin"
    echo "Priority: optional"
    echo "Homepage: $PKG_HOMEPAGE"
    echo "Description: $PKG_SUMMARY"
    echo "$PKG_DESCRIPTION" | sed 's/^/ /'
  } >"$root/DEBIAN/control"
  printf '%s\n' "${DEB_CONFFILES[@]}" >"$root/DEBIAN/conffiles"
  install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
  (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum >DEBIAN/md5sums)
  chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/conffiles" "$root/DEBIAN/control"
  # gzip: xz -6 took 26 s of a 60 s build here for 3 MB less; dpkg and apt read both alike.
  out="$DIST/${PKG_NAME}_${PKG_VERSION}_${arch}.deb"
  dpkg-deb --root-owner-group -Zgzip -z9 --build "$root" "$out" >/dev/null
  log "built $out"
}

# 4. The .rpm. -----------------------------------------------------------------------------
build_rpm() {
  local arch root=$WORK/rpmroot top=$WORK/rpmbuild spec out requires="" f
  arch=$(uname -m)
  stage "$root" "$RPM_UNITDIR" "$RPM_ENVFILE"
  install -D -m 0644 packaging/files/copyright "$root/usr/share/licenses/$PKG_NAME/copyright"
  for f in "${RPM_REQUIRES[@]}"; do requires+="Requires:       $f"$'\n'; done
  for f in "${RPM_RECOMMENDS[@]}"; do requires+="Recommends:     $f"$'\n'; done
  RPM_REQUIRES_LINES=$requires
  { # %files from PKG_FILES: the same list as the .deb
    local entry src dst mode
    for entry in "${PKG_FILES[@]}"; do
      IFS='|' read -r src dst mode <<<"$entry"
      src=$(echo "$src" | xargs); dst=$(echo "$dst" | xargs); mode=$(echo "$mode" | xargs)
      dst=${dst//\{unitdir\}/$RPM_UNITDIR}; dst=${dst//\{envfile\}/$RPM_ENVFILE}
      if [ "$src" = "-" ]; then
        echo "%dir %attr(${mode#d},root,root) $dst"
      elif [[ " ${RPM_CONFFILES[*]} " == *" $dst "* ]]; then
        echo "%config(noreplace) %attr($mode,root,root) $dst"
      else
        echo "%attr($mode,root,root) $dst"
      fi
    done
    echo "$VENV_DIR"
    echo "%license /usr/share/licenses/$PKG_NAME/copyright"
  } >"$WORK/files.list"
  mkdir -p "$top"/{BUILD,RPMS,SPECS,SRPMS,SOURCES}
  spec="$top/SPECS/$PKG_NAME.spec"
  python3 - "$spec" "$WORK" <<'PY'
import os, sys
spec, work = sys.argv[1], sys.argv[2]
env = os.environ
def read(p):
    with open(p) as f:
        return f.read().rstrip("\n")
subst = {
    "@NAME@": env["PKG_NAME"], "@VERSION@": env["PKG_VERSION"], "@RELEASE@": env["PKG_RELEASE"],
    "@SUMMARY@": env["PKG_SUMMARY"], "@LICENSE@": env["PKG_LICENSE"],
    "@GROUP@": env["PKG_RPM_GROUP"],
    "@HOMEPAGE@": env["PKG_HOMEPAGE"], "@MAINTAINER@": env["PKG_MAINTAINER"],
    "@REQUIRES@": env["RPM_REQUIRES_LINES"].rstrip("\n"),
    "@DESCRIPTION@": "\n".join("" if l == "." else l for l in env["PKG_DESCRIPTION"].splitlines()),
    "@STAGE@": work + "/rpmroot", "@CHANGELOG_DATE@": env["CHANGELOG_DATE"],
    "@POST@": read("packaging/rpm/post.sh"), "@PREUN@": read("packaging/rpm/preun.sh"),
    "@POSTUN@": read("packaging/rpm/postun.sh"), "@FILES@": read(work + "/files.list"),
}
text = read("packaging/rpm/k3snoded.spec.in") + "\n"
for k, v in subst.items():
    text = text.replace(k, v)
import re
left = re.findall(r"@[A-Z_]+@", text)
assert not left, f"unsubstituted placeholders in the spec: {left}"
with open(spec, "w") as f:
    f.write(text)
PY
  rpmbuild --quiet -bb --define "_topdir $top" "$spec" >"$WORK/rpmbuild.log" 2>&1 ||
    { cat "$WORK/rpmbuild.log" >&2; exit 1; }
  out="$DIST/${PKG_NAME}-${PKG_VERSION}-${PKG_RELEASE}.${arch}.rpm"
  mv "$top/RPMS/$arch/${PKG_NAME}-${PKG_VERSION}-${PKG_RELEASE}.${arch}.rpm" "$out"
  cp "$spec" "$DIST/$PKG_NAME.spec"
  log "built $out"
}

export PKG_NAME PKG_VERSION PKG_RELEASE PKG_SUMMARY PKG_LICENSE PKG_HOMEPAGE PKG_MAINTAINER \
  PKG_DESCRIPTION PKG_RPM_GROUP
RPM_REQUIRES_LINES=""
export RPM_REQUIRES_LINES CHANGELOG_DATE
CHANGELOG_DATE=$(LC_ALL=C date -u -d "@$SOURCE_DATE_EPOCH" '+%a %b %d %Y')

mkdir -p "$DIST"
for fmt in $PKG_FORMATS; do
  case $fmt in
  deb) build_deb ;;
  rpm) build_rpm ;;
  *) log "unknown format $fmt"; exit 1 ;;
  esac
done
