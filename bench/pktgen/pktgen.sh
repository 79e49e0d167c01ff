#!/usr/bin/env bash
# Drives the kernel's packet generator (/proc/net/pktgen, CONFIG_NET_PKTGEN)
# to push UDP over N distinct flows through a Tollgate box: one pktgen kernel
# thread per CPU given, each with its own copy of the device (DEV@CPU), all
# walking the same N flows. See bench/pktgen/README.md for the cabling, what
# to count on the far side and what to read on Tollgate.
#
# Semantics this script relies on (net/core/pktgen.c):
# - pkt_size is the frame as handed to the driver, without the 4-byte CRC the
#   NIC appends: a 64-byte frame on the wire is "pkt_size 60".
# - Each new packet steps every range by one ("sequential" walk): source and
#   destination addresses wrap after their max (src_max/dst_max inclusive),
#   UDP ports before theirs (udp_*_max exclusive). Ranges of A addresses and
#   B ports walked in lockstep repeat after lcm(A, B) packets, so N = A x B
#   distinct flows needs A and B coprime. With --random every field is drawn
#   uniformly instead (IPSRC_RND draws from [src_min, src_max), so src_max is
#   then exclusive) and all A x B pairs appear, in random order.
# - pktgen's own `flows`/`flowlen` (FLOW_SEQ or random) only pin a
#   destination address per "flow" (struct flow_state holds cur_daddr and a
#   count, at most 65 536 of them); source address and ports still move with
#   every packet. They cannot shape 5-tuples, so this script leaves them
#   unset and makes the N flows from the ranges alone.
# - burst N sends each built packet N times (xmit_more); clone_skb stays 0,
#   so a new packet, hence the next flow, is built for every burst.
set -euo pipefail

PG=/proc/net/pktgen
SWEEP_SIZES=(64 128 256 512 1024 1280 1518)
MIN_SIZE=64
MAX_SIZE=1518
MAX_SRC_COUNT=65536
PORT_LIMIT=65535 # udp_*_max is an exclusive u16 bound

