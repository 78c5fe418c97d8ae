#!/usr/bin/env bash
# Build warren-mobile's cdylib and generate its Kotlin, Swift and Python bindings into
# mobile-bindings/bindings/{kotlin,swift,python} (gitignored).
#
#   mobile-bindings/generate.sh                       # debug build
#   PROFILE=release-mobile mobile-bindings/generate.sh  # the size-optimised build apps ship
#
# Honours CARGO_TARGET_DIR. The bindings depend only on the API, not on the target: the
# ones generated from a host build are the ones an Android or iOS app uses with the
# libraries cross-built as docs/embedding.md describes. The Python directory also gets a
# copy of the host library, so `PYTHONPATH=mobile-bindings/bindings/python python3` can
# `import warren_mobile` at once.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
profile="${PROFILE:-dev}"
out="${OUT_DIR:-$here/bindings}"

cd "$root"
target_dir="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')}"
case "$profile" in
    dev) profile_dir=debug ;;
    *) profile_dir="$profile" ;;
esac

echo "== building warren-mobile ($profile)"
cargo build -p warren-mobile --lib --profile "$profile"
# The generator is a development tool: a debug build is fine whatever the library's
# profile.
cargo build -p warren-mobile --bin uniffi-bindgen

case "$(uname -s)" in
    Darwin) lib_name=libwarren_mobile.dylib ;;
    MINGW* | MSYS* | CYGWIN*) lib_name=warren_mobile.dll ;;
    *) lib_name=libwarren_mobile.so ;;
esac
lib="$target_dir/$profile_dir/$lib_name"
bindgen="$target_dir/debug/uniffi-bindgen"
[ -f "$lib" ] || { echo "no library at $lib" >&2; exit 1; }

# Formatting needs ktlint / swiftformat; without them uniffi would only warn.
format_flag=--no-format
if [ "${FORMAT:-0}" = 1 ]; then format_flag=; fi

for language in kotlin swift python; do
    echo "== $language -> $out/$language"
    rm -rf "${out:?}/$language"
    mkdir -p "$out/$language"
    "$bindgen" generate $format_flag --library "$lib" --language "$language" \
        --out-dir "$out/$language"
done
cp "$lib" "$out/python/"

echo "== done"
find "$out" -type f | sort
