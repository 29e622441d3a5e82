#!/usr/bin/env bash
# Installs the third-party software the interop tests drive, into venvs in the
# user's cache folder (reused when present):
#   matrix-nio[e2e] (PyPI), a real Matrix client library, with its end-to-end
#   encryption (python-olm, libolm's CFFI bindings: a second crypto stack
#   beside vodozemac in sdk-tests/). python-olm 3.2.16 ships manylinux wheels
#   with libolm built in (CPython 3.8-3.12 on x86_64 and aarch64); on a Python
#   without one pip builds the sdist (libolm's source is inside), which needs
#   g++, make and Python's headers.
#   matrix-synapse (PyPI), the reference homeserver, as a federation peer.
#   mautrix (PyPI), the Python appservice framework of the mautrix bridges.
#   matrix-appservice-bridge (npm), the Node appservice framework; 10.3.3 is
#   the newest that runs on Node 20 (11.x asks for Node 22).
set -euo pipefail

NIO_VERSION="0.25.2"
OLM_VERSION="3.2.16"
SYNAPSE_VERSION="1.163.2"
MAUTRIX_VERSION="0.21.1"
AIOHTTP_VERSION="3.14.5"
MAB_VERSION="10.3.3"
PSYCOPG2_VERSION="2.9.13"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/myelin"
venv="${cache}/venv-nio-${NIO_VERSION}"
synapse="${cache}/venv-synapse-${SYNAPSE_VERSION}"
mautrix="${cache}/venv-mautrix-${MAUTRIX_VERSION}"
mab="${cache}/node-mab-${MAB_VERSION}"

if [[ -x "${mautrix}/bin/python" ]] && "${mautrix}/bin/python" -c "import mautrix.appservice, aiohttp" 2>/dev/null; then
    echo "interop: mautrix ${MAUTRIX_VERSION} ready in ${mautrix}"
else
    echo "interop: installing mautrix ${MAUTRIX_VERSION} into ${mautrix}"
    mkdir -p "${cache}"
    rm -rf "${mautrix}"
    python3 -m venv "${mautrix}"
    "${mautrix}/bin/pip" install --quiet --disable-pip-version-check \
        "mautrix==${MAUTRIX_VERSION}" "aiohttp==${AIOHTTP_VERSION}"
    "${mautrix}/bin/python" -c "import mautrix.appservice, aiohttp"
fi

if [[ -f "${mab}/ok" ]] && [[ -d "${mab}/node_modules/matrix-appservice-bridge" ]]; then
    echo "interop: matrix-appservice-bridge ${MAB_VERSION} ready in ${mab}"
else
    echo "interop: installing matrix-appservice-bridge ${MAB_VERSION} into ${mab}"
    command -v npm >/dev/null || { echo "interop: npm (Node 20+) is needed for matrix-appservice-bridge" >&2; exit 1; }
    rm -rf "${mab}"
    mkdir -p "${mab}"
    # The bot SDK under the framework loads the Rust crypto module (E2EE) at
    # start, whose native library comes from GitHub releases, not from npm.
    # The bridge tests use no encryption: an override puts a stand-in there
    # that throws if anything ever calls into it.
    mkdir -p "${mab}/crypto-stub"
    cat > "${mab}/crypto-stub/package.json" <<'JSON'
{ "name": "@matrix-org/matrix-sdk-crypto-nodejs", "version": "0.0.0-myelin-stub", "main": "index.js" }
JSON
    cat > "${mab}/crypto-stub/index.js" <<'JS'
// Stand-in for the E2EE native module (not on npm): any use throws.
module.exports = new Proxy({}, {
    get(_, name) {
        if (name === "__esModule") return false;
        return function () { throw new Error(`E2EE is not available in the interop tests (${String(name)})`); };
    },
});
JS
    cat > "${mab}/package.json" <<JSON
{
  "name": "myelin-interop-mab",
  "private": true,
  "version": "1.0.0",
  "dependencies": { "matrix-appservice-bridge": "${MAB_VERSION}" },
  "overrides": { "@matrix-org/matrix-sdk-crypto-nodejs": "file:./crypto-stub" }
}
JSON
    (cd "${mab}" && npm install --no-audit --no-fund --loglevel=error)
    node -e "require('${mab}/node_modules/matrix-appservice-bridge')" >/dev/null
    touch "${mab}/ok"
fi

# PostgreSQL: the server for the Synapse-on-PostgreSQL import test, and
# psycopg2 in Synapse's venv (the wheel: no libpq headers needed).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "interop: installing postgresql"
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
if [[ -x "${synapse}/bin/python" ]] && "${synapse}/bin/python" -c "import synapse" 2>/dev/null; then
    echo "interop: matrix-synapse ${SYNAPSE_VERSION} ready in ${synapse}"
    "${synapse}/bin/python" -c "import psycopg2" 2>/dev/null \
        || "${synapse}/bin/pip" install --quiet --disable-pip-version-check "psycopg2-binary==${PSYCOPG2_VERSION}"
else
    echo "interop: installing matrix-synapse ${SYNAPSE_VERSION} into ${synapse}"
    mkdir -p "${cache}"
    rm -rf "${synapse}"
    python3 -m venv "${synapse}"
    "${synapse}/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse==${SYNAPSE_VERSION}" \
        "psycopg2-binary==${PSYCOPG2_VERSION}"
    "${synapse}/bin/python" -c "import synapse"
fi

# The import of olm upgrades a venv made before the e2e extra was installed.
nio_ready='import nio, olm; from nio.crypto import ENCRYPTION_ENABLED; assert ENCRYPTION_ENABLED'
if [[ -x "${venv}/bin/python" ]] && "${venv}/bin/python" -c "${nio_ready}" 2>/dev/null; then
    echo "interop: matrix-nio[e2e] ${NIO_VERSION} ready in ${venv}"
    exit 0
fi
echo "interop: installing matrix-nio[e2e] ${NIO_VERSION} (python-olm ${OLM_VERSION}) into ${venv}"
py_tag="$(python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
if ((py_tag < 38 || py_tag > 312)) || [[ "$(uname -m)" != x86_64 && "$(uname -m)" != aarch64 ]]; then
    # No python-olm wheel for this Python: pip builds the sdist, which carries
    # libolm's source and builds it with cmake or, without cmake, its Makefile
    # (so libolm-dev and cmake are not needed; g++, make and Python's headers are).
    need_apt=()
    for pkg in g++ make; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
    done
    python3 -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
        2>/dev/null || need_apt+=(python3-dev)
    if ((${#need_apt[@]})); then
        echo "interop: installing ${need_apt[*]} (python-olm builds libolm from source here)"
        SUDO=""
        [[ $(id -u) -ne 0 ]] && SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
    fi
fi
mkdir -p "${cache}"
rm -rf "${venv}"
python3 -m venv "${venv}"
"${venv}/bin/pip" install --quiet --disable-pip-version-check \
    "matrix-nio[e2e]==${NIO_VERSION}" "python-olm==${OLM_VERSION}"
"${venv}/bin/python" -c "${nio_ready}"
echo "interop: matrix-nio[e2e] ${NIO_VERSION} installed"
