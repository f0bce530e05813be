#!/usr/bin/env bash
# Build dist/k3snoded_<ver>_<arch>.deb and dist/k3snoded-<ver>-1.<arch>.rpm from the one
# description in packaging/meta.sh. Run from anywhere; needs dpkg-deb, rpmbuild, a python3 with
# venv (only to run pip) and PyPI (or an index with the pinned wheels). No compiler, no -dev
# package: every extension module is a manylinux wheel for its target ABI.
#
#   packaging/build.sh              both packages
#   PKG_FORMATS=deb packaging/build.sh
#   DIST=/tmp/out K3SNODED_VERSION_SUFFIX=+test1 packaging/build.sh
#
# One package for every supported distribution (packaging/README.md): /opt/k3snoded is a
# virtualenv whose bin/ links python3.11, 3.12 and 3.13 of the system, with one site-packages per
# CPython version (lib/python3.X/site-packages: the wheels with C extensions for that ABI) and
# lib/common (pure wheels and k3snoded itself). /usr/bin/k3snoded runs the newest of those
# interpreters the machine has. It is assembled in <stage>/opt/k3snoded and names no stage path
# (the build fails if it does). The package is built from the working tree (what the tests
# test); build releases from a clean checkout.
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
[ -x "$PKG_BUILD_PYTHON" ] || { log "$PKG_BUILD_PYTHON is missing (apt-get install python3-venv)"; exit 1; }
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

