#!/usr/bin/env bash
# NIC setup for Tollgate: run it on the two NICs before the first start.
#
#   deploy/nic-setup.sh plan  OPTIONS   print what would change, change nothing
#   deploy/nic-setup.sh apply OPTIONS   change it (saves what it changes first)
#   deploy/nic-setup.sh check OPTIONS   read the NICs back: does it hold?
#   deploy/nic-setup.sh undo  OPTIONS   restore what apply saved
#
# OPTIONS: --inside DEV --outside DEV --queues N --cores LIST, or
# --config FILE to read inside, outside, queues and cores from a Tollgate
# config's [interfaces] table (options given as well override the file).
# LIST is like 1,2,3 or 1-3: worker i runs on core LIST[i], as
# `[interfaces] cores` says; its length must be N. undo needs only the
# devices. --skip-unsupported: apply what the devices can do, skip the rest.
#
# Exit codes: 0 done / holds, 1 does not hold or a command failed,
# 2 usage, or something was refused (nothing changed by a refused apply).
#
# Per NIC, in this order (undo goes backwards):
#  queues   ethtool -L DEV combined N: one combined channel (an RX and a TX
#           ring on one IRQ) per worker; AF_XDP binds queue i of both NICs.
#  rss      symmetric RSS by deploy/rss.sh (both directions of a connection
#           on the queue Tollgate's owner hash picks); not needed for N = 1.
#  offloads off: lro and rx-gro-hw (merged segments are not the frames that
#           came in, and a bridge forwards frames as they came: Linux turns
#           LRO off on bridge ports too; drivers refuse XDP with them on),
#           rxvlan and rx-vlan-stag-hw-parse (a stripped VLAN tag goes into
#           metadata AF_XDP does not carry: the tag would be lost; with them
#           off tags stay in the frame, where Tollgate parses up to two),
#           ntuple (flow steering rules put flows on queues past RSS, and a
#           rule to a queue without a worker loses them). Features the device
#           reports "[fixed]" cannot change: an off one needs nothing, an on
#           one is refused. Software GRO (gro) is left alone: it runs in the
#           stack after XDP, so frames redirected to AF_XDP never meet it.
#  irq      the IRQs of queue i (named like i40e-eth1-TxRx-0, ice-eth1-TxRx-0,
#           eth1-TxRx-0, mlx5_comp0@pci:0000:03:00.0, virtio0-input.0) go to
#           core LIST[i] via /proc/irq/IRQ/smp_affinity_list: the softirq
#           that fills queue i's AF_XDP ring runs where worker i polls it.
#           A running irqbalance rewrites affinities; this script says so and
#           how to keep it off these IRQs, it does not stop it.
#  mtu      checked, never changed: equal on both NICs (frames are bridged
#           unchanged) and small enough for one AF_XDP frame (MTU_MAX below).
#
# The state apply changes is saved per device in
# ${TOLLGATE_STATE_DIR:-/run/tollgate}/nic-setup-DEV.saved (rss.sh keeps its
# own rss-DEV.saved there); undo restores it and removes the file.
set -euo pipefail

# The largest MTU Tollgate takes, from its AF_XDP frame size:
# crates/dataplane/src/xsk.rs builds each UMEM with xsk-rs
# UmemConfig::default(): frame_size XSK_UMEM__DEFAULT_FRAME_SIZE = 4096
# (libxdp's xsk.h, 1 << 12) and no user headroom. Tollgate's XDP program is
# not multi-buffer ("xdp.frags"), so every received frame must fit in one
# buffer, which drivers lay out as
#   XDP_PACKET_HEADROOM (256) | the frame | struct skb_shared_info
#   (SKB_DATA_ALIGN(sizeof(struct skb_shared_info)) = 320 on 64-bit with
#   the default MAX_SKB_FRAGS of 17)
# in 4096 bytes: 4096 - 256 - 320 = 3520 bytes of frame. The frame is the
# MTU plus the Ethernet header (14) plus up to two VLAN tags (2 x 4, kept in
# the frame with rxvlan off): MTU <= 3520 - 14 - 8 = 3498. Drivers may take
# less with XDP attached (their receive buffers); they say so at start.
FRAME_SIZE=4096
XDP_HEADROOM=256
SKB_SHARED_INFO=320
ETH_HLEN=14
VLAN_TAGS=8
MTU_MAX=$((FRAME_SIZE - XDP_HEADROOM - SKB_SHARED_INFO - ETH_HLEN - VLAN_TAGS))

HERE=$(cd "$(dirname "$0")" && pwd)
RSS="$HERE/rss.sh"
STATE_DIR=${TOLLGATE_STATE_DIR:-/run/tollgate}
export TOLLGATE_STATE_DIR="$STATE_DIR"   # rss.sh keeps its state next to ours

