#!/usr/bin/env bash
# The kernel differential over the captures in captures.tsv: each capture is
# replayed through a Linux bridge with br_netfilter + nftables (built in fresh
# network namespaces) and through `tollgate replay`, with the same policy;
# every mismatch must be listed in expected-differences.toml with its reason.
# Each capture is compared twice: as it is, and with the XDP fast path in
# front of the pipeline (`tollgate replay --offload`, the program run with
# BPF_PROG_TEST_RUN), against the same kernel run.
# Needs root. TOLLGATE=path/to/tollgate (default: target/release/tollgate).
set -uo pipefail
cd "$(dirname "$0")/../.."
TOLLGATE=${TOLLGATE:-target/release/tollgate}
KDIFF=tools/kdiff/kdiff.py
CFG=tests/kdiff/strict.toml
EXPECT=tests/kdiff/expected-differences.toml
mkdir -p target/kdiff
fail=0
offloaded=0
while IFS=$'\t' read -r cap inside _why; do
  case "$cap" in ''|'#'*) continue ;; esac
  name=$(basename "$cap")
  if ! python3 "$KDIFF" kernel --pcap "tests/data/$cap" --inside "$inside" --config "$CFG" \
       --out "target/kdiff/$name.kernel.jsonl" 2>"target/kdiff/$name.err"; then
    echo "$name: kernel run FAILED: $(tail -1 "target/kdiff/$name.err")"
    fail=1
    continue
  fi
  if ! python3 "$KDIFF" compare --pcap "tests/data/$cap" --inside "$inside" --config "$CFG" \
       --tollgate "$TOLLGATE" --kernel-jsonl "target/kdiff/$name.kernel.jsonl" --expect "$EXPECT" \
       > "target/kdiff/$name.diff"; then
    fail=1
    grep -v "(expected" "target/kdiff/$name.diff" | head -12
  else
    tail -1 "target/kdiff/$name.diff"
  fi
  # Again with the XDP fast path in front of the pipeline (offload = true),
  # against the same kernel run: the verdicts may not change.
  if ! python3 "$KDIFF" compare --offload --pcap "tests/data/$cap" --inside "$inside" --config "$CFG" \
       --tollgate "$TOLLGATE" --kernel-jsonl "target/kdiff/$name.kernel.jsonl" --expect "$EXPECT" \
       > "target/kdiff/$name.offload.diff"; then
    fail=1
    echo "$name WITH THE FAST PATH:"
    grep -v "(expected" "target/kdiff/$name.offload.diff" | head -12
  else
    fast=$(grep -o "[0-9]* packets forwarded by the program" "target/kdiff/$name.offload.diff" | grep -o "^[0-9]*")
    offloaded=$((offloaded + ${fast:-0}))
  fi
done < tests/kdiff/captures.tsv
echo "with the XDP fast path: the same verdicts, $offloaded packets forwarded by the program"
if [ "$(ip netns list | grep -c '^kd')" != 0 ]; then
  echo "kdiff left namespaces behind"; fail=1
fi
exit $fail