PROG=${0##*/}

usage() {
	cat <<EOF
Usage: $PROG -i DEV -m MAC [options]

Sends UDP from DEV (cable it to Tollgate's inside NIC) to MAC (the receiver
behind Tollgate's outside NIC) over N distinct flows, one pktgen thread per CPU.

Required:
  -i, --dev DEV           output device
  -m, --dst-mac MAC       destination MAC (the far-side receiver's NIC)

Threads:
  -t, --threads N         N threads on CPUs FIRST..FIRST+N-1 (default 1)
  -f, --first-cpu FIRST   first CPU for -t (default 0)
      --cpus LIST         explicit CPUs, e.g. 0-3,6 (instead of -t/-f)

Frames:
  -s, --size BYTES        Ethernet frame size on the wire, CRC included,
                          $MIN_SIZE..$MAX_SIZE (default 64; pktgen gets BYTES-4)
      --sweep             run ${SWEEP_SIZES[*]} in turn, print a table
  -M, --src-mac MAC       source MAC (default: DEV's own)
      --no-udp-csum       send UDP checksum 0 ("none", valid for IPv4) instead
                          of a computed one (flag UDPCSUM)

Flows (default: --flows 1024 split into source addresses x source ports):
      --flows N           distinct 5-tuples (default 1024)
      --src IP            first source address (default 198.18.0.0)
      --dst IP, -d IP     first destination address (default 198.19.0.1)
      --sport PORT        first UDP source port (default 1024)
      --dport PORT, -p    first UDP destination port (default 9)
      --src-count A, --sport-count B, --dst-count C, --dport-count D
                          set the ranges yourself (unset ones are 1); the flow
                          count is then lcm(A,B,C,D), or A*B*C*D with --random
      --random            draw each field at random instead of walking it

Run:
  -n, --count N           packets per thread (0: until the duration or Ctrl-C)
  -D, --duration SEC      stop after SEC seconds (default 10 without -n)
      --rate MBPS         total rate in Mb/s of frames without CRC (pktgen
                          "rate"), split evenly over the threads
      --pps PPS           total rate in packets/s (pktgen "ratep"), split evenly
  -b, --burst N           send each built packet N times (default 1; every
                          flow then gets N packets in a row)
      --dry-run           print every write to $PG instead of doing it
                          (needs neither root nor the pktgen module)
  -h, --help              this text
EOF
}

die() {
	echo "$PROG: $*" >&2
	exit 1
}

usage_error() {
	echo "$PROG: $*" >&2
	echo "Try '$PROG --help'." >&2
	exit 2
}

is_uint() {
	[[ $1 =~ ^[0-9]+$ ]] && ((${#1} <= 10))
}

need_uint() { # name value
	is_uint "$2" || usage_error "$1 needs a non-negative integer, got '$2'"
}

ip2int() { # a.b.c.d -> integer, or fails
	local ip=$1 a b c d
	[[ $ip =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] || return 1
	a=$((10#${BASH_REMATCH[1]})) b=$((10#${BASH_REMATCH[2]}))
	c=$((10#${BASH_REMATCH[3]})) d=$((10#${BASH_REMATCH[4]}))
	((a <= 255 && b <= 255 && c <= 255 && d <= 255)) || return 1
	echo $(((a << 24) | (b << 16) | (c << 8) | d))
}

int2ip() {
	local n=$1
	echo "$(((n >> 24) & 255)).$(((n >> 16) & 255)).$(((n >> 8) & 255)).$((n & 255))"
}

gcd() {
	local a=$1 b=$2 t
	while ((b)); do
		t=$((a % b))
		a=$b
		b=$t
	done
	echo "$a"
}

lcm() {
	local a=$1 b=$2
	echo $((a * b / $(gcd "$a" "$b")))
}

parse_cpus() { # "0-3,6" -> space-separated list, or fails
	local list=$1 part lo hi c out=()
	[[ $list =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || return 1
	IFS=, read -ra parts <<<"$list"
	for part in "${parts[@]}"; do
		if [[ $part == *-* ]]; then
			lo=$((10#${part%-*}))
			hi=$((10#${part#*-}))
			((lo <= hi)) || return 1
		else
			lo=$((10#$part))
			hi=$lo
		fi
		for ((c = lo; c <= hi; c++)); do
			out+=("$c")
		done
	done
	echo "${out[@]}"
}

# ---------------------------------------------------------------- options
DEV=""
DST_MAC=""
SRC_MAC=""
THREADS=""
FIRST_CPU=""
CPU_LIST=""
SIZE=""
SWEEP=0
UDP_CSUM=1
FLOWS=""
SRC_IP=198.18.0.0
DST_IP=198.19.0.1
SPORT=1024
DPORT=9
SRC_COUNT=""
SPORT_COUNT=""
DST_COUNT=""
DPORT_COUNT=""
RANDOM_FIELDS=0
COUNT=""
DURATION=""
RATE_MBPS=""
RATE_PPS=""
BURST=1
DRY_RUN=0

while (($#)); do
	opt=$1
	case $opt in
	-h | --help)
		usage
		exit 0
		;;
	--sweep) SWEEP=1 ;;
	--random) RANDOM_FIELDS=1 ;;
	--no-udp-csum) UDP_CSUM=0 ;;
	--dry-run) DRY_RUN=1 ;;
	-i | --dev | -m | --dst-mac | -M | --src-mac | -t | --threads | -f | --first-cpu | --cpus | \
		-s | --size | --flows | --src | -d | --dst | --sport | -p | --dport | --src-count | \
		--sport-count | --dst-count | --dport-count | -n | --count | -D | --duration | --rate | \
		--pps | -b | --burst)
		(($# >= 2)) || usage_error "$opt needs a value"
		val=$2
		shift
		case $opt in
		-i | --dev) DEV=$val ;;
		-m | --dst-mac) DST_MAC=$val ;;
		-M | --src-mac) SRC_MAC=$val ;;
		-t | --threads) THREADS=$val ;;
		-f | --first-cpu) FIRST_CPU=$val ;;
		--cpus) CPU_LIST=$val ;;
		-s | --size) SIZE=$val ;;
		--flows) FLOWS=$val ;;
		--src) SRC_IP=$val ;;
		-d | --dst) DST_IP=$val ;;
		--sport) SPORT=$val ;;
		-p | --dport) DPORT=$val ;;
		--src-count) SRC_COUNT=$val ;;
		--sport-count) SPORT_COUNT=$val ;;
		--dst-count) DST_COUNT=$val ;;
		--dport-count) DPORT_COUNT=$val ;;
		-n | --count) COUNT=$val ;;
		-D | --duration) DURATION=$val ;;
		--rate) RATE_MBPS=$val ;;
		--pps) RATE_PPS=$val ;;
		-b | --burst) BURST=$val ;;
		esac
		;;
	*) usage_error "unknown argument '$opt'" ;;
	esac
	shift