# short ethtool -K name | name in ethtool -k output | why it must be off
FEATURES=(
  "lro|large-receive-offload|merged segments are not the frames that came in"
  "rx-gro-hw|rx-gro-hw|hardware GRO merges segments like LRO"
  "rxvlan|rx-vlan-offload|keep 802.1Q tags in the frame, where Tollgate parses them"
  "rx-vlan-stag-hw-parse|rx-vlan-stag-hw-parse|keep 802.1ad (QinQ) tags in the frame"
  "ntuple|ntuple-filters|flow steering rules bypass RSS"
)

usage() { sed -n '2,18p' "$0" >&2; exit 2; }
die() { echo "nic-setup.sh: $1" >&2; exit "${2:-1}"; }
say() { printf '%s\n' "$*"; }

# ---------------------------------------------------------------- options

verb=${1:-}
case $verb in plan|apply|check|undo) shift ;; -h|--help) usage ;; *) [ -z "$verb" ] || echo "nic-setup.sh: unknown command '$verb'" >&2; usage ;; esac

inside="" outside="" queues="" cores_arg="" config="" skip=0
while [ $# -gt 0 ]; do
  opt=$1 val=""
  case $opt in
    --*=*) val=${opt#*=}; opt=${opt%%=*} ;;
    --inside|--outside|--queues|--cores|--config)
      [ $# -ge 2 ] || die "$opt needs a value" 2
      val=$2; shift ;;
  esac
  case $opt in
    --inside) inside=$val ;;
    --outside) outside=$val ;;
    --queues) queues=$val ;;
    --cores) cores_arg=$val ;;
    --config) config=$val ;;
    --skip-unsupported) skip=1 ;;
    -h|--help) usage ;;
    *) die "unknown option '$opt' (see deploy/nic-setup.sh --help)" 2 ;;
  esac
  shift
done

# Prints key=value for inside, outside, queues and cores found in the
# [interfaces] table of the TOML file $1 (cores as 1,2,3; queues as a number
# or "all"). Comments and quoting are honoured; an array may span lines.
read_config() {
  awk '
    function clean(s,   out, i, c, q) {   # drops a comment outside quotes
      out = ""; q = ""
      for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (q == "" && c == "#") break
        if (q == "" && (c == "\"" || c == "'\''")) q = c
        else if (c == q) q = ""
        out = out c
      }
      gsub(/^[ \t]+|[ \t\r]+$/, "", out)
      return out
    }
    function unquote(v) {
      if (v ~ /^".*"$/ || v ~ /^'\''.*'\''$/) return substr(v, 2, length(v) - 2)
      return v
    }
    {
      line = clean($0)
      if (pending != "") {                 # inside a multi-line cores array
        acc = acc " " line
        if (line ~ /\]/) { value["cores"] = acc; pending = "" }
        next
      }
      if (line ~ /^\[/) { inif = (line ~ /^\[[ \t]*interfaces[ \t]*\]$/); next }
      if (!inif || line !~ /=/) next
      key = line; sub(/[ \t]*=.*/, "", key); key = unquote(key)
      val = line; sub(/^[^=]*=[ \t]*/, "", val)
      if (key == "cores" && val ~ /^\[/ && val !~ /\]/) { pending = 1; acc = val; next }
      if (key == "inside" || key == "outside" || key == "queues" || key == "cores") value[key] = val
    }
    END {
      for (k in value) {
        v = value[k]
        if (k == "cores") { gsub(/[][ \t]/, "", v); sub(/,$/, "", v) } else v = unquote(v)
        print k "=" v
      }
    }' "$1"
}

if [ -n "$config" ]; then
  [ -r "$config" ] || die "cannot read config $config" 2
  grep -Eq '^[[:space:]]*\[[[:space:]]*interfaces[[:space:]]*\]' "$config" \
    || [ -n "$inside$outside$queues$cores_arg" ] \
    || die "$config has no [interfaces] table (give --inside, --outside, --queues and --cores)" 2
  declare -A from_file=()
  while IFS='=' read -r k v; do from_file[$k]=$v; done < <(read_config "$config")
  for k in inside outside queues cores; do
    [ -n "${from_file[$k]:-}" ] || continue
    case $k in
      inside) [ -n "$inside" ] || inside=${from_file[$k]} ;;
      outside) [ -n "$outside" ] || outside=${from_file[$k]} ;;
      queues) [ -n "$queues" ] || queues=${from_file[$k]} ;;
      cores) [ -n "$cores_arg" ] || cores_arg=${from_file[$k]} ;;
    esac
  done
  from=" (not given, and not in [interfaces] of $config)"
else
  from=""
fi

[ -n "$inside" ] || die "no inside device: --inside DEV$from" 2
[ -n "$outside" ] || die "no outside device: --outside DEV$from" 2
[ "$inside" != "$outside" ] || die "inside and outside are both $inside; they must differ" 2

