#!/usr/bin/env bash
# What `cmake --install` gives a user, used the way a user would:
#
#   tests/install/test_install.sh --build BUILD_DIR [--work DIR]
#
# Installs BUILD_DIR into a fresh prefix, then:
#   - checks the installed files, the SONAME (libmodelshrink.so.MAJOR, file version
#     MAJOR.MINOR.PATCH from include/modelshrink.h), the exported symbols (check_symbols.sh),
#     and that modelshrink.pc, the CMake package version, `modelshrink --version` and the
#     library's msh_version() all say the header's version;
#   - builds examples/shrink.c against the installed package four ways: pkg-config (shared;
#     static with --static), find_package (modelshrink::modelshrink; modelshrink_static with
#     COMPONENTS static), checks which library each one loads, and runs each on an ONNX model
#     (libonnx-testdata) and a checkpoint fixture, with and without --fp16: every output must
#     equal the installed CLI's byte for byte (cmp);
#   - renders the manual page (man -l, or groff; its sections otherwise) and checks that it and
#     the bash completion (bash -n, then completions run in a non-interactive bash) list every
#     option of every command's --help.
# Compiler, sanitizer and -Werror settings come from BUILD_DIR/CMakeCache.txt, so an ASan build
# builds its examples with ASan too. Exits 77 (skipped) without libonnx-testdata.
set -uo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build='' work=''
while [ $# -gt 0 ]; do
    case "$1" in
    --build) build="$2" ;;
    --work) work="$2" ;;
    -h | --help)
        sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "test_install.sh: unknown argument '$1' (try --help)" >&2
        exit 2
        ;;
    esac
    shift 2 || exit 2
done
if [ -z "$build" ] || [ ! -f "$build/CMakeCache.txt" ]; then
    echo "test_install.sh: --build must name a configured and built build folder" >&2
    exit 2
fi
build="$(cd "$build" && pwd)"
work="${work:-$build/tests/install_work}"

ONNX_MODEL=/usr/share/libonnx-testdata/data/pytorch-converted/test_Conv3d_groups/model.onnx
CKPT="$SRC/tests/fixtures/pth/resnet_adam.pth"
if [ ! -f "$ONNX_MODEL" ]; then
    echo "libonnx-testdata is not installed (scripts/deps.sh installs it): skipped"
    exit 77
fi

cache() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt" | head -n 1; }
CC="$(cache CMAKE_C_COMPILER)"
LIBDIR="$(cache CMAKE_INSTALL_LIBDIR)"
CUDA_ON="$(grep -c '^CMAKE_CUDA_COMPILER:' "$build/CMakeCache.txt")"
CFLAGS=(-std=c11 -Wall -Wextra -Wpedantic -O2)
[ "$(cache MSH_WERROR)" = ON ] && CFLAGS+=(-Werror)
[ "$(cache MSH_SANITIZE)" = ON ] && CFLAGS+=("-fsanitize=address,undefined" -fno-omit-frame-pointer)

hdr="$SRC/include/modelshrink.h"
ver_part() { sed -n "s/^#define MSH_VERSION_$1 \([0-9]*\).*/\1/p" "$hdr"; }
VERSION="$(ver_part MAJOR).$(ver_part MINOR).$(ver_part PATCH)"
MAJOR="$(ver_part MAJOR)"

failed=0
ok() { echo "ok: $*"; }
fail() {
    echo "FAIL: $*"
    failed=$((failed + 1))
}
same() { # same WHAT GOT WANT
    if [ "$2" = "$3" ]; then ok "$1: $2"; else fail "$1: '$2', expected '$3'"; fi
}
check() { # check DESCRIPTION COMMAND...: run it, quietly unless it fails
    local out
    if out="$("${@:2}" 2>&1)"; then
        ok "$1"
    else
        fail "$1"
        printf '%s\n' "$out" | tail -n 30 | sed 's/^/    /'
    fi
}

rm -rf "$work"
mkdir -p "$work"
P="$work/prefix"
echo "== cmake --install $build --prefix $P"
cmake --install "$build" --prefix "$P" >"$work/install.log" 2>&1 || {
    cat "$work/install.log"
    fail "cmake --install"
    exit 1
}

