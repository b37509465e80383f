#!/usr/bin/env bash
# Install what modelshrink needs to build, test and benchmark on Debian 12 (bookworm).
#
#   scripts/deps.sh            Debian packages + .venv with the test pins (scripts/requirements-test.txt)
#   scripts/deps.sh --bench    also the benchmark peers (scripts/requirements-bench.txt)
#
# Idempotent and quick when nothing is missing: apt runs only for packages that are not installed
# (one `apt-get update` first), and pip runs only when an installed version differs from a pin.
# The venv is always made with Debian's /usr/bin/python3 so a fresh Debian machine behaves the
# same as a developer's machine that also has pyenv or conda on PATH. Works from any cwd.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
SYS_PY=/usr/bin/python3

want_bench=0
for arg in "$@"; do
    case "$arg" in
    --bench) want_bench=1 ;;
    -h | --help)
        sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "deps.sh: unknown option '$arg' (try --help)" >&2
        exit 2
        ;;
    esac
done

log() { echo "deps: $*"; }

# Serialise concurrent runs (test.sh and bench/run.sh may start at the same time).
lock="${TMPDIR:-/tmp}/modelshrink-deps-$(id -u)-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1).lock"
exec 9>"$lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi

# ---- Debian packages -------------------------------------------------------------------------
required_pkgs=(
    build-essential cmake pkg-config
    protobuf-c-compiler libprotobuf-c-dev libonnx-dev
    libxxhash-dev libcjson-dev zlib1g-dev libonnx-testdata
    python3-venv time python3-torch python3-torchvision
    clang valgrind groff-base
    chromium # tests/e2e/test_html.py renders the HTML pages (headless)
)
# Optional; their absence is not an error. man-db, bash-completion: tests/install/test_install.sh
# renders the manual page with `man -l` (else with groff alone) and runs the completion through
# bash-completion's helpers too (else on bash alone). slurm-wlm munge: the local
# single-node Slurm cluster of tests/e2e/test_slurm.py (it skips without them). On a systemd
# machine these packages also enable munge.service and the slurmctld/slurmd units; the latter
# do not start without an /etc/slurm/slurm.conf, and the test uses none of them.
optional_pkgs=(slurm-wlm munge man-db bash-completion)

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); fi
fi

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install $*"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
for p in "${required_pkgs[@]}"; do is_installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi
# libFuzzer (scripts/fuzz.sh) is in clang's runtime package, which clang only recommends.
clang_major="$(clang --version 2>/dev/null | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -n 1)"
if [ -n "$clang_major" ] && ! is_installed "libclang-rt-$clang_major-dev"; then
    apt_install "libclang-rt-$clang_major-dev"
fi
opt_missing=()
for p in "${optional_pkgs[@]}"; do is_installed "$p" || opt_missing+=("$p"); done
if [ "${#opt_missing[@]}" -gt 0 ]; then
    apt_install "${opt_missing[@]}" || log "warning: optional packages not installed: ${opt_missing[*]}"
fi

# ---- Python venv -----------------------------------------------------------------------------
reqs=("$ROOT/scripts/requirements-test.txt")
if [ "$want_bench" -eq 1 ]; then reqs+=("$ROOT/scripts/requirements-bench.txt"); fi

# A venv made by another interpreter (pyenv, conda) or a broken one is rebuilt.
if [ -x "$VENV/bin/python" ]; then
    base="$("$VENV/bin/python" -c 'import sys; print(sys.base_prefix)' 2>/dev/null || echo broken)"
    if [ "$base" != "$("$SYS_PY" -c 'import sys; print(sys.base_prefix)')" ]; then
        log "rebuilding $VENV (made by '$base', not $SYS_PY)"
        rm -rf "$VENV"
    fi
fi
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $SYS_PY"
    "$SYS_PY" -m venv "$VENV"
fi

