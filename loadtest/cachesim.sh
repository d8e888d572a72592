#!/bin/bash
# Instructions and simulated cache misses a request for one `tenant-proxy-loadtest run` row,
# under valgrind's callgrind with its cache simulation. This VM has no hardware counters, so
# this is how the c64 working-set figures in README.md (*Why c64 costs more than c16*) were
# made. The row runs twice (6,000 and 2,000 requests) and the difference is divided by 4,000,
# so start-up and shutdown cancel out.
#
#   loadtest/cachesim.sh PROXY_BIN LOADTEST_BIN ROW CONCURRENCY [LL_BYTES]
#
# ROW is a proxy row (`route`, `forward`, ...) or `bare-pingora`. LL_BYTES is the simulated last
# level (default 2 MiB: this core's L2; the L3 the VM reports is shared with other guests).
# CACHESIM_KEEP=DIR keeps the profiles for callgrind_annotate.
# Needs valgrind and callgrind_annotate (apt-get install valgrind). Each run takes a few minutes;
# every run is bounded by the loadtest's --duration-limit.
set -euo pipefail

if [ $# -lt 4 ]; then
    sed -n '2,15p' "$0" >&2
    exit 2
fi
proxy_bin=$(realpath "$1")
loadtest_bin=$(realpath "$2")
row=$3
concurrency=$4
ll=${5:-2097152}
for tool in valgrind callgrind_annotate python3; do
    command -v "$tool" > /dev/null || { echo "cachesim.sh: $tool is not on PATH" >&2; exit 1; }
done

# CACHESIM_KEEP=DIR keeps the profiles there (DIR/6000/cg.PID, DIR/2000/cg.PID) for
# `callgrind_annotate --inclusive=yes`, instead of removing them.
if [ -n "${CACHESIM_KEEP:-}" ]; then
    out=$(realpath -m "$CACHESIM_KEEP")
    mkdir -p "$out"
else
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi
sim="--tool=callgrind --cache-sim=yes --I1=32768,8,64 --D1=49152,12,64 --LL=$ll,16,64"

# The proxy rows start the proxy through --proxy-bin; bare pingora is started by the loadtest
# itself under `taskset -c 0`, so a `taskset` earlier on PATH runs that one under valgrind.
cat > "$out/proxy.sh" << EOF
#!/bin/bash
exec valgrind $sim --callgrind-out-file="\$CACHESIM_OUT/cg.%p" "$proxy_bin" "\$@"
EOF
real_taskset=$(command -v taskset || true)
mkdir "$out/bin"
cat > "$out/bin/taskset" << EOF
#!/bin/bash
shift 2
if [[ " \$* " == *" bare-pingora "* ]]; then
    valgrind $sim --callgrind-out-file="\$CACHESIM_OUT/cg.%p" "\$@" &
    pid=\$!
    trap 'kill -INT \$pid; wait \$pid; exit 0' TERM
    wait \$pid
    exit 0
fi
if [ -n "$real_taskset" ]; then exec "$real_taskset" -c 0 "\$@"; fi
exec "\$@"
EOF
chmod +x "$out/proxy.sh" "$out/bin/taskset"

for n in 6000 2000; do
    mkdir "$out/$n"
    if ! CACHESIM_OUT="$out/$n" PATH="$out/bin:$PATH" "$loadtest_bin" run \
        --proxy-bin "$out/proxy.sh" --only "$row" --requests "$n" \
        --concurrency "$concurrency" --duration-limit 900s > "$out/$n/run.log" 2>&1; then
        echo "cachesim.sh: the $n-request run failed:" >&2
        tail -20 "$out/$n/run.log" >&2
        exit 1
    fi
done

python3 - "$out" << 'EOF'
import glob, os, subprocess, sys

def totals(run):
    # The largest profile of a run is the process that served the row.
    files = glob.glob(os.path.join(sys.argv[1], run, "cg.*"))
    if not files:
        sys.exit(f"cachesim.sh: no profile from the {run}-request run")
    events, values = None, None
    for line in open(max(files, key=os.path.getsize), errors="replace"):
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("summary:") or line.startswith("totals:"):
            values = [int(v) for v in line.split()[1:]]
    return events, values

events, big = totals("6000")
_, small = totals("2000")
per = {e: (a - b) / 4000 for e, a, b in zip(events, big, small)}
ll = per["ILmr"] + per["DLmr"] + per["DLmw"]
print(f"instructions a request:     {per['Ir']:,.0f}")
print(f"L1 misses a request:        {per['I1mr'] + per['D1mr'] + per['D1mw']:,.0f}")
print(f"last-level misses a request: {ll:,.0f} "
      f"(read {per['DLmr']:,.0f}, write {per['DLmw']:,.0f}, code {per['ILmr']:,.0f})")
EOF