# ---- the installed files ----
L="$P/$LIBDIR"
failed_before=$failed
for f in bin/modelshrink "$LIBDIR/libmodelshrink.so" "$LIBDIR/libmodelshrink.so.$MAJOR" \
    "$LIBDIR/libmodelshrink.so.$VERSION" "$LIBDIR/libmodelshrink.a" include/modelshrink.h \
    share/modelshrink/schema/inspect.schema.json share/modelshrink/schema/diff.schema.json \
    "$LIBDIR/pkgconfig/modelshrink.pc" "$LIBDIR/cmake/modelshrink/modelshrinkConfig.cmake" \
    "$LIBDIR/cmake/modelshrink/modelshrinkConfigVersion.cmake" \
    "$LIBDIR/cmake/modelshrink/modelshrinkTargets.cmake" share/man/man1/modelshrink.1 \
    share/bash-completion/completions/modelshrink share/doc/modelshrink/LICENSE; do
    [ -e "$P/$f" ] || fail "not installed: $f"
done
for f in libmsh.a libmsh_cuda.a libmsh_onnx_pb.a; do
    [ -e "$L/$f" ] && fail "internal archive installed: $LIBDIR/$f"
done
[ "$failed" -eq "$failed_before" ] && ok "installed files"
same "libmodelshrink.so.$MAJOR points at" "$(readlink "$L/libmodelshrink.so.$MAJOR")" \
    "libmodelshrink.so.$VERSION"
same "SONAME" "$(readelf -d "$L/libmodelshrink.so.$VERSION" |
    sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')" "libmodelshrink.so.$MAJOR"
check "exported symbols" "$SRC/tests/install/check_symbols.sh" --cc "$CC" \
    --header "$P/include/modelshrink.h" --shared "$L/libmodelshrink.so" \
    --static "$L/libmodelshrink.a"
same "modelshrink --version" "$("$P/bin/modelshrink" --version | awk '{print $2}')" "$VERSION"

# ---- pkg-config ----
export PKG_CONFIG_PATH="$L/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
same "modelshrink.pc's version" "$(pkg-config --modversion modelshrink)" "$VERSION"
grep -q '^# SPDX-License-Identifier: Apache-2.0$' "$L/pkgconfig/modelshrink.pc" ||
    fail "modelshrink.pc has no SPDX identifier"
needs() { # needs EXE: the shared libraries it needs
    readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'
}
mkdir -p "$work/pc"
# shellcheck disable=SC2046 # pkg-config's output is a list of flags
if "$CC" "${CFLAGS[@]}" $(pkg-config --cflags modelshrink) "$SRC/examples/shrink.c" \
    -o "$work/pc/shrink-shared" $(pkg-config --libs modelshrink) -Wl,-rpath,"$L" \
    >"$work/pc/shared.log" 2>&1; then
    ok "pkg-config, shared: built"
    needs "$work/pc/shrink-shared" | grep -qx "libmodelshrink.so.$MAJOR" ||
        fail "pkg-config, shared: does not load libmodelshrink.so.$MAJOR"
else
    fail "pkg-config, shared: build"
    cat "$work/pc/shared.log"
fi
# The shared library's msh_version() against the header's.
printf '#include <modelshrink.h>\n#include <stdio.h>\nint main(void) { puts(msh_version()); return 0; }\n' \
    >"$work/pc/version.c"
# shellcheck disable=SC2046
if "$CC" "${CFLAGS[@]}" $(pkg-config --cflags modelshrink) "$work/pc/version.c" \
    -o "$work/pc/version" $(pkg-config --libs modelshrink) -Wl,-rpath,"$L"; then
    same "msh_version() of libmodelshrink.so" "$("$work/pc/version")" "$VERSION"
else
    fail "a program printing msh_version(): build"
fi
# Static: `pkg-config --static` adds Requires.private and Libs.private; -l:libmodelshrink.a
# picks the archive where the linker would prefer the shared library beside it.
static_libs="$(pkg-config --libs --static modelshrink | sed 's/-lmodelshrink\b/-l:libmodelshrink.a/')"
# shellcheck disable=SC2046,SC2086
if "$CC" "${CFLAGS[@]}" $(pkg-config --cflags --static modelshrink) "$SRC/examples/shrink.c" \
    -o "$work/pc/shrink-static" $static_libs >"$work/pc/static.log" 2>&1; then
    ok "pkg-config --static: built ($static_libs)"
    needs "$work/pc/shrink-static" | grep -q '^libmodelshrink' &&
        fail "pkg-config --static: still loads libmodelshrink.so"