# 1. The private virtualenv, one tree per CPython ABI. ------------------------------------
# Hermetic: pip neither reads nor writes a cache, the build user's home (pip config, user site)
# is replaced by an empty one, and every extension module comes from a manylinux wheel fetched
# for the target ABI (pip download --python-version/--abi/--platform), never built here, so the
# result does not depend on the interpreters of the build machine. Pure wheels (py3-none-any,
# the same file for every ABI) go once into lib/common, which each ABI's site-packages names
# in a .pth file.
export HOME=$WORK/home PIP_NO_CACHE_DIR=1 PYTHONNOUSERSITE=1
mkdir -p "$HOME"
VSTAGE=$WORK/venv
VENV=$VSTAGE$VENV_DIR
log "tools with $PKG_BUILD_PYTHON ($("$PKG_BUILD_PYTHON" -V 2>&1)); ABIs: $PKG_PYTHONS"
"$PKG_BUILD_PYTHON" -m venv "$WORK/tools"
PIP=("$WORK/tools/bin/python" -m pip --disable-pip-version-check -q)
PLATFORMS=()
for p in $PKG_PLATFORMS; do PLATFORMS+=(--platform "$p"); done
target() { # target VERSION: pip's flags for that CPython ABI
  local abi=cp${1/./}
  echo --only-binary=:all: --python-version "$1" --implementation cp --abi "$abi" --abi abi3 \
    --abi none "${PLATFORMS[@]}"
}
mkdir -p "$WORK/src" "$WORK/wheels/pure"
cp -r pyproject.toml README.md k3snoded "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
"${PIP[@]}" wheel --no-deps -w "$WORK/wheels/pure" "$WORK/src" 2>&1 | quiet_pip
for v in $PKG_PYTHONS; do
  # shellcheck disable=SC2046 # target's words are separate flags on purpose
  "${PIP[@]}" download --no-deps $(target "$v") -d "$WORK/wheels/$v" \
    -r requirements/runtime.txt "${PKG_EXTRA_PINS[@]}" 2>&1 | quiet_pip
  for w in "$WORK/wheels/$v"/*-none-any.whl; do mv -f "$w" "$WORK/wheels/pure/"; done
done
mkdir -p "$VENV/bin" "$VENV/lib/common"
"${PIP[@]}" install --no-deps --no-compile --target "$VENV/lib/common" "$WORK/wheels/pure/"*.whl \
  2>&1 | quiet_pip
printf 'home = /usr/bin\ninclude-system-site-packages = false\n' >"$VENV/pyvenv.cfg"
for v in $PKG_PYTHONS; do
  site=$VENV/lib/python$v/site-packages
  # shellcheck disable=SC2046
  "${PIP[@]}" install --no-deps --no-compile $(target "$v") --target "$site" \
    "$WORK/wheels/$v/"*.whl 2>&1 | quiet_pip
  echo "$VENV_DIR/lib/common" >"$site/k3snoded-common.pth"
  ln -s "/usr/bin/python$v" "$VENV/bin/python$v"
done
# Every pin is there for every ABI, each of its requirements is met (what `pip check` would
# say), and everything imports with each ABI's interpreter that this machine has.
"$WORK/tools/bin/python" - "$VENV" "$PKG_PYTHONS" requirements/runtime.txt <<'PY' >&2
import pathlib, sys
from importlib.metadata import distributions
from pip._vendor.packaging.requirements import Requirement
venv, versions, pins = pathlib.Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3]
wanted = {l.split("==")[0].lower().replace("_", "-") for l in open(pins) if "==" in l and not l.startswith("#")}
for v in versions:
    paths = [str(venv / f"lib/python{v}/site-packages"), str(venv / "lib/common")]
    dists = {d.metadata["Name"].lower().replace("_", "-"): d for d in distributions(path=paths)}
    missing = (wanted | {"k3snoded"}) - set(dists)
    assert not missing, f"python{v}: missing {sorted(missing)}"
    env = {"python_version": v, "python_full_version": v + ".0", "sys_platform": "linux",
           "platform_system": "Linux", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix",
           "platform_machine": "x86_64", "extra": ""}
    for name, d in dists.items():
        for spec in d.requires or []:
            r = Requirement(spec)
            if r.marker is not None and not r.marker.evaluate(env):
                continue
            have = dists.get(r.name.lower().replace("_", "-"))
            assert have is not None, f"python{v}: {name} needs {r}, not pinned"
            assert have.version in r.specifier or not r.specifier, f"python{v}: {name} needs {r}, have {have.version}"
    print(f"build: python{v}: {len(dists)} distributions, requirements met")
PY
for v in $PKG_PYTHONS; do
  if [ -x "/usr/bin/python$v" ]; then
    "/usr/bin/python$v" -I -S -c "import sys; sys.path[:0] = sys.argv[1:]; \
import aiohttp, h11, zeroconf, yaml, pymysql, psycopg2, pyroute2, k3snoded.daemon" \
      "$VENV/lib/python$v/site-packages" "$VENV/lib/common"
    log "python$v: imports checked"
  else
    log "python$v: not on this machine; its tree is built from wheels but not imported here"
  fi
done
# The venv is sealed: no installer, no scripts, no record of where it was built.
rm -rf "$VENV"/lib/*/bin "$VENV"/lib/python*/site-packages/bin
find "$VENV" -name direct_url.json -delete
find "$VENV" -name RECORD -path '*k3snoded-*.dist-info*' -exec sed -i '/direct_url\.json/d' {} +
find "$VENV" -name __pycache__ -prune -exec rm -rf {} +
# Extension modules carry symbols the wheels did not strip; bundled shared libraries do not
# need to be executable.
find "$VENV/lib" -name '*.cpython-*.so' -exec strip --strip-unneeded {} +
find "$VENV/lib" -path '*.libs/*.so*' -type f -exec chmod 0644 {} +
# The ABI trees share many identical files (psycopg2-binary's bundled libpq/libssl, licences,
# pure modules of mixed wheels): one copy, the others relative symbolic links to it (hard links
# would make lintian warn, copies would make rpmlint count 27 MB of duplicates as an error).
"$WORK/tools/bin/python" - "$VENV/lib" <<'PY'
import hashlib, os, sys
first = {}
for top, _, files in sorted(os.walk(sys.argv[1])):
    for name in sorted(files):
        path = os.path.join(top, name)
        st = os.lstat(path)
        if not os.path.isfile(path) or os.path.islink(path) or st.st_size < 1024:
            continue
        with open(path, "rb") as f:
            key = (st.st_size, st.st_mode, hashlib.sha256(f.read()).digest())
        if key in first:
            os.unlink(path)
            os.symlink(os.path.relpath(first[key], top), path)
        else:
            first[key] = path
PY
# No bytecode is shipped: the installing machine compiles it (postinst/%posttrans) for the
# interpreters it has, and the command runs with -B, so nothing else is ever written there.
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
    "@POSTTRANS@": read("packaging/rpm/posttrans.sh"),
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
