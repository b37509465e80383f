#!/usr/bin/env bash
# The libraries export what include/modelshrink.h promises:
#
#   tests/install/check_symbols.sh --cc CC --header modelshrink.h [--shared LIB.so] [--static LIB.a]
#
# The public API is the set of functions the header marks MSH_API, found by preprocessing it
# with MSH_API defined as a marker (comments, macros and #if branches then cannot confuse it).
#   shared: the dynamic symbols it defines (nm -D --defined-only) are exactly that set;
#   static: every global symbol it defines carries the project's prefix (msh_, MODELSHRINK_, or
#           onnx__ of the generated protobuf-c code), and every MSH_API function is there.
# Exits 0 when all hold, 1 with the differences otherwise.
set -uo pipefail

cc=cc header='' shared='' static=''
while [ $# -gt 0 ]; do
    case "$1" in
    --cc) cc="$2" ;;
    --header) header="$2" ;;
    --shared) shared="$2" ;;
    --static) static="$2" ;;
    *)
        echo "check_symbols.sh: unknown argument '$1'" >&2
        exit 2
        ;;
    esac
    shift 2 || exit 2
done
[ -n "$header" ] || {
    echo "check_symbols.sh: --header is required" >&2
    exit 2
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

marker=__msh_api_marker__
"$cc" -E -P -D"MSH_API=$marker" -x c "$header" >"$tmp/pp.c" || exit 1
# Declarations are split at ';'; in each one with the marker, the name is the identifier just
# before the first '('.
tr '\n' ' ' <"$tmp/pp.c" | tr ';' '\n' | grep -o "${marker}[^(]*(" |
    sed -E 's/.*[^A-Za-z0-9_]([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*\($/\1/' | sort -u >"$tmp/api"
n_api=$(wc -l <"$tmp/api")
if [ "$n_api" -lt 10 ]; then
    echo "FAIL: only $n_api MSH_API functions found in $header"
    exit 1
fi

fail=0
if [ -n "$shared" ]; then
    nm -D --defined-only "$shared" | awk 'NF >= 3 {print $3}' | sort -u >"$tmp/shared" || exit 1
    if cmp -s "$tmp/api" "$tmp/shared"; then
        echo "ok: $shared exports exactly the $n_api MSH_API functions"
    else
        echo "FAIL: $shared's dynamic symbols differ from the MSH_API functions of $header"
        comm -23 "$tmp/shared" "$tmp/api" | sed 's/^/  exported, not MSH_API: /'
        comm -13 "$tmp/shared" "$tmp/api" | sed 's/^/  MSH_API, not exported: /'
        fail=1
    fi
fi
if [ -n "$static" ]; then
    nm -g --defined-only "$static" | awk 'NF >= 3 {print $3}' | sort -u >"$tmp/static" || exit 1
    grep -vE '^(msh_|MODELSHRINK_|onnx__)' "$tmp/static" >"$tmp/foreign"
    if [ -s "$tmp/foreign" ]; then
        echo "FAIL: $static defines global symbols without the project's prefix:"
        sed 's/^/  /' "$tmp/foreign"
        fail=1
    else
        echo "ok: $static's $(wc -l <"$tmp/static") global symbols all carry the project's prefix"
    fi
    if comm -13 "$tmp/static" "$tmp/api" | grep -q .; then
        echo "FAIL: $static lacks MSH_API functions:"
        comm -13 "$tmp/static" "$tmp/api" | sed 's/^/  /'
        fail=1
    else
        echo "ok: $static defines every MSH_API function"
    fi
fi
exit "$fail"