else
    fail "pkg-config --static: build ($static_libs)"
    cat "$work/pc/static.log"
fi

# ---- find_package ----
for kind in shared static; do
    b="$work/cmake-$kind"
    static_flag=OFF
    [ "$kind" = static ] && static_flag=ON
    if cmake -S "$SRC/examples" -B "$b" -DCMAKE_PREFIX_PATH="$P" -DCMAKE_C_COMPILER="$CC" \
        -DCMAKE_BUILD_TYPE=Release -DSHRINK_STATIC="$static_flag" \
        -DCMAKE_C_FLAGS="${CFLAGS[*]}" >"$work/cmake-$kind.log" 2>&1 &&
        cmake --build "$b" >>"$work/cmake-$kind.log" 2>&1; then
        ok "find_package, $kind: built"
        if [ "$kind" = shared ]; then
            needs "$b/shrink" | grep -qx "libmodelshrink.so.$MAJOR" ||
                fail "find_package, shared: does not load libmodelshrink.so.$MAJOR"
        else
            needs "$b/shrink" | grep -q '^libmodelshrink' &&
                fail "find_package, static: still loads libmodelshrink.so"
        fi
    else
        fail "find_package, $kind: configure or build"
        cat "$work/cmake-$kind.log"
    fi
done
if [ "$CUDA_ON" -gt 0 ]; then
    needs "$work/pc/shrink-static" | grep -q '^libcudart' ||
        fail "CUDA build: the static example does not load the CUDA runtime"
fi

# ---- each build converts as the CLI does, byte for byte ----
mkdir -p "$work/out"
run_case() { # run_case NAME INPUT EXT [--fp16]
    local name="$1" in="$2" ext="$3"
    shift 3
    local ref="$work/out/$name-cli.$ext"
    if ! "$P/bin/modelshrink" convert -q "$@" "$in" -o "$ref" >"$work/out/$name-cli.log" 2>&1; then
        fail "$name: the CLI's conversion"
        cat "$work/out/$name-cli.log"
        return
    fi
    local exe out
    for exe in "$work/pc/shrink-shared" "$work/pc/shrink-static" "$work/cmake-shared/shrink" \
        "$work/cmake-static/shrink"; do
        [ -x "$exe" ] || continue
        out="$work/out/$name-$(basename "$(dirname "$exe")")-$(basename "$exe").$ext"
        if ! "$exe" "$in" "$out" "$@" >"$out.log" 2>&1; then
            fail "$name: ${exe#"$work"/}"
            cat "$out.log"
        elif ! cmp "$ref" "$out"; then
            fail "$name: ${exe#"$work"/} wrote other bytes than the CLI"
        fi
    done
    ok "$name: every build's output equals the CLI's ($(wc -c <"$ref") bytes)"
}
run_case onnx "$ONNX_MODEL" onnx
run_case onnx-fp16 "$ONNX_MODEL" onnx --fp16
run_case ckpt "$CKPT" safetensors
run_case ckpt-fp16 "$CKPT" safetensors --fp16

# ---- the manual page ----
man1="$P/share/man/man1/modelshrink.1"
if command -v man >/dev/null 2>&1 && command -v groff >/dev/null 2>&1; then
    MANWIDTH=100 MAN_KEEP_FORMATTING=0 man -l "$man1" 2>"$work/man.err" | col -b >"$work/man.txt"
    how="man -l"
elif command -v groff >/dev/null 2>&1; then
    groff -man -Tascii "$man1" 2>"$work/man.err" | col -b >"$work/man.txt"
    how="groff"
else
    # no formatter: the source itself, its escapes undone
    sed -e 's/\\-/-/g' -e 's/\\f[BIR]//g' -e 's/^\.SH //' -e 's/^\.SS //' "$man1" >"$work/man.txt"
    : >"$work/man.err"
    how="no formatter; source"
fi
if command -v groff >/dev/null 2>&1; then
    groff -man -ww -z "$man1" 2>>"$work/man.err"
fi
if [ -s "$work/man.err" ]; then
    fail "manual page: warnings"
    sed 's/^/    /' "$work/man.err"