cores=()
if [ "$verb" != undo ]; then
  if [ "$queues" = all ]; then
    die "queues = \"all\" in $config: this script needs a count; give --queues N (and --cores)" 2
  fi
  [ -n "$queues" ] || die "no queue count: --queues N$from" 2
  if ! [[ $queues =~ ^[1-9][0-9]*$ ]] || [ "$queues" -gt 1024 ]; then
    die "--queues $queues: must be a count from 1 to 1024" 2
  fi
  [ -n "$cores_arg" ] || die "no cores: --cores LIST (one per queue, like 1,2 or 1-2)$from" 2
  IFS=',' read -r -a parts <<< "$cores_arg"
  for p in "${parts[@]}"; do
    if [[ $p =~ ^([0-9]+)-([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -le "${BASH_REMATCH[2]}" ]; then
      for ((c = BASH_REMATCH[1]; c <= BASH_REMATCH[2]; c++)); do cores+=("$c"); done
    elif [[ $p =~ ^[0-9]+$ ]]; then
      cores+=("$((10#$p))")
    else
      die "--cores $cores_arg: '$p' is not a core or a range like 1-3" 2
    fi
  done
  [ "${#cores[@]}" -eq "$queues" ] \
    || die "--cores $cores_arg names ${#cores[@]} cores for $queues queues: worker i runs on core i of the list, give exactly $queues" 2
  # Online cores, as the kernel lists them (0-3,6).
  online=$(cat /sys/devices/system/cpu/online)
  declare -A is_online=()
  IFS=',' read -r -a parts <<< "$online"
  for p in "${parts[@]}"; do
    lo=${p%-*} hi=${p#*-}
    for ((c = lo; c <= hi; c++)); do is_online[$c]=1; done
  done
  declare -A seen_core=()
  for c in "${cores[@]}"; do
    [ -n "${is_online[$c]:-}" ] || die "core $c is not online (online cores: $online)" 2
    [ -z "${seen_core[$c]:-}" ] || die "core $c is listed twice in --cores $cores_arg: one worker per core" 2
    seen_core[$c]=1
  done
fi

command -v ethtool >/dev/null || die "ethtool is not installed (apt-get install ethtool)"
for d in "$inside" "$outside"; do
  [ -e "/sys/class/net/$d" ] || [ "$verb" = undo ] \
    || die "no interface $d (in this network namespace): check the name (ip -brief link)" 2
done
[ -x "$RSS" ] || die "$RSS is missing or not executable (it ships next to this script)"

# ---------------------------------------------------------------- reading

net() { printf '/sys/class/net/%s' "$1"; }
state_file() { printf '%s/nic-setup-%s.saved' "$STATE_DIR" "$1"; }

driver_of() { { ethtool -i "$1" 2>/dev/null || true; } | awk -F': ' '$1 == "driver" { print $2 }'; }

# Software device (veth, bridge, tun...): no bus device behind it.
is_software() { [ ! -e "$(net "$1")/device" ]; }

# Prints "VALUE FIXED" (on/off, fixed/-) of feature $2 in `ethtool -k` text
# $1, or nothing when the device does not report it.
feature() {
  awk -v f="$2" -F': ' '
    { k = $1; sub(/^[ \t]+/, "", k) }
    k == f { split($2, w, " "); print w[1], ($2 ~ /\[fixed\]/ ? "fixed" : "-"); exit }' <<< "$1"
}

# Channels from `ethtool -l`: prints "MAX_COMBINED CUR_COMBINED CUR_RX CUR_TX"
# (n/a shown as -), or fails when the device reports none.
channels() {
  local out
  out=$(ethtool -l "$1" 2>&1) || return 1
  awk '
    /^Pre-set maximums/ { s = "max" } /^Current hardware settings/ { s = "cur" }
    /^(Combined|RX|TX):/ { v = $2; if (v !~ /^[0-9]+$/) v = "-"; val[s, $1] = v }
    END { printf "%s %s %s %s\n", val["max", "Combined:"], val["cur", "Combined:"], val["cur", "RX:"], val["cur", "TX:"] }' <<< "$out"
}

count_queues() { find "$(net "$1")/queues" -maxdepth 1 -name "$2-*" | wc -l; }

# The interrupt's handler names (several when shared), from sysfs or
# /proc/interrupts.
irq_name() {
  if [ -r "/sys/kernel/irq/$1/actions" ]; then
    cat "/sys/kernel/irq/$1/actions"
  else
    awk -v i="$1:" '$1 == i { print $NF; exit }' /proc/interrupts
  fi
}

# Prints "IRQ QUEUE NAME" for every interrupt of device $1 (QUEUE is - when
# the name does not tell). Its interrupts are those whose name holds the
# device name, its bus address (mlx5_comp3@pci:0000:03:00.0) or its bus
# device name (virtio0-input.3) as a whole word; with MSI the PCI function's
# own list (device/msi_irqs) narrows the search, and those of its IRQs
# named otherwise are listed with queue -.
device_irqs() {
  local dev=$1 devdir bus="" irq name q
  local -a irqs=()
  devdir="$(net "$dev")/device"
  [ -e "$devdir" ] || return 0
  bus=$(basename "$(readlink -f "$devdir")")
  if [ -d "$devdir/msi_irqs" ]; then
    mapfile -t irqs < <(ls "$devdir/msi_irqs")
  else
    mapfile -t irqs < <(awk '$1 ~ /^[0-9]+:$/ { sub(/:/, "", $1); print $1 }' /proc/interrupts)
  fi
  for irq in "${irqs[@]}"; do
    name=$(irq_name "$irq" 2>/dev/null || true)   # gone meanwhile: skipped
    [ -n "$name" ] || continue
    q=$(awk -v s="$name" -v dev="$dev" -v bus="$bus" '
      # The text after token t when t is a whole word of s, else "\001".
      function after(s, t,   off, i, b, a) {
        off = 0
        while (t != "" && (i = index(substr(s, off + 1), t)) > 0) {
          i += off
          b = i > 1 ? substr(s, i - 1, 1) : ""
          a = substr(s, i + length(t), 1)
          if (b !~ /[A-Za-z0-9]/ && a !~ /[A-Za-z0-9]/) return substr(s, i + length(t))
          off = i
        }
        return "\001"
      }
      BEGIN {
        rest = after(s, dev)
        if (rest == "\001") rest = after(s, bus)
        if (rest == "\001") { print "none"; exit }
        if (match(s, /comp[0-9]+@/)) { print substr(s, RSTART + 4, RLENGTH - 5) + 0; exit }
        if (tolower(rest) ~ /misc|async|ctrl|control|config|cmd|fdir|mgmt|mgmnt|admin|aeq/) { print "-"; exit }
        if (match(rest, /[-._][0-9]+$/)) { print substr(rest, RSTART + 1) + 0; exit }
        print "-"
      }')
    if [ "$q" = none ]; then
      [ -d "$devdir/msi_irqs" ] || continue
      q=-
    fi
    printf '%s %s %s\n' "$irq" "$q" "$name"
  done
}

# Whether device_irqs' line "IRQ QUEUE ..." is the IRQ of a queue in use.
used_queue() { [ -n "$1" ] && [ "$2" != - ] && [ "$2" -lt "$queues" ]; }

xdp_attached() {
  local out
  out=$(ip -details link show dev "$1" 2>/dev/null) || return 1
  grep -Eq 'prog/xdp|(^|[[:space:]])xdp(generic|drv|offload|multi)?([[:space:]]|$)' <<< "$out"
}

irqbalance_running() {
  pidof irqbalance >/dev/null 2>&1 && return 0
  command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet irqbalance 2>/dev/null
}

irqbalance_advice() {
  say "irqbalance is running: it rewrites IRQ affinities every 10 s and would undo the pinning."
  say "  Stop it (systemctl disable --now irqbalance), or keep it off these IRQs: add"
  say "  --banirq=IRQ for each (${1:-the IRQs above}) to IRQBALANCE_ARGS in /etc/default/irqbalance"
  say "  (/etc/sysconfig/irqbalance on RHEL) and IRQBALANCE_BANNED_CPULIST=$(IFS=,; echo "${cores[*]}") so it moves"
  say "  nothing else onto the worker cores, then restart it. IRQ numbers change when the driver"
  say "  re-requests them (queue change, driver reload): check after each."
}

# ---------------------------------------------------------------- the plan

# Counters and the actions apply runs, in order: "queues DEV ARGS...",
# "rss DEV", "feature DEV NAME", "irq DEV".
changes=0 refused=0 blocked=0
actions=()
declare -A irq_plan=()   # DEV -> "IRQ:CORE ..." as seen now

line() { say "$1: $2: $3"; }
change() { line "$1" "$2" "$3"; changes=$((changes + 1)); }
refuse() { line "$1" "$2" "cannot $3"; refused=$((refused + 1)); }
block() { line "$1" "$2" "REFUSED: $3"; blocked=$((blocked + 1)); }

plan_device() {
  local dev=$1 drv info kout ch max cur rx tx rxq txq f short long why v fixed out rc rules
  local software=0
  drv=$(driver_of "$dev")
  is_software "$dev" && software=1
  info=$({ ethtool -i "$dev" 2>/dev/null || true; } | awk -F': ' '
    $1 == "driver" { d = $2 } $1 == "version" { v = $2 }
    $1 == "firmware-version" { f = $2 } $1 == "bus-info" { b = $2 }
    END { if (d == "") printf "driver unknown (ethtool -i has none)"; else printf "driver %s %s, firmware %s, bus %s", d, v, (f == "" ? "-" : f), (b == "" ? "-" : b) }')
  [ "$software" -eq 0 ] || info="$info (software device)"
  line "$dev" info "$info"

  # Who else is on the device.
  local state master addrs
  state=$(cat "$(net "$dev")/operstate")
  [ "$state" = up ] || line "$dev" note "link is $state (bring it up before Tollgate starts: ip link set $dev up)"
  if [ -e "$(net "$dev")/master" ]; then
    master=$(basename "$(readlink -f "$(net "$dev")/master")")
    block "$dev" master "it is a port of $master: Tollgate needs the NIC to itself (ip link set $dev nomaster)"
  fi
  addrs=$({ ip -brief address show dev "$dev" 2>/dev/null || true; } | awk '{ for (i = 3; i <= NF; i++) if ($i !~ /^fe80:/) printf " %s", $i }')
  [ -z "$addrs" ] || line "$dev" note "has addresses$addrs: a bump in the wire needs none (manage the box through a third interface)"
  if xdp_attached "$dev"; then
    block "$dev" xdp "an XDP program is attached (Tollgate running?): stop it first; changing queues, offloads and IRQs under live AF_XDP sockets breaks them"
  fi

  # Queues.
  rxq=$(count_queues "$dev" rx) txq=$(count_queues "$dev" tx)
  if ch=$(channels "$dev") && read -r max cur rx tx <<< "$ch" && [ "$max" != - ] && [ "$max" -gt 0 ]; then
    if [ "$max" -lt "$queues" ]; then
      refuse "$dev" queues "set $queues (the NIC has at most $max combined channels: use queues = $max or fewer)"
    elif [ "$cur" = "$queues" ] && [ "$rxq" -eq "$queues" ]; then
      line "$dev" queues "ok: $queues combined already (max $max)"
    else
      local args=(combined "$queues")
      # Dedicated RX-only / TX-only channels would add queues without a worker.
      if [ "$rx" != - ] && [ "$rx" -gt 0 ]; then args=(rx 0 "${args[@]}"); fi
      if [ "$tx" != - ] && [ "$tx" -gt 0 ]; then args=(tx 0 "${args[@]}"); fi
      change "$dev" queues "${cur/-/n\/a} -> $queues combined (max $max): ethtool -L $dev ${args[*]}"
      actions+=("queues $dev ${args[*]}")
    fi
  elif [ "$rxq" -eq "$queues" ] && [ "$txq" -ge "$queues" ]; then
    line "$dev" queues "ok: $rxq rx / $txq tx queues already (no combined channels to set)"
  elif [ "$drv" = veth ]; then
    refuse "$dev" queues "set (veth is a software device: no combined channels, it has $rxq rx / $txq tx; the lab sets queues when it creates the pair)"
  elif [ "$software" -eq 1 ]; then
    refuse "$dev" queues "set (${drv:-this} is a software device with $rxq rx / $txq tx queues and no combined channels)"
  else
    refuse "$dev" queues "set (the NIC reports no combined channels; it has $rxq rx / $txq tx queues: ethtool -l $dev)"
  fi

  # Symmetric RSS, by rss.sh.
  if [ "$queues" -eq 1 ]; then
    line "$dev" rss "not needed with one queue (every packet lands on queue 0)"
  elif [ -e "$STATE_DIR/rss-$dev.saved" ]; then
    block "$dev" rss "$STATE_DIR/rss-$dev.saved exists (deploy/rss.sh apply ran before and would lose the original state): deploy/rss.sh undo $dev first"
  else
    rc=0; out=$("$RSS" plan "$dev" "$queues" 2>&1) || rc=$?
    if [ "$rc" -eq 0 ]; then
      change "$dev" rss "deploy/rss.sh apply $dev $queues, which runs:"
      sed -e '/^#/d' -e 's/^/    /' <<< "$out"
      actions+=("rss $dev")
    elif [ "$rc" -eq 2 ] && [ "$drv" = veth ]; then
      refuse "$dev" rss "set (veth is a software device: no RSS, deploy/rss.sh refuses it; a frame arrives on the queue its sender used, Tollgate hands packets to their owner worker instead)"
    elif [ "$rc" -eq 2 ]; then
      refuse "$dev" rss "set (deploy/rss.sh: ${out#rss.sh: })"
    else
      block "$dev" rss "deploy/rss.sh plan failed: $out"
    fi
  fi

  # Offloads.
  kout=$(ethtool -k "$dev" 2>&1) || { block "$dev" offloads "ethtool -k failed: $kout"; kout=""; }
  for f in "${FEATURES[@]}"; do
    IFS='|' read -r short long why <<< "$f"
    read -r v fixed <<< "$(feature "$kout" "$long")"
    if [ -z "${v:-}" ]; then
      line "$dev" "$short" "not reported by the device (nothing to do)"
    elif [ "$v" = off ] && [ "$fixed" = fixed ]; then
      line "$dev" "$short" "ok: off, cannot change (fixed)"
    elif [ "$v" = off ]; then
      line "$dev" "$short" "ok: off"
    elif [ "$fixed" = fixed ]; then
      refuse "$dev" "$short" "change (fixed): it is on and the device cannot turn it off ($why)"
    elif [ "$short" = ntuple ] && rules=$(ethtool -n "$dev" 2>/dev/null | awk '/^Total [0-9]+ rules/ { print $2 }') && [ "${rules:-0}" -gt 0 ]; then
      block "$dev" ntuple "$rules flow steering rules are installed (ethtool -n $dev); they send flows past RSS and turning ntuple off drops them: delete them yourself (ethtool -N $dev delete ID)"
    else
      change "$dev" "$short" "on -> off ($why): ethtool -K $dev $short off"
      actions+=("feature $dev $short")
    fi
  done
  read -r v fixed <<< "$(feature "$kout" generic-receive-offload)"
  line "$dev" gro "left as it is (${v:-not reported}): software GRO runs in the stack after XDP, frames redirected to AF_XDP never meet it"

  # IRQ affinity.
  local irqs irq q name n=0 seen="" unknown="" planned=""
  if [ "$software" -eq 1 ]; then
    if [ "$drv" = veth ]; then
      refuse "$dev" irq "pin (veth is a software device: no IRQs; its frames are received in the sender's softirq)"
    else
      refuse "$dev" irq "pin (${drv:-this} is a software device: no IRQs)"
    fi
    return 0
  fi
  irqs=$(device_irqs "$dev")
  local lines=()
  while read -r irq q name; do
    [ -n "$irq" ] || continue
    if [ "$q" = - ]; then unknown="$unknown $irq ($name)"; continue; fi
    [ "$q" -lt "$queues" ] || continue
    n=$((n + 1))
    seen="$seen $q "
    planned="$planned $irq:${cores[$q]}"
    lines+=("    queue $q: IRQ $irq ($name) on cores $(cat "/proc/irq/$irq/smp_affinity_list" 2>/dev/null || echo '?') -> core ${cores[$q]}")
  done <<< "$irqs"
  if [ "$n" -eq 0 ]; then
    if [ "$state" != up ]; then
      refuse "$dev" irq "pin (no queue IRQs while the link is $state: drivers such as i40e, ice and ixgbe request them when the device is brought up; ip link set $dev up, then run again)"
    else
      refuse "$dev" irq "pin (no IRQ of $dev in /proc/interrupts is named after a queue; pin them by hand: echo CORE > /proc/irq/IRQ/smp_affinity_list)"
    fi
    [ -z "$unknown" ] || say "    IRQs of $dev whose queue the name does not tell:$unknown"
    return 0
  fi
  irq_plan[$dev]=$planned
  change "$dev" irq "queue i's IRQs -> the i-th core (looked up again after the queue change): echo CORE > /proc/irq/IRQ/smp_affinity_list"
  printf '%s\n' "${lines[@]}"
  for ((q = 0; q < queues; q++)); do
    [[ $seen == *" $q "* ]] || say "    queue $q: no IRQ yet (the driver requests it with the queue change) -> core ${cores[$q]}"
  done
  [ -z "$unknown" ] || say "    left alone, the name tells no queue:$unknown"
  actions+=("irq $dev")
}

plan_mtu() {
  local a b
  a=$(cat "$(net "$inside")/mtu") b=$(cat "$(net "$outside")/mtu")
  local why="$FRAME_SIZE-byte UMEM frame - $XDP_HEADROOM XDP headroom - $SKB_SHARED_INFO skb_shared_info - $ETH_HLEN Ethernet header - $VLAN_TAGS for two VLAN tags"
  if [ "$a" != "$b" ]; then
    block both mtu "$inside has MTU $a, $outside has MTU $b: Tollgate bridges frames unchanged, set both the same (ip link set DEV mtu M; this script never changes it)"
  fi
  for d in "$inside" "$outside"; do
    local m
    m=$(cat "$(net "$d")/mtu")
    if [ "$m" -gt "$MTU_MAX" ]; then
      block "$d" mtu "MTU $m is above $MTU_MAX, the largest whose frames fit one AF_XDP frame without multi-buffer XDP ($why = $MTU_MAX); lower it (ip link set $d mtu $MTU_MAX or less; this script never changes it)"
    fi
  done
  if [ "$a" = "$b" ] && [ "$a" -le "$MTU_MAX" ]; then
    line both mtu "ok: $a on both, at most $MTU_MAX ($why)"
  fi
}

make_plan() {
  local d
  say "# nic-setup $verb: inside $inside, outside $outside, $queues queue(s), cores $(IFS=,; echo "${cores[*]}") (worker i and queue i's IRQs on the i-th)"
  for d in "$inside" "$outside"; do plan_device "$d"; done
  plan_mtu
  if [ -n "${irq_plan[$inside]:-}${irq_plan[$outside]:-}" ] && irqbalance_running; then
    irqbalance_advice ""
  fi
}

# ---------------------------------------------------------------- apply

run() {
  say "+ $*"
  "$@" || die "failed: $* (what was changed so far is saved: deploy/nic-setup.sh undo restores it)"
}

save() { printf '%s\n' "$2" >> "$(state_file "$1")"; }

apply_irqs() {
  local dev=$1 irq q name old found=" " i pinned=""
  while read -r irq q name; do
    used_queue "$irq" "$q" || continue
    old=$(cat "/proc/irq/$irq/smp_affinity_list")
    save "$dev" "irq $irq $old $name"
    say "+ echo ${cores[$q]} > /proc/irq/$irq/smp_affinity_list   # $name, was $old"
    if ! echo "${cores[$q]}" > "/proc/irq/$irq/smp_affinity_list"; then
      die "IRQ $irq ($name) refused affinity ${cores[$q]}: a managed interrupt (the kernel spreads those itself) or a core the IRQ cannot reach; what was changed so far is saved: deploy/nic-setup.sh undo restores it"
    fi
    found="$found$q "
    pinned="$pinned $irq"
  done < <(device_irqs "$dev")
  for ((i = 0; i < queues; i++)); do
    [[ $found == *" $i "* ]] || die "$dev: no IRQ found for queue $i after the queue change (see /proc/interrupts); what was changed so far is saved: deploy/nic-setup.sh undo restores it"
  done
  all_pinned="$all_pinned$pinned"
}

apply_device() {
  local dev=$1 a kind d rest f
  local file
  file=$(state_file "$dev")
  {
    say "# deploy/nic-setup.sh apply on $dev, $(date -u +%Y-%m-%dT%H:%M:%SZ): the state before each change"
    say "# (records are undone last to first by deploy/nic-setup.sh undo)"
  } > "$file"
  say "# $dev: saving what changes in $file"
  for a in "${actions[@]}"; do
    read -r kind d rest <<< "$a"
    [ "$d" = "$dev" ] || continue
    case $kind in
      queues)
        local max cur rx tx
        read -r max cur rx tx <<< "$(channels "$dev")"
        save "$dev" "channels $cur $rx $tx"
        # shellcheck disable=SC2086  # rest holds the ethtool -L arguments
        run ethtool -L "$dev" $rest
        ;;
      rss)
        save "$dev" "rss"
        say "+ $RSS apply $dev $queues"
        "$RSS" apply "$dev" "$queues" 2>&1 | sed 's/^/    /' \
          || die "deploy/rss.sh apply $dev $queues failed; deploy/nic-setup.sh undo restores what was changed"
        ;;
      feature)
        f=$rest
        save "$dev" "feature $f on"
        run ethtool -K "$dev" "$f" off
        ;;
      irq)
        apply_irqs "$dev"
        ;;
    esac
  done
}

# ---------------------------------------------------------------- check

bad=0
holds() { line "$1" "$2" "holds${3:+ ($3)}"; }
fails() { line "$1" "$2" "does NOT hold ($3)"; bad=1; }

check_device() {
  local dev=$1 drv ch max cur rx tx rxq txq kout f short long why v fixed out rc irq q name aff
  drv=$(driver_of "$dev")
  rxq=$(count_queues "$dev" rx) txq=$(count_queues "$dev" tx)
  if ch=$(channels "$dev") && read -r max cur rx tx <<< "$ch" && [ "$max" != - ] && [ "$max" -gt 0 ]; then
    if [ "$cur" = "$queues" ] && [ "$rxq" -eq "$queues" ]; then holds "$dev" queues "$queues combined"
    else fails "$dev" queues "${cur/-/n\/a} combined, $rxq rx queues; want $queues"; fi
  elif [ "$rxq" -eq "$queues" ] && [ "$txq" -ge "$queues" ]; then
    holds "$dev" queues "$rxq rx / $txq tx"
  else
    fails "$dev" queues "$rxq rx / $txq tx, no combined channels${drv:+ ($drv)}; want $queues"
  fi

  if [ "$queues" -gt 1 ]; then
    rc=0; out=$("$RSS" check "$dev" "$queues" 2>&1) || rc=$?
    printf '%s\n' "$out" | sed 's/^/    /'
    case $rc in
      0) holds "$dev" rss "symmetric" ;;
      2) fails "$dev" rss "the device has no RSS to configure" ;;
      *) fails "$dev" rss "deploy/rss.sh check $dev $queues" ;;
    esac
  fi

  kout=$(ethtool -k "$dev" 2>&1) || kout=""
  for f in "${FEATURES[@]}"; do
    IFS='|' read -r short long why <<< "$f"
    read -r v fixed <<< "$(feature "$kout" "$long")"
    if [ -z "${v:-}" ]; then holds "$dev" "$short" "not reported"
    elif [ "$v" = off ]; then holds "$dev" "$short" "off"
    else fails "$dev" "$short" "on: $why"; fi
  done

  if is_software "$dev"; then
    fails "$dev" irq "${drv:-software} device: no IRQs to pin"
    return 0
  fi
  local found=" "
  while read -r irq q name; do
    used_queue "$irq" "$q" || continue
    found="$found$q "
    aff=$(cat "/proc/irq/$irq/smp_affinity_list")
    if [ "$aff" = "${cores[$q]}" ]; then holds "$dev" "irq $irq" "$name on core $aff"
    else fails "$dev" "irq $irq" "$name on cores $aff, want ${cores[$q]}"; fi
  done < <(device_irqs "$dev")
  for ((q = 0; q < queues; q++)); do
    [[ $found == *" $q "* ]] || fails "$dev" irq "no IRQ found for queue $q"
  done
}

