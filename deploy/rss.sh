#!/usr/bin/env bash
# Symmetric RSS for Tollgate: make a NIC put both directions of a connection
# on the same queue, the one Tollgate's software owner hash picks (Toeplitz
# with the 0x6d5a key repeated, the default indirection table "entry i ->
# queue i mod N", TCP and UDP hashed on addresses and ports). Then no packet
# needs a software handoff between workers. Tollgate stays correct without
# it (it hands packets over and counts tollgate_handoffs_total), only slower.
#
#   deploy/rss.sh plan  DEV QUEUES   print what would change, change nothing
#   deploy/rss.sh apply DEV QUEUES   change it (saves the old state first)
#   deploy/rss.sh check DEV QUEUES   read the NIC back: does it hold?
#   deploy/rss.sh undo  DEV          restore the saved state
#
# Exit codes: 0 done / holds, 1 does not hold or a command failed,
# 2 usage, or the device cannot do it (no RSS, e.g. veth).
set -euo pipefail

KEY=$(printf '6d:5a:%.0s' $(seq 20)); KEY=${KEY%:}
STATE_DIR=${TOLLGATE_STATE_DIR:-/run/tollgate}

usage() { sed -n '2,15p' "$0" >&2; exit 2; }
die() { echo "rss.sh: $1" >&2; exit "${2:-1}"; }

[ $# -ge 2 ] || usage
verb=$1 dev=$2 queues=${3:-}
[ -e "/sys/class/net/$dev" ] || die "no interface $dev (in this network namespace)" 2
case $verb in plan|apply|check) [[ $queues =~ ^[1-9][0-9]*$ ]] || usage ;; undo) ;; *) usage ;; esac

# The plan, one ethtool command per line.
plan() {
  echo "ethtool -L $dev combined $queues"
  echo "ethtool -X $dev hfunc toeplitz hkey $KEY equal $queues"
  for flow in tcp4 udp4 tcp6 udp6; do
    echo "ethtool -N $dev rx-flow-hash $flow sdfn"
  done
}

# The fields flow type $1 is hashed on now, in ethtool -N letters (sdfn...).
fields() {
  ethtool -n "$dev" rx-flow-hash "$1" 2>/dev/null | awk '
    /L2DA/ {s = s "m"} /VLAN tag/ {s = s "v"} /L3 proto/ {s = s "t"}
    /IP SA/ {s = s "s"} /IP DA/ {s = s "d"}
    /L4 bytes 0 & 1/ {s = s "f"} /L4 bytes 2 & 3/ {s = s "n"} END {print s}'
}

# Can this device do RSS at all?
capable() {
  local out
  if ! out=$(ethtool -x "$dev" 2>&1); then
    die "$dev has no RSS to configure ($(echo "$out" | tail -1)); a veth or other \
software device delivers each frame on its sender's queue. Nothing was changed: \
Tollgate hands packets to their owner worker instead (tollgate_handoffs_total)." 2
  fi
}

check() {
  local out ok=0 key rows
  out=$(ethtool -x "$dev" 2>&1) || die "$dev: ethtool -x failed: $out" 2
  key=$(echo "$out" | awk '/RSS hash key:/{getline; print; exit}')
  if [ "$key" != "$KEY" ]; then
    echo "key: NOT symmetric ($key)"; ok=1
  else
    echo "key: symmetric (6d:5a repeated)"
  fi
  if echo "$out" | grep -qE '^ *toeplitz: *on'; then
    echo "function: toeplitz"
  else
    echo "function: NOT toeplitz"; ok=1
  fi
  # Indirection rows look like "    0:      0     1     0     1 ...".
  rows=$(echo "$out" | awk -v n="$queues" '
    /RSS hash key/ { stop = 1 }
    !stop && /^ *[0-9]+:/ { base = $1 + 0; for (i = 2; i <= NF; i++) { e = base + i - 2; if ($i != e % n) bad++ ; seen++ } }
    END { printf "%d %d", seen, bad }')
  set -- $rows
  if [ "$1" -eq 0 ]; then
    echo "indirection: not reported"; ok=1
  elif [ "$2" -ne 0 ]; then
    echo "indirection: $2 of $1 entries are not 'i mod $queues'"; ok=1
  else
    echo "indirection: $1 entries, i mod $queues"
  fi
  for flow in tcp4 udp4 tcp6 udp6; do
    if ethtool -n "$dev" rx-flow-hash "$flow" 2>/dev/null | grep -q 'L4 bytes 0 & 1'; then
      echo "$flow: addresses and ports"
    else
      echo "$flow: NOT hashed on ports"; ok=1
    fi
  done
  if [ $ok -eq 0 ]; then echo "$dev: symmetric RSS holds"; else echo "$dev: symmetric RSS does NOT hold"; fi
  return $ok
}

case $verb in
  plan)
    capable
    echo "# $dev: symmetric RSS over $queues queues (nothing changed)"
    plan
    ;;
  apply)
    capable
    mkdir -p "$STATE_DIR"
    saved="$STATE_DIR/rss-$dev.saved"
    {
      echo "combined $(ethtool -l "$dev" 2>/dev/null | awk '/Current/{c=1} c && /Combined:/{print $2; exit}')"
      echo "key $(ethtool -x "$dev" | awk '/RSS hash key:/{getline; print; exit}')"
      echo "hfunc $(ethtool -x "$dev" | awk '/RSS hash function:/{f=1; next} f && $2 == "on" {sub(/:$/, "", $1); print $1; exit}')"
      for flow in tcp4 udp4 tcp6 udp6; do echo "hash $flow $(fields "$flow")"; done
    } > "$saved"
    echo "# saved the current state in $saved (deploy/rss.sh undo $dev)"
    plan | while read -r cmd; do
      echo "+ $cmd"
      # shellcheck disable=SC2086
      $cmd || die "failed: $cmd"
    done
    check
    ;;
  check)
    capable
    check
    ;;
  undo)
    saved="$STATE_DIR/rss-$dev.saved"
    [ -f "$saved" ] || die "nothing saved for $dev ($saved)" 2
    combined=$(awk '$1=="combined"{print $2}' "$saved")
    key=$(awk '$1=="key"{print $2}' "$saved")
    if [[ $combined =~ ^[0-9]+$ ]]; then echo "+ ethtool -L $dev combined $combined"; ethtool -L "$dev" combined "$combined"; fi
    hfunc=$(awk '$1=="hfunc"{print $2}' "$saved")
    if [ -n "$key" ]; then
      echo "+ ethtool -X $dev ${hfunc:+hfunc $hfunc }hkey $key default"
      ethtool -X "$dev" ${hfunc:+hfunc "$hfunc"} hkey "$key" default
    fi
    # The fields each flow type was hashed on (older save files have none).
    awk '$1=="hash" && NF==3 {print $2, $3}' "$saved" | while read -r flow how; do
      echo "+ ethtool -N $dev rx-flow-hash $flow $how"
      ethtool -N "$dev" rx-flow-hash "$flow" "$how"
    done
    rm -f "$saved"
    ;;
esac