# Prints nothing and exits 0 when every pin is installed at exactly its version.
pins_missing() {
    "$VENV/bin/python" - "$@" <<'EOF'
import sys
from importlib import metadata
bad = []
for path in sys.argv[1:]:
    for line in open(path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, want = line.partition("==")
        try:
            have = metadata.version(name.strip())
        except metadata.PackageNotFoundError:
            have = None
        if have != want.strip():
            bad.append(f"{name.strip()} (want {want.strip()}, have {have})")
print(", ".join(bad))
sys.exit(1 if bad else 0)
EOF
}

if why="$(pins_missing "${reqs[@]}")"; then
    log "venv up to date ($VENV)"
else
    log "pip install: $why"
    req_args=()
    for r in "${reqs[@]}"; do req_args+=(-r "$r"); done
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install -q "${req_args[@]}"
    if ! why="$(pins_missing "${reqs[@]}")"; then
        echo "deps: pins still not satisfied after pip install: $why" >&2
        exit 1
    fi
    log "venv ready ($VENV)"
fi

# ---- .venv-torch: the benchmarks' PyTorch peer ---------------------------------------------------
# A second venv that sees Debian's python3-torch (1.13, installed above) through
# --system-site-packages, plus safetensors at the test pin. scripts/bench/peer_pth.py runs in it.
if [ "$want_bench" -eq 1 ]; then
    TVENV="$ROOT/.venv-torch"
    # safetensors.torch imports packaging, which Debian's python3-torch does not bring; both go in
    # at their pins in scripts/requirements-test.txt.
    tpins=()
    for name in safetensors packaging; do
        pin="$(sed -n "s/^$name==\([^[:space:]#]*\).*/\1/p" "$ROOT/scripts/requirements-test.txt")"
        if [ -z "$pin" ]; then
            echo "deps: no $name pin in scripts/requirements-test.txt" >&2
            exit 1
        fi
        tpins+=("$name==$pin")
    done
    if [ -x "$TVENV/bin/python" ]; then
        base="$("$TVENV/bin/python" -c 'import sys; print(sys.base_prefix)' 2>/dev/null || echo broken)"
        if [ "$base" != "$("$SYS_PY" -c 'import sys; print(sys.base_prefix)')" ] ||
            ! grep -q '^include-system-site-packages = true' "$TVENV/pyvenv.cfg" 2>/dev/null; then
            log "rebuilding $TVENV (not a --system-site-packages venv of $SYS_PY)"
            rm -rf "$TVENV"
        fi
    fi
    if [ ! -x "$TVENV/bin/python" ]; then
        log "creating $TVENV with $SYS_PY --system-site-packages"
        "$SYS_PY" -m venv --system-site-packages "$TVENV"
    fi
    # Only the venv's own site-packages count: a Debian python3-packaging at another version
    # must not satisfy the pin.
    tmissing="$("$TVENV/bin/python" - "${tpins[@]}" <<'PYEOF'
import sys, sysconfig
from importlib import metadata
own = [sysconfig.get_paths()["purelib"]]
bad = []
for pin in sys.argv[1:]:
    name, _, want = pin.partition("==")
    have = [d.version for d in metadata.distributions(name=name, path=own)]
    if have[:1] != [want]:
        bad.append(pin)
print(" ".join(bad))
PYEOF
)"
    if [ -n "$tmissing" ]; then
        log "pip install into $TVENV: $tmissing"
        # shellcheck disable=SC2086  # $tmissing is a space-separated list of pins
        PIP_DISABLE_PIP_VERSION_CHECK=1 "$TVENV/bin/pip" install -q $tmissing
    fi
    # Not fatal: the other benchmark cases do not need it, and the checkpoint case fails with
    # this reason.
    if "$TVENV/bin/python" -c 'import torch, safetensors.torch' 2>/dev/null; then
        log "torch venv ready ($TVENV)"
    else
        log "warning: $TVENV cannot import torch and safetensors.torch (is python3-torch installed?)"
    fi
fi
