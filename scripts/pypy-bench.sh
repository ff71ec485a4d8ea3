#!/usr/bin/env bash
# scripts/pypy-bench.sh - run `vmxlab bench` under PyPy: Debian's pypy3 (7.3.11, Python 3.9), unpacked
# into a cache directory, not installed (emulation.md section 3: it runs with LD_LIBRARY_PATH pointing
# at its own libpypy3.9-c.so).
#
#   scripts/pypy-bench.sh [vmxlab bench arguments, e.g. --quick alu-mem-pm32]
#
# Steps: 1. apt-get download pypy3 pypy3-lib and dpkg-deb -x them into $VMXLAB_PYPY_CACHE
# (default: cache/pypy in the work tree, which .gitignore leaves out); 2. get iced-x86 for PyPy into
# $VMXLAB_PYPY_CACHE/site with pip's --python option (PyPI has no PyPy wheel of iced-x86, so pip builds
# the sdist: Rust via setuptools-rust and cargo, which must download the crates it depends on from
# crates.io); 3. run `pypy3 -m vmxlab bench` from the work tree (vmxlab's pyproject says Python >= 3.11
# for the CPython install; the sources themselves also run on 3.9, see docs/bench.md).
#
# When iced-x86 cannot be built (on the development machines: crates.io is out of reach), the bench
# runs with bench/external/pypy_iced on the path instead: an iced_x86 stand-in that decodes in a CPython
# child process with the real iced-x86 (a pipe round trip per decoded block; a measuring aid, see its
# docstring).  VMXLAB_PYPY_NO_SHIM=1 refuses that and exits 3.
#
# Exit status: that of `vmxlab bench`; 3 when PyPy cannot be had, or iced-x86 for PyPy cannot and the
# stand-in is refused (the reason is printed).  docs/bench.md says what happened on the development
# machine.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${VMXLAB_PYPY_CACHE:-$ROOT/cache/pypy}
ICED_VERSION=${ICED_VERSION:-1.21.0}
PYPY=$CACHE/root/usr/bin/pypy3
SITE=$CACHE/site

mkdir -p "$CACHE"
if [ ! -x "$PYPY" ]; then
    echo "pypy-bench: fetching Debian's pypy3 and pypy3-lib into $CACHE" >&2
    if ! (cd "$CACHE" && apt-get download pypy3 pypy3-lib >/dev/null); then
        echo "pypy-bench: apt-get download pypy3 pypy3-lib failed (run apt-get update first?)" >&2
        exit 3
    fi
    for deb in "$CACHE"/pypy3*.deb; do
        dpkg-deb -x "$deb" "$CACHE/root"
    done
fi
export LD_LIBRARY_PATH="$CACHE/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$PYPY" --version >&2

SHIM=$ROOT/bench/external/pypy_iced
FAILED=$CACHE/iced-build.failed
USE_SHIM=0
if ! PYTHONPATH="$SITE" "$PYPY" -c "import iced_x86" 2>/dev/null; then
    # pip itself comes from the project's venv (or the system): Debian's PyPy has no pip and no bundled
    # ensurepip wheels; pip >= 22.3 installs for another interpreter with --python
    PIP_PY=$ROOT/.venv/bin/python
    [ -x "$PIP_PY" ] || PIP_PY=python3
    if [ ! -e "$FAILED" ]; then
        echo "pypy-bench: building iced-x86 $ICED_VERSION for PyPy (no PyPy wheel on PyPI: sdist + cargo)" >&2
        if ! "$PIP_PY" -m pip --python "$PYPY" install --target "$SITE" "iced-x86==$ICED_VERSION" >"$FAILED" 2>&1; then
            echo "pypy-bench: cannot build iced-x86 for PyPy; from $FAILED:" >&2
            grep -E "Could not resolve|failed to get|error:" "$FAILED" | head -4 >&2 || tail -4 "$FAILED" >&2
        else
            rm -f "$FAILED"
        fi
    fi
    if [ -e "$FAILED" ]; then
        if [ -n "${VMXLAB_PYPY_NO_SHIM:-}" ]; then
            echo "pypy-bench: vmxlab decodes with iced-x86 and cannot run without it (docs/bench.md, 'PyPy')" >&2
            exit 3
        fi
        USE_SHIM=1
        export VMXLAB_ICED_PYTHON=$PIP_PY
        echo "pypy-bench: iced-x86 for PyPy unavailable (rm $FAILED to retry the build): decoding in a CPython" \
             "child instead ($SHIM, $VMXLAB_ICED_PYTHON). Rows that decode per VM exit are not representative." >&2
    fi
fi

cd "$ROOT"
if [ "$USE_SHIM" = 1 ]; then
    PYTHONPATH="$SHIM:$ROOT" exec "$PYPY" -m vmxlab bench "$@"
fi
PYTHONPATH="$SITE:$ROOT" exec "$PYPY" -m vmxlab bench "$@"