done

# ------------------------------------------------------------- validation
[[ -n $DEV ]] || usage_error "missing -i DEV (the device to send from)"
[[ $DEV =~ ^[A-Za-z0-9_.:-]{1,15}$ ]] || usage_error "bad device name '$DEV'"
[[ -n $DST_MAC ]] || usage_error "missing -m MAC (the far-side receiver's MAC)"
mac_re='^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$'
[[ $DST_MAC =~ $mac_re ]] || usage_error "bad destination MAC '$DST_MAC'"
[[ -z $SRC_MAC || $SRC_MAC =~ $mac_re ]] || usage_error "bad source MAC '$SRC_MAC'"

if ((SWEEP)); then
	[[ -z $SIZE ]] || usage_error "--sweep runs its own sizes; drop -s"
	SIZES=("${SWEEP_SIZES[@]}")
else
	SIZE=${SIZE:-64}
	need_uint "-s" "$SIZE"
	((SIZE >= MIN_SIZE && SIZE <= MAX_SIZE)) ||
		usage_error "frame size must be $MIN_SIZE..$MAX_SIZE bytes on the wire (CRC included), got $SIZE"
	SIZES=("$SIZE")
fi

if [[ -n $CPU_LIST ]]; then
	[[ -z $THREADS && -z $FIRST_CPU ]] || usage_error "--cpus replaces -t/-f; give one or the other"
	cpus=$(parse_cpus "$CPU_LIST") || usage_error "bad CPU list '$CPU_LIST' (e.g. 0-3,6)"
	read -ra CPUS <<<"$cpus"
	dups=$(printf '%s\n' "${CPUS[@]}" | sort -n | uniq -d)
	[[ -z $dups ]] || usage_error "CPU listed twice in '$CPU_LIST'"
else
	THREADS=${THREADS:-1}
	FIRST_CPU=${FIRST_CPU:-0}
	need_uint "-t" "$THREADS"
	need_uint "-f" "$FIRST_CPU"
	((THREADS >= 1)) || usage_error "-t needs at least 1 thread"
	CPUS=()
	for ((c = FIRST_CPU; c < FIRST_CPU + THREADS; c++)); do
		CPUS+=("$c")
	done
