#!/usr/bin/env bash
# Where a Tollgate worker's time goes, per packet: samples CPU 1 (the worker's
# core in tg-bench) with perf's cpu-clock while tg-bench floods Tollgate with
# 64-byte UDP over 1 024 flows, then sums the samples of the worker's thread
# by what they were doing. bench/SCALING.md reads the result.
#
#   sudo bench/profile.sh [packets]     (default 10 000 000; root: lab, XDP, perf)
#
# Needs perf (Debian: linux-perf). Software cpu-clock sampling only: no
# hardware counters are needed.
set -euo pipefail
cd "$(dirname "$0")/.."
packets=${1:-10000000}
command -v perf >/dev/null || { echo "profile.sh: perf is not installed (apt-get install linux-perf)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "profile.sh: needs root" >&2; exit 2; }
cargo build --release -q -p bench --bin tg-bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
TG_BENCH_ONLY=Tollgate ./target/release/tg-bench "$packets" >"$work/bench.out" 2>&1 &
bench=$!
# The flood starts after about 3 s of priming; sample 6 s of it.
sleep 9
perf record -q -e cpu-clock -C 1 -g -o "$work/perf.data" -- sleep 6 >/dev/null 2>&1
wait "$bench" || true
grep '^| 1024' "$work/bench.out" | awk -F'|' '{print "Tollgate forwarded (1 024 flows): " $7 " Mpps"}'
perf report -i "$work/perf.data" --comm tg-bench --no-children --sort dso,symbol -g none \
  --percentage relative --stdio 2>/dev/null | grep -E '^ +[0-9]' >"$work/flat.txt"
python3 - "$work/flat.txt" <<'PY'
import re, sys
rows = []
for line in open(sys.argv[1]):
    m = re.match(r'\s+([\d.]+)%\s+(\S+)\s+\[.\]\s+(\S+)', line)
    if m:
        rows.append((float(m.group(1)), m.group(2), m.group(3)))
def category(dso, sym):
    if dso != '[kernel.kallsyms]':
        if sym.startswith('conntrack::'):
            return 'Tollgate: conntrack pipeline (parse, lookup, state, policy)'
        if sym.startswith('dataplane::'):
            return 'Tollgate: worker (rings, batching, fill/TX bookkeeping)'
        return 'Tollgate: libc and std (memmove, clock)'
    if re.search(r'xsk|alloc_skb|kmalloc|kmem_cache|kfree|sock_wfree|sock_alloc|skb_release|'
                 r'skb_defer|__dev_direct_xmit|veth_xmit|validate_xmit|netif_skb_features|'
                 r'passthru|__memcg|_find_next_bit|skb_clone_tx|memcpy|slab|dev_forward', sym):
        return 'kernel: AF_XDP copy-mode TX (skb alloc, copy, veth xmit, free)'
    if re.search(r'nft|nf_hook|netif_rx|backlog|__netif_receive|net_rx_action|napi|eth_type_trans|'
                 r'get_rps_cpu|softirq|bh_enable|sk_skb_reason_drop|netif_receive', sym):
        return 'kernel: the lab server receiving and counting (the sink, not Tollgate)'
    if re.search(r'syscall|entry|sendto|poll|fdget|__sys|x64_sys|srso|exit_to_user', sym):
        return 'kernel: syscalls (TX kick, poll)'
    if re.search(r'spin|rcu|lock', sym):
        return 'kernel: locks and RCU (mostly the TX path)'
    return 'kernel: other'
total = sum(r[0] for r in rows) or 1.0
cats = {}
for share, dso, sym in rows:
    c = category(dso, sym)
    cats[c] = cats.get(c, 0.0) + share
print("share of the worker's CPU time:")
for c, v in sorted(cats.items(), key=lambda x: -x[1]):
    print(f"  {v / total * 100:5.1f} %  {c}")
print("top Tollgate functions:")
for share, dso, sym in [r for r in rows if r[1] != '[kernel.kallsyms]'][:8]:
    print(f"  {share / total * 100:5.1f} %  {sym}")
PY