fi
for s in NAME SYNOPSIS DESCRIPTION OPTIONS COMMANDS "EXIT STATUS"; do
    grep -q "^$s" "$work/man.txt" || fail "manual page: no $s section"
done
grep -q "modelshrink $VERSION" "$work/man.txt" || fail "manual page: no version $VERSION"

# ---- the bash completion ----
comp="$P/share/bash-completion/completions/modelshrink"
check "bash -n on the completion" bash -n "$comp"
mkdir -p "$work/complete/zoo"
touch "$work/complete/model.onnx" "$work/complete/model.safetensors" "$work/complete/notes.txt"
# Completions are computed in a non-interactive bash, as readline would call the function: on
# bash alone, and also through bash-completion's _init_completion when it is installed.
prelude=
complete_line() { # complete_line WORD... : the completions of the last word, one a line
    (cd "$work/complete" && bash --norc --noprofile -c '
        if [ -n "$2" ]; then source "$2" || exit 1; fi
        source "$1" || exit 1
        shift 2
        COMP_WORDS=("$@")
        COMP_CWORD=$(($# - 1))
        COMP_LINE="$*"
        COMP_LINE=${COMP_LINE// = /=} # readline makes "=" a word of its own
        COMP_POINT=${#COMP_LINE}
        _modelshrink modelshrink "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
        printf "%s\n" "${COMPREPLY[@]}"' _ "$comp" "$prelude" "$@" 2>/dev/null)
}
expect_completion() { # expect_completion "EXPECTED WORDS" WORD...
    local want="$1" got
    shift
    got="$(complete_line "$@" | sort | tr '\n' ' ' | sed 's/ $//')"
    [ "$got" = "$want" ] || fail "completion of '$*'${prelude:+ (with $prelude)}: '$got', expected '$want'"
}
preludes=("")
bash_completion_lib=/usr/share/bash-completion/bash_completion
[ -f "$bash_completion_lib" ] && preludes+=("$bash_completion_lib")
for prelude in "${preludes[@]}"; do
    failed_before=$failed
    expect_completion "convert" modelshrink con
    expect_completion "convert diff help inspect report" modelshrink ""
    expect_completion "html merge" modelshrink report ""
    expect_completion "--device" modelshrink convert --dev
    expect_completion "auto cpu cuda" modelshrink convert --device ""
    expect_completion "pth" modelshrink convert --fp16 --format p
    expect_completion "cuda" modelshrink convert --device = cu
    expect_completion "" modelshrink convert --jobs ""
    expect_completion "--fp16 --fp16-clamp --fp16-max --fp16-min" modelshrink convert --fp16
    expect_completion "--all" modelshrink diff --a
    expect_completion "model.onnx model.safetensors" modelshrink inspect mo
    expect_completion "zoo" modelshrink convert --fp16 -o z
    expect_completion "notes.txt" modelshrink report merge --output n
    expect_completion "notes.txt" modelshrink report html -o n
    expect_completion "--html" modelshrink inspect --ht
    expect_completion "inspect" modelshrink help ins
    [ "$failed" -eq "$failed_before" ] && ok "completions${prelude:+ (with $prelude)}"
done
prelude=

# ---- every option of every --help is in the page and the completion ----
failed_before=$failed
for c in "" convert inspect diff "report" "report merge" "report html"; do
    # shellcheck disable=SC2086 # the command's words
    opts="$("$P/bin/modelshrink" $c --help | sed -nE 's/^  (-[a-z], )?(--[a-z0-9-]+).*/\2/p')"
    [ -n "$opts" ] || fail "no options found in 'modelshrink $c --help'"
    # shellcheck disable=SC2086
    offered=" $(complete_line modelshrink $c -- | tr '\n' ' ') "
    for o in $opts; do
        grep -qE -- "(^| )$o( |$)" "$work/man.txt" || fail "manual page: no $o (modelshrink $c)"
        [[ $offered == *" $o "* ]] || fail "completion: no $o after 'modelshrink $c'"
    done
done
[ "$failed" -eq "$failed_before" ] &&
    ok "manual page ($how) and completion: every option of every command's --help"

if [ "$failed" -eq 0 ]; then
    echo "test_install: all checks passed"
    exit 0
fi
echo "test_install: $failed check(s) FAILED"
exit 1
