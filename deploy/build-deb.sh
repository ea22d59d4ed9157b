#!/usr/bin/env bash
# Builds dist/charger-gateway_<version>_<arch>.deb (what `make deb` runs).
#
# The gateway and its pinned dependencies (setup.cfg) live in their own venv at
# /opt/charger-gateway/venv, made here from the system's /usr/bin/python3 in a
# staging tree and moved into place by rewriting the staging path, as
# dh-virtualenv does. The venv sees the system's site-packages for one thing
# only: Debian's python3-systemd (Recommends), for structured journald logging;
# Debian keeps that binding in step with libsystemd, and building it here would
# need a compiler and libsystemd-dev. The daemon runs without it (plain stderr,
# which journald records all the same). Everything else is installed into the
# venv (--ignore-installed), so Debian's own Python packages never stand in.
#
# Needs: python3-venv, dpkg (dpkg-deb), PyPI through pip (its cache is reused).
# Environment: DEB_PYTHON (default /usr/bin/python3), DEB_MAINTAINER, DEB_BUILD_DIR
# (default build/deb), DEB_OUT_DIR (default dist). Prints the path of the .deb.
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."

NAME=charger-gateway
PYTHON=${DEB_PYTHON:-/usr/bin/python3}
MAINTAINER=${DEB_MAINTAINER:-charger-gateway maintainers <charger-gateway@localhost>}
BUILD=$(realpath -m "${DEB_BUILD_DIR:-build/deb}")
STAGE=$BUILD/root
VENV=/opt/$NAME/venv
OUT=$(realpath -m "${DEB_OUT_DIR:-dist}")

VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' gateway/__init__.py)
ARCH=$(dpkg --print-architecture)  # the venv holds compiled wheels (PyYAML, websockets, ...)
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "$PYTHON is not Python 3.11 or newer; the package's venv is made from the target's system Python (set DEB_PYTHON)" >&2
    exit 1
fi
PY_MINOR=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PY_NEXT=$("$PYTHON" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
[ -n "$VERSION" ] || { echo "no __version__ in gateway/__init__.py" >&2; exit 1; }

rm -rf "$BUILD/src" "$BUILD/root"  # only what this script makes: DEB_BUILD_DIR may hold more
mkdir -p "$BUILD/src" "$STAGE" "$OUT"

# Only what the wheel is made of: no tests, no caches, no local venv.
tar -c --exclude=__pycache__ --exclude='*.pyc' setup.cfg pyproject.toml README.md gateway | tar -x -C "$BUILD/src"

# The venv, with the wheel of the gateway and its dependencies from PyPI.
"$PYTHON" -m venv --system-site-packages "$STAGE$VENV"
"$STAGE$VENV/bin/python" -m pip install --quiet --no-compile --ignore-installed "$BUILD/src"
# pip and setuptools are of no use at run time: nothing is installed into the venv there.
"$STAGE$VENV/bin/python" -m pip uninstall --quiet --yes pip setuptools
find "$STAGE$VENV" -depth -type d -name __pycache__ -exec rm -rf {} +
find "$STAGE$VENV" -name direct_url.json -delete  # it names the build directory
rm -f "$STAGE$VENV"/bin/[Aa]ctivate*              # the venv is run, never activated

# Move the venv from the staging tree to /opt: scripts, shebangs and pyvenv.cfg name their prefix.
# Text files only (-I): sed would corrupt a binary by shortening a string in it; one that names the
# staging path is left to fail the check below.
grep -rlIF --null "$STAGE" "$STAGE$VENV" | xargs -0 --no-run-if-empty sed -i "s|$STAGE$VENV|$VENV|g"
if grep -rqF "$BUILD" "$STAGE"; then
    echo "the build directory is still named in:" >&2
    grep -rlF "$BUILD" "$STAGE" >&2
    exit 1
fi

# The rest of the tree.
install -d "$STAGE/usr/bin"
ln -s "$VENV/bin/$NAME" "$STAGE/usr/bin/$NAME"
install -D -m 0644 deploy/$NAME.service "$STAGE/lib/systemd/system/$NAME.service"
install -D -m 0644 deploy/sysusers.conf "$STAGE/usr/lib/sysusers.d/$NAME.conf"
install -D -m 0644 deploy/polkit.rules "$STAGE/usr/share/polkit-1/rules.d/$NAME.rules"
# UpdateFirmware: the daemon's install command, and the root unit and script it asks to install the image.
install -D -m 0644 "deploy/$NAME-install@.service" "$STAGE/lib/systemd/system/$NAME-install@.service"
install -d "$STAGE/usr/lib/$NAME"
install -m 0755 deploy/request-firmware-install deploy/install-firmware "$STAGE/usr/lib/$NAME/"
# postinst gives /etc/charger-gateway and the config to group charger-gateway.
install -d -m 0750 "$STAGE/etc/$NAME"
install -d -m 0755 "$STAGE/etc/$NAME/profiles"
install -m 0640 deploy/gateway.yaml "$STAGE/etc/$NAME/gateway.yaml"
install -d "$STAGE/usr/share/doc/$NAME"
install -m 0644 README.md config/gateway.example.yaml docs/*.md deploy/debian/copyright "$STAGE/usr/share/doc/$NAME/"

# The control area.
install -d "$STAGE/DEBIAN"
install -m 0644 deploy/debian/conffiles "$STAGE/DEBIAN/conffiles"
install -m 0755 deploy/debian/postinst deploy/debian/prerm deploy/debian/postrm "$STAGE/DEBIAN/"
# polkitd runs polkit.rules (Reset Hard, firmware updates); without it the daemon runs, but can do neither.
cat >"$STAGE/DEBIAN/control" <<EOF
Package: $NAME
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
Depends: python3 (>= $PY_MINOR), python3 (<< $PY_NEXT), systemd | systemd-standalone-sysusers
Recommends: python3-systemd, polkitd
Section: net
Priority: optional
Description: charger-cluster gateway: Modbus slave chargers as one OCPP 1.6J charge point
 The daemon for the master charger of a cluster: it polls the slave chargers
 over Modbus RTU and TCP, buffers sessions in SQLite and forwards the whole
 cluster to an OCPP 1.6J backend over wired or GPRS uplinks. Includes the
 technician's command line (charger-gateway) and a hardened systemd unit.
EOF

DEB=$OUT/${NAME}_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
