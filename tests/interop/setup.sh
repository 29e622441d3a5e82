#!/usr/bin/env bash
# Installs the third-party software the interop tests drive, into venvs in the
# user's cache folder (reused when present):
#   matrix-nio (PyPI), a real Matrix client library.
# Synapse joins this script with the federation issue.
set -euo pipefail

NIO_VERSION="0.25.2"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/myelin"
venv="${cache}/venv-nio-${NIO_VERSION}"

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
