#!/usr/bin/env bash
# Paired runs of dsmpi's TCP mesh against Open MPI restricted to TCP (issue 6's
# comparison): each `dsmexec --transport tcp` run of dsmpi_bench is followed at once by
# the same under `mpirun --mca btl tcp,self`, and the table gives, per operation and
# size, the median over pairs of the ratio dsmpi / Open MPI (< 1: dsmpi faster) and in
# how many pairs dsmpi was faster. On a small shared VM single runs swing by 2x with
# where the scheduler puts the ranks; pairing takes the drift out of the ratio.
#
# usage: benches/paired.sh [ROUNDS] [RANKS] [OPS] [MAX_SIZE]   (time operations, not bw)
#   e.g. benches/paired.sh 8 4 latency,bcast,scatter,alltoall 1048576
# BIND=core pins the ranks on both sides (dsmexec --bind-to core, mpirun --bind-to
# core:overload-allowed); the default leaves placement to the kernel, as both
# launchers do by default when the ranks outnumber the cores.
# Needs the mpi build: cargo build --release --features mpi --examples --workspace --bins
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-8}; np=${2:-4}; ops=${3:-latency,bcast,scatter,alltoall}; max=${4:-1048576}
dir=${CARGO_TARGET_DIR:-target}/release
bench=$dir/examples/dsmpi_bench
if [ ! -x "$bench" ] || [ ! -x "$dir/dsmexec" ] || ! command -v mpirun >/dev/null; then
  echo "paired.sh: needs $bench and $dir/dsmexec built with --features mpi, and mpirun" >&2
  exit 2
fi
dbind=(); mbind=(--bind-to none)
if [ "${BIND:-none}" = core ]; then dbind=(--bind-to core); mbind=(--bind-to core:overload-allowed); fi
common=(--ops "$ops" --max-size "$max" --samples 21 --emit)
for _ in $(seq "$rounds"); do
  "$dir/dsmexec" --transport tcp "${dbind[@]}" -n "$np" "$bench" "${common[@]}" 2>/dev/null |
    awk '$1 == "@" { print "d", $3, $4, $5 }'
  mpirun --allow-run-as-root --oversubscribe "${mbind[@]}" -n "$np" --mca btl tcp,self \
    "$bench" "${common[@]}" 2>/dev/null | awk '$1 == "@" && $2 == "mpi-native" { print "o", $3, $4, $5 }'
done | awk -v np="$np" -v rounds="$rounds" '
  { k = $2 " " $3; n[$1 k]++; v[$1 k, n[$1 k]] = $4; keys[k] = 1 }
  function median(a, m,   i, j, t) {
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
  }
  END {
    printf "# %d ranks, %d pairs: op size  dsmpi-tcp median  ompi-tcp median  per-pair ratio median  pairs dsmpi faster\n", np, rounds
    for (k in keys) {
      m = n["d" k] < n["o" k] ? n["d" k] : n["o" k]
      if (m == 0) continue
      delete r; delete d; delete o; f = 0
      for (i = 1; i <= m; i++) { d[i] = v["d" k, i]; o[i] = v["o" k, i]; r[i] = d[i] / o[i]; if (r[i] < 1) f++ }
      printf "%-10s %8s  %10.1f  %10.1f  %6.2f  %d/%d\n", substr(k, 1, index(k, " ") - 1), substr(k, index(k, " ") + 1), median(d, m), median(o, m), median(r, m), f, m
    }
  }' | sort -k1,1 -k2,2n