check_mtu() {
  local a b
  a=$(cat "$(net "$inside")/mtu") b=$(cat "$(net "$outside")/mtu")
  if [ "$a" != "$b" ]; then fails both mtu "$inside $a, $outside $b: must be equal"
  elif [ "$a" -gt "$MTU_MAX" ]; then fails both mtu "MTU $a is above $MTU_MAX"
  else holds both mtu "$a on both, at most $MTU_MAX"; fi
}

# ---------------------------------------------------------------- undo

undo_device() {
  local dev=$1 file kind a b c cur failed=0
  file=$(state_file "$dev")
  if [ ! -f "$file" ]; then
    say "# $dev: nothing saved ($file)"
    return 2
  fi
  say "# $dev: restoring from $file"
  while read -r kind a b c; do
    case $kind in
      ''|'#'*) ;;
      irq)
        # c is the name the IRQ had: restore only if it still is that IRQ.
        cur=$(irq_name "$a" 2>/dev/null || true)
        if [ "$cur" != "$c" ]; then
          say "# IRQ $a is now '${cur:-gone}', was '$c' (re-requested by the driver): nothing to restore"
        else
          say "+ echo $b > /proc/irq/$a/smp_affinity_list   # $c"
          echo "$b" > "/proc/irq/$a/smp_affinity_list" || { say "# failed"; failed=1; }
        fi
        ;;
      feature)
        say "+ ethtool -K $dev $a $b"
        ethtool -K "$dev" "$a" "$b" || { say "# failed"; failed=1; }
        ;;
      rss)
        say "+ $RSS undo $dev"
        "$RSS" undo "$dev" 2>&1 | sed 's/^/    /' || { say "# failed"; failed=1; }
        ;;
      channels)
        local args=()
        [ "$b" = - ] || args+=(rx "$b")
        [ "$c" = - ] || args+=(tx "$c")
        [ "$a" = - ] || args+=(combined "$a")
        if [ "${#args[@]}" -gt 0 ]; then
          say "+ ethtool -L $dev ${args[*]}"
          ethtool -L "$dev" "${args[@]}" || { say "# failed"; failed=1; }
        fi
        ;;
      *)
        say "# unknown record '$kind $a $b $c' in $file, skipped"
        ;;
    esac
  done < <(tac "$file")
  if [ "$failed" -ne 0 ]; then
    say "# $dev: some steps failed; $file is kept (fix and run undo again)"
    return 1
  fi
  say "+ rm $file"
  rm -f "$file"
}

