# Shared by the scripts: sourced, not run. Sets the root, installs what is
# missing, and makes mpirun usable as root (CI and these machines run as root).

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Swift's crash backtracer prints ~70 lines per rank; a failing rank's own
# message is what matters.
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=no}

MPIRUN=${MPIRUN:-mpirun}

# Prints a command, then runs it.
run() {
  echo "+ $*" >&2
  "$@"
}

# apt-get install the Debian packages given, if any is missing.
install_packages() {
  local missing=()
  local package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing Debian packages ${missing[*]}; install them (as root: apt-get install -y ${missing[*]})" >&2
    return 1
  fi
  run apt-get update -q
  DEBIAN_FRONTEND=noninteractive run apt-get install -y -q "${missing[@]}"
}

# Open MPI and pkg-config, through which Package.swift finds it.
install_mpi() {
  install_packages libopenmpi-dev openmpi-bin pkg-config
}

# The release build of a product (default: the tool); prints its path. The
# Swift runtime is linked statically: every rank then maps only the runtime
# code it runs rather than whole shared libraries (3.6 MB less resident
# memory per rank, measured).
#
# Callers run it in a command substitution, `tool=$(build_release) || exit 1`,
# where bash does not apply `set -e`: every step returns its failure
# explicitly, so a stale binary from an earlier build is never tested.
# scripts/test-build-failure checks this.
build_release() {
  local product=${1:-instnorm} folder
  run swift build -c release --static-swift-stdlib --product "$product" >&2 || return
  folder=$(swift build -c release --static-swift-stdlib --show-bin-path) || return
  if [ ! -x "$folder/$product" ]; then
    echo "error: the release build left no executable at $folder/$product" >&2
    return 1
  fi
  echo "$folder/$product"
}

# Ranks for a default run: one per core.
cores() {
  nproc 2>/dev/null || getconf _NPROCESSORS_ONLN
}

# The machine's facts and the git revision, as `# ` lines to record beside a
# figure: CPU, cores, memory, kernel, Open MPI, Swift, revision (+ dirty), date.
machine_facts() {
  local revision dirty=""
  revision=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
  [ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ] && dirty=" (dirty: uncommitted changes)"
  echo "# machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(cores) cores," \
    "$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) memory, Linux $(uname -r), host $(hostname)"
  echo "# software: $($MPIRUN --version 2>/dev/null | head -1 | sed 's/^mpirun (\(.*\)) /\1 /'), $(swift --version 2>/dev/null | grep -m1 -o 'Swift version [^ ]*')"
  echo "# git revision: $revision$dirty"
  echo "# date: $(date -u +%FT%TZ)"
}
