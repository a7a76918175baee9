# Shared settings of the vm/ scripts; sourced, never run.
# Everything built or downloaded lives in $MUSERLOAD_CACHE, outside the repository, keyed by
# kernel version and config so that later runs rebuild only what changed.
: "${MUSERLOAD_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/muserload}"
KERNEL_SERIES=7.3
BINDGEN_VERSION=0.72.1
LLVM_SUFFIX=-19
export MUSERLOAD_CACHE KERNEL_SERIES BINDGEN_VERSION LLVM_SUFFIX
export LIBCLANG_PATH=/usr/lib/llvm${LLVM_SUFFIX}/lib
export PATH="$HOME/.cargo/bin:$PATH"
export CCACHE_DIR="$MUSERLOAD_CACHE/ccache"
