#!/usr/bin/env bash
# Installs the third-party software the interop tests drive, into venvs in the
# user's cache folder (reused when present):
#   matrix-nio (PyPI), a real Matrix client library.
#   matrix-synapse (PyPI), the reference homeserver, as a federation peer.
set -euo pipefail

NIO_VERSION="0.25.2"
SYNAPSE_VERSION="1.163.2"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/myelin"
venv="${cache}/venv-nio-${NIO_VERSION}"
synapse="${cache}/venv-synapse-${SYNAPSE_VERSION}"

if [[ -x "${synapse}/bin/python" ]] && "${synapse}/bin/python" -c "import synapse" 2>/dev/null; then
    echo "interop: matrix-synapse ${SYNAPSE_VERSION} ready in ${synapse}"
else
    echo "interop: installing matrix-synapse ${SYNAPSE_VERSION} into ${synapse}"
    mkdir -p "${cache}"
    rm -rf "${synapse}"
    python3 -m venv "${synapse}"
    "${synapse}/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse==${SYNAPSE_VERSION}"
    "${synapse}/bin/python" -c "import synapse"
fi

if [[ -x "${venv}/bin/python" ]] && "${venv}/bin/python" -c "import nio" 2>/dev/null; then
    echo "interop: matrix-nio ${NIO_VERSION} ready in ${venv}"
    exit 0
fi
echo "interop: installing matrix-nio ${NIO_VERSION} into ${venv}"
mkdir -p "${cache}"
rm -rf "${venv}"
python3 -m venv "${venv}"
"${venv}/bin/pip" install --quiet --disable-pip-version-check "matrix-nio==${NIO_VERSION}"
"${venv}/bin/python" -c "import nio"
echo "interop: matrix-nio ${NIO_VERSION} installed"