fi
NT=${#CPUS[@]}

need_uint "-b" "$BURST"
((BURST >= 1)) || usage_error "-b needs at least 1"

if [[ -n $COUNT ]]; then
	need_uint "-n" "$COUNT"
	if [[ -n $DURATION ]]; then
		need_uint "-D" "$DURATION"
		((DURATION >= 1)) || usage_error "-D needs at least 1 second"
	elif ((COUNT == 0)); then
		usage_error "-n 0 runs until stopped: give -D SEC as well"
	fi
else
	DURATION=${DURATION:-10}
	need_uint "-D" "$DURATION"
	((DURATION >= 1)) || usage_error "-D needs at least 1 second"
	COUNT=0
fi

[[ -z $RATE_MBPS || -z $RATE_PPS ]] || usage_error "give --rate or --pps, not both"
RATE_CMD=""
if [[ -n $RATE_MBPS ]]; then
	need_uint "--rate" "$RATE_MBPS"
	((RATE_MBPS / NT >= 1)) || usage_error "--rate $RATE_MBPS Mb/s over $NT threads is below 1 Mb/s each"
	RATE_CMD="rate $((RATE_MBPS / NT))"
elif [[ -n $RATE_PPS ]]; then
	need_uint "--pps" "$RATE_PPS"
	((RATE_PPS / NT >= 1)) || usage_error "--pps $RATE_PPS over $NT threads is below 1 packet/s each"
	RATE_CMD="ratep $((RATE_PPS / NT))"
fi

src=$(ip2int "$SRC_IP") || usage_error "bad --src address '$SRC_IP'"
dst=$(ip2int "$DST_IP") || usage_error "bad --dst address '$DST_IP'"
need_uint "--sport" "$SPORT"
need_uint "--dport" "$DPORT"
((SPORT >= 1 && SPORT < PORT_LIMIT)) || usage_error "--sport must be 1..$((PORT_LIMIT - 1))"
((DPORT >= 1 && DPORT < PORT_LIMIT)) || usage_error "--dport must be 1..$((PORT_LIMIT - 1))"

# ------------------------------------------------------------ flow ranges
# A source addresses, B source ports, C destination addresses, D destination
# ports; the distinct flows are lcm(A,B,C,D) (walk) or A*B*C*D (random).
if [[ -n $SRC_COUNT$SPORT_COUNT$DST_COUNT$DPORT_COUNT ]]; then
	A=${SRC_COUNT:-1} B=${SPORT_COUNT:-1} C=${DST_COUNT:-1} D=${DPORT_COUNT:-1}
	for v in "$A" "$B" "$C" "$D"; do
		need_uint "a range count" "$v"
		((v >= 1)) || usage_error "range counts must be at least 1"
	done
	if ((RANDOM_FIELDS)); then
		n=$((A * B * C * D))
	else
		n=$(lcm "$(lcm "$A" "$B")" "$(lcm "$C" "$D")")
	fi
	if [[ -n $FLOWS && $FLOWS != "$n" ]]; then
		usage_error "the ranges give $n flows, not --flows $FLOWS"
	fi
	FLOWS=$n
else
	FLOWS=${FLOWS:-1024}
	need_uint "--flows" "$FLOWS"
	((FLOWS >= 1)) || usage_error "--flows needs at least 1"
	max_ports=$((PORT_LIMIT - SPORT))
	# The largest A dividing N with B = N/A ports available (and, for the
	# walk, gcd(A, B) = 1): addresses first, so that RSS hashing on
	# addresses alone still spreads the flows.
	A=0
	a=$((FLOWS < MAX_SRC_COUNT ? FLOWS : MAX_SRC_COUNT))
	for (( ; a >= 1; a--)); do
		((FLOWS % a == 0)) || continue
		b=$((FLOWS / a))
		((b <= max_ports)) || break
		if ((RANDOM_FIELDS)) || (($(gcd "$a" "$b") == 1)); then
			A=$a
			break
		fi
	done
	if ((A == 0)); then
		if ((RANDOM_FIELDS)); then
			usage_error "cannot split $FLOWS flows into <= $MAX_SRC_COUNT source addresses x <= $max_ports source ports; set the ranges with --src-count/--sport-count/--dst-count/--dport-count"
		else
			usage_error "cannot split $FLOWS flows into coprime source addresses (<= $MAX_SRC_COUNT) x source ports (<= $max_ports), as the sequential walk needs; use --random, another --flows, or set the ranges with --src-count/--sport-count/--dst-count/--dport-count"
		fi
	fi
	B=$((FLOWS / A)) C=1 D=1
fi

((SPORT + B <= PORT_LIMIT)) || usage_error "source ports $SPORT + $B pass $((PORT_LIMIT - 1))"
((DPORT + D <= PORT_LIMIT)) || usage_error "destination ports $DPORT + $D pass $((PORT_LIMIT - 1))"
((src + A - 1 + RANDOM_FIELDS <= 4294967295)) || usage_error "source addresses run past 255.255.255.255"
((dst + C - 1 + RANDOM_FIELDS <= 4294967295)) || usage_error "destination addresses run past 255.255.255.255"

# pktgen's bounds for each range (see the header): addresses inclusive when
# walked, exclusive when random; ports always exclusive. A range of one is
# min = max (pktgen then leaves the field alone).
addr_max() { # base count
	if (($2 == 1)); then
		echo "$1"
	elif ((RANDOM_FIELDS)); then
		echo $(($1 + $2))
	else
		echo $(($1 + $2 - 1))
	fi
}
port_max() { # base count
	if (($2 == 1)); then
		echo "$1"
	else
		echo $(($1 + $2))
	fi
}
SRC_MIN=$(int2ip "$src")
SRC_MAX=$(int2ip "$(addr_max "$src" "$A")")
DST_MIN=$(int2ip "$dst")
DST_MAX=$(int2ip "$(addr_max "$dst" "$C")")
UDP_SRC_MAX=$(port_max "$SPORT" "$B")
UDP_DST_MAX=$(port_max "$DPORT" "$D")

# ------------------------------------------------------------- proc writes
# pg_write FILE CMD: one write, checked as samples/pktgen/functions.sh does
# (device and thread files report "Result: OK: ..." for a command they took).
pg_write() {
	local file=$PG/$1 cmd=$2 result
	if ((DRY_RUN)); then
		echo "echo \"$cmd\" > $file"
		return 0
	fi
	[[ -w $file ]] || die "$file is missing or not writable"
	if ! echo "$cmd" >"$file"; then
		result=$(grep -m1 '^Result:' "$file" 2>/dev/null || true)
		die "pktgen refused \"$cmd\" > $file${result:+ ($result)}"
	fi
	if [[ $1 != pgctrl ]] && ! grep -q '^Result: OK:' "$file"; then
		die "pktgen refused \"$cmd\" > $file: $(grep -m1 '^Result:' "$file" || echo 'no result')"
	fi
}

setup_devices() { # size
	local size=$1 cpu dev
	pg_write pgctrl reset
	for cpu in "${CPUS[@]}"; do
		dev=$DEV@$cpu
		pg_write "kpktgend_$cpu" "add_device $dev"
		pg_write "$dev" "flag QUEUE_MAP_CPU"
		pg_write "$dev" "flag NO_TIMESTAMP"
		if ((UDP_CSUM)); then
			pg_write "$dev" "flag UDPCSUM"
		fi
		pg_write "$dev" "count $COUNT"
		pg_write "$dev" "clone_skb 0"
		pg_write "$dev" "burst $BURST"
		# The CRC is the NIC's: pktgen builds size - 4 bytes.
		pg_write "$dev" "pkt_size $((size - 4))"
		# "rate" turns Mb/s into a delay using pkt_size: it must come after.
		if [[ -n $RATE_CMD ]]; then
			pg_write "$dev" "$RATE_CMD"
		else
			pg_write "$dev" "delay 0"
		fi
		pg_write "$dev" "dst_mac $DST_MAC"
		if [[ -n $SRC_MAC ]]; then
			pg_write "$dev" "src_mac $SRC_MAC"
		fi
		pg_write "$dev" "src_min $SRC_MIN"
		pg_write "$dev" "src_max $SRC_MAX"
		pg_write "$dev" "dst_min $DST_MIN"
		pg_write "$dev" "dst_max $DST_MAX"
		pg_write "$dev" "udp_src_min $SPORT"
		pg_write "$dev" "udp_src_max $UDP_SRC_MAX"
		pg_write "$dev" "udp_dst_min $DPORT"
		pg_write "$dev" "udp_dst_max $UDP_DST_MAX"
		if ((RANDOM_FIELDS)); then
			((A == 1)) || pg_write "$dev" "flag IPSRC_RND"
			((B == 1)) || pg_write "$dev" "flag UDPSRC_RND"
			((C == 1)) || pg_write "$dev" "flag IPDST_RND"
			((D == 1)) || pg_write "$dev" "flag UDPDST_RND"
		fi
	done
}

STARTER=""
stop_run() {
	if [[ -n $STARTER ]]; then
		echo stop >"$PG/pgctrl" || true
		wait "$STARTER" 2>/dev/null || true
		STARTER=""
	fi
}

# "start" returns when every thread has finished, so it runs in the
# background: the script stops it after the duration (or on Ctrl-C).
run_once() {
	if ((DRY_RUN)); then
		if [[ -n $DURATION ]]; then
			echo "echo \"start\" > $PG/pgctrl &"
			echo "sleep $DURATION"
			echo "echo \"stop\" > $PG/pgctrl"
			echo "wait"
		else
			echo "echo \"start\" > $PG/pgctrl"
		fi
		return 0
	fi
	(echo start >"$PG/pgctrl") &
	STARTER=$!
	if [[ -n $DURATION ]]; then
		local deadline=$((SECONDS + DURATION))
		while kill -0 "$STARTER" 2>/dev/null && ((SECONDS < deadline)); do
			sleep 0.2
		done
		if kill -0 "$STARTER" 2>/dev/null; then
			echo stop >"$PG/pgctrl"
		fi
	fi
	wait "$STARTER" || die "writing start to $PG/pgctrl failed"
	STARTER=""
}

# Results: "Result: OK: 10000123(c9999000+d1123) usec, 1488000 (60byte,0frags)"
# then "  148800pps 71Mb/sec (71424000bps) errors: 0" (show_results()).
TOTAL_SENT=0 TOTAL_PPS=0 TOTAL_MBPS=0 TOTAL_ERRORS=0
read_results() { # size
	local size=$1 cpu dev file text sent pps mbps errors
	TOTAL_SENT=0 TOTAL_PPS=0 TOTAL_MBPS=0 TOTAL_ERRORS=0
	printf '%-6s %-18s %14s %12s %10s %8s\n' cpu device sent pps Mb/s errors
	for cpu in "${CPUS[@]}"; do
		dev=$DEV@$cpu
		file=$PG/$dev
		text=$(sed -n '/^Result:/,$p' "$file" | tr '\n' ' ')
		if [[ $text =~ Result:\ OK:\ [0-9]+\(c[0-9]+\+d[0-9]+\)\ usec,\ ([0-9]+)\ .*\ ([0-9]+)pps\ ([0-9]+)Mb/sec\ \([0-9]+bps\)\ errors:\ ([0-9]+) ]]; then
			sent=${BASH_REMATCH[1]} pps=${BASH_REMATCH[2]}
			mbps=${BASH_REMATCH[3]} errors=${BASH_REMATCH[4]}
		else
			echo "$dev: no result: ${text:-empty}" >&2
			sent=0 pps=0 mbps=0 errors=0
		fi
		printf '%-6s %-18s %14s %12s %10s %8s\n' "$cpu" "$dev" "$sent" "$pps" "$mbps" "$errors"
		TOTAL_SENT=$((TOTAL_SENT + sent))
		TOTAL_PPS=$((TOTAL_PPS + pps))
		TOTAL_MBPS=$((TOTAL_MBPS + mbps))
		TOTAL_ERRORS=$((TOTAL_ERRORS + errors))
	done
	printf '%-6s %-18s %14s %12s %10s %8s\n' sum "" "$TOTAL_SENT" "$TOTAL_PPS" "$TOTAL_MBPS" "$TOTAL_ERRORS"
	echo "# ${size} B frames: $(wire_mbps "$TOTAL_PPS" "$size") Mb/s on the wire (CRC, preamble and gap included)$(line_share "$TOTAL_PPS" "$size")"
}

LINK_MBPS=0
wire_mbps() { # pps size -> Mb/s with the 20 bytes of preamble, SFD and gap
	echo $(($1 * ($2 + 20) * 8 / 1000000))
}
line_share() { # pps size -> ", NN.N % of the link" when the speed is known
	((LINK_MBPS > 0)) || return 0
	local permille=$(($1 * ($2 + 20) * 8 / LINK_MBPS / 1000))
	echo ", $((permille / 10)).$((permille % 10)) % of the ${LINK_MBPS} Mb/s link"
}

# --------------------------------------------------------------- the run
span() { # first last count noun -> "first", or "first-last (count noun)"
	if (($3 == 1)); then
		echo "$1"
	else
		echo "$1-$2 ($3 $4)"
	fi
}

plan() {
	local how="walked in lockstep"
	((RANDOM_FIELDS)) && how="drawn at random"
	echo "# pktgen on $DEV, threads on CPUs ${CPUS[*]} (device $DEV@CPU each, every thread sends the same flows)"
	echo "# $FLOWS flows ($how): source $(span "$SRC_MIN" "$(int2ip $((src + A - 1)))" "$A" addresses), port $(span "$SPORT" $((SPORT + B - 1)) "$B" ports), destination $(span "$DST_MIN" "$(int2ip $((dst + C - 1)))" "$C" addresses), port $(span "$DPORT" $((DPORT + D - 1)) "$D" ports)"
	echo "# frames: ${SIZES[*]} B on the wire, CRC included = pkt_size $(for s in "${SIZES[@]}"; do printf '%s ' $((s - 4)); done)(pktgen leaves the 4-byte CRC to the NIC)"
	if ((COUNT > 0)); then
		echo "# $COUNT packets per thread${DURATION:+, at most $DURATION s}; burst $BURST${RATE_CMD:+; $RATE_CMD per thread}"
	else
		echo "# $DURATION s per run; burst $BURST${RATE_CMD:+; $RATE_CMD per thread}"
	fi
}

if ((!DRY_RUN)); then
	(($(id -u) == 0)) || die "needs root (writes to $PG); --dry-run shows the writes without it"
	[[ -e /sys/class/net/$DEV ]] || die "no such device: $DEV"
	[[ $(cat "/sys/class/net/$DEV/operstate" 2>/dev/null) != down ]] || die "$DEV is down (ip link set $DEV up)"
	[[ $(cat "/sys/class/net/$DEV/carrier" 2>/dev/null || echo 0) == 1 ]] || die "$DEV has no carrier (cable, or the link partner down?)"
	if [[ ! -e $PG/pgctrl ]]; then
		if ! err=$(modprobe pktgen 2>&1); then
			die "cannot load the kernel's pktgen module (modprobe pktgen: ${err:-failed}). It needs a kernel built with CONFIG_NET_PKTGEN (=m or =y); some distributions ship pktgen.ko in a separate package (Ubuntu: linux-modules-extra-$(uname -r)); in a container, load it on the host"
		fi
		[[ -e $PG/pgctrl ]] || die "pktgen is loaded but $PG/pgctrl is missing (is this network namespace the one DEV lives in?)"
	fi
	for cpu in "${CPUS[@]}"; do
		[[ -e $PG/kpktgend_$cpu ]] || die "no pktgen thread for CPU $cpu ($PG/kpktgend_$cpu): CPU offline or absent"
	done
	speed=$(cat "/sys/class/net/$DEV/speed" 2>/dev/null || echo 0)
	[[ $speed =~ ^[0-9]+$ ]] && LINK_MBPS=$speed
	trap 'stop_run; echo "$PROG: interrupted" >&2; exit 130' INT TERM
fi

plan
declare -a ROWS=()
for size in "${SIZES[@]}"; do
	if ((SWEEP)); then
		echo "# --- ${size} B"
	fi
	setup_devices "$size"
	run_once
	if ((!DRY_RUN)); then
		read_results "$size"
		ROWS+=("$size $TOTAL_SENT $TOTAL_PPS $TOTAL_MBPS $TOTAL_ERRORS")
	fi
done

if ((SWEEP && !DRY_RUN)); then
	echo
	printf '%6s %14s %12s %12s %12s %8s%s\n' size sent pps "Mb/s(pktgen)" "Mb/s(wire)" errors "$( ((LINK_MBPS > 0)) && echo '  % of link')"
	for row in "${ROWS[@]}"; do
		read -r size sent pps mbps errors <<<"$row"
		share=""
		if ((LINK_MBPS > 0)); then
			permille=$((pps * (size + 20) * 8 / LINK_MBPS / 1000))
			share=$(printf '  %9s' "$((permille / 10)).$((permille % 10))")
		fi
		printf '%6s %14s %12s %12s %12s %8s%s\n' "$size" "$sent" "$pps" "$mbps" "$(wire_mbps "$pps" "$size")" "$errors" "$share"
	done
fi