# ---------------------------------------------------------------- main

case $verb in
  plan)
    make_plan
    say "# plan: $changes change(s), $refused refused (the devices cannot do them), $blocked blocking problem(s); nothing was changed"
    if [ "$blocked" -gt 0 ]; then
      say "# apply refuses until the blocking problems (REFUSED above) are fixed"
      exit 2
    elif [ "$refused" -gt 0 ]; then
      say "# apply refuses; apply --skip-unsupported makes only the $changes change(s)"
      exit 2
    fi
    ;;
  apply)
    [ "$(id -u)" -eq 0 ] || die "apply needs root" 2
    for d in "$inside" "$outside"; do
      [ ! -e "$(state_file "$d")" ] || die "$(state_file "$d") exists: apply ran before; run deploy/nic-setup.sh undo first (or check)" 2
    done
    make_plan
    if [ "$blocked" -gt 0 ]; then
      die "refused: $blocked blocking problem(s) (REFUSED above); nothing was changed" 2
    fi
    if [ "$refused" -gt 0 ] && [ "$skip" -eq 0 ]; then
      die "refused: the devices cannot do $refused item(s) above; nothing was changed (--skip-unsupported applies the rest)" 2
    fi
    if [ "${#actions[@]}" -eq 0 ]; then
      say "# nothing to change"
      exit 0
    fi
    mkdir -p "$STATE_DIR"
    all_pinned=""
    for d in "$inside" "$outside"; do apply_device "$d"; done
    [ "$refused" -eq 0 ] || say "# skipped $refused item(s) the devices cannot do (--skip-unsupported)"
    if [ -n "$all_pinned" ] && irqbalance_running; then irqbalance_advice "${all_pinned# }"; fi
    say "# done; deploy/nic-setup.sh check reads it back, deploy/nic-setup.sh undo --inside $inside --outside $outside restores it"
    ;;
  check)
    for d in "$inside" "$outside"; do check_device "$d"; done
    check_mtu
    if irqbalance_running; then say "note: irqbalance is running and may move the IRQs (deploy/nic-setup.sh plan says how to keep it off them)"; fi
    if [ "$bad" -eq 0 ]; then say "# the NIC setup holds"; else say "# the NIC setup does NOT hold"; fi
    exit "$bad"
    ;;
  undo)
    [ "$(id -u)" -eq 0 ] || die "undo needs root" 2
    rc=0 restored=0
    for d in "$outside" "$inside"; do
      if [ ! -e "$(net "$d")" ]; then
        if [ -f "$(state_file "$d")" ]; then say "# no interface $d: its saved state $(state_file "$d") is kept"; rc=1; fi
        continue
      fi
      r=0; undo_device "$d" || r=$?
      case $r in 0) restored=$((restored + 1)) ;; 2) ;; *) rc=1 ;; esac
    done
    if [ "$restored" -eq 0 ] && [ "$rc" -eq 0 ]; then die "nothing saved for $inside or $outside in $STATE_DIR" 2; fi
    exit "$rc"
    ;;
esac
