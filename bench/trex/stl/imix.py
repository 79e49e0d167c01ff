"""TRex stateless profile: IMIX (64/594/1518-byte frames at 7:4:1) over N flows.

The simple IMIX: seven 64-byte, four 594-byte and one 1518-byte frame (sizes
on the wire, CRC included) out of every twelve, 361.8 bytes on average.
Each size is one stream; all three walk the same N UDP flows with the field
engine's tuple generator, so every flow sees every size.

Port 0 (direction 0) = Tollgate's inside NIC, port 1 (direction 1) = the
outside NIC, sending the replies of the same flows. Start port 0 first: the
strict policy only lets the outside answer flows the inside opened.

    start -f bench/trex/stl/imix.py -p 0 -m 5gbps -t --flows 100000
    start -f bench/trex/stl/imix.py -p 1 -m 5gbps -t --flows 100000

The multiplier scales the three streams together (their rates stay 7:4:1).
"""

import argparse
import ipaddress
import os

from trex.stl.api import (
    IP,
    UDP,
    CTRexVmInsFixHwCs,
    Ether,
    STLPktBuilder,
    STLStream,
    STLTXCont,
    STLVM,
)

FCS = 4  # the NIC appends the CRC: TRex builds frame size - 4 bytes
MAX_CLIENTS = 65536
# Inter-stream gaps (microseconds) so the three streams do not start in step.
ISG = (0.0, 0.1, 0.2)


def ipv4(text):
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError("not an IPv4 address: %r" % text)


def int_list(text):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("not a comma-separated list of integers: %r" % text)
    return values


def parse_tunables(tunables):
    parser = argparse.ArgumentParser(
        prog=os.path.basename(__file__),
        description="IMIX over N UDP flows; port 0 = Tollgate inside, port 1 = outside.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sizes", type=int_list, default=[64, 594, 1518],
                        help="frame sizes on the wire, CRC included (64..9216)")
    parser.add_argument("--weights", type=int_list, default=[7, 4, 1],
                        help="relative packet rates of the sizes")
    parser.add_argument("--flows", type=int, default=1024,
                        help="distinct UDP flows (e.g. 1024, 100000)")
    parser.add_argument("--clients", type=int, default=0,
                        help="client addresses (0: min(flows, %d))" % MAX_CLIENTS)
    parser.add_argument("--client", type=ipv4, default="16.0.0.0",
                        help="first client (inside) address")
    parser.add_argument("--server", type=ipv4, default="48.0.0.1",
                        help="server (outside) address")
    parser.add_argument("--sport", type=int, default=1025,
                        help="first client UDP port")
    parser.add_argument("--dport", type=int, default=12,
                        help="server UDP port")
    parser.add_argument("--csum", choices=("hw", "zero"), default="hw",
                        help="UDP checksum: 'hw' fixes it per packet with the NIC's "
                             "offload (STLVmFixChecksumHw); 'zero' sends 0 (no "
                             "checksum, valid for IPv4) and fixes only the IPv4 header")
    args = parser.parse_args(tunables)
    if len(args.sizes) != len(args.weights) or not args.sizes:
        parser.error("--sizes and --weights need the same number of values")
    if len(args.sizes) > len(ISG):
        parser.error("at most %d sizes" % len(ISG))
    if any(not 64 <= s <= 9216 for s in args.sizes):
        parser.error("sizes must be 64..9216 (frame on the wire, CRC included)")
    if any(w < 1 for w in args.weights):
        parser.error("weights must be at least 1")
    if args.flows < 1:
        parser.error("--flows must be at least 1")
    if args.clients == 0:
        args.clients = min(args.flows, MAX_CLIENTS)
    if not 1 <= args.clients <= args.flows:
        parser.error("--clients must be 1..flows")
    if int(ipaddress.IPv4Address(args.client)) + args.clients - 1 > 0xFFFFFFFF:
        parser.error("client addresses run past 255.255.255.255")
    ports = -(-args.flows // args.clients)  # ceiling
    if not 1 <= args.sport or args.sport + ports - 1 > 65535:
        parser.error("%d flows over %d clients need ports %d..%d: past 65535"
                     % (args.flows, args.clients, args.sport, args.sport + ports - 1))
    if not 1 <= args.dport <= 65535:
        parser.error("--dport must be 1..65535")
    args.last_client = str(ipaddress.IPv4Address(args.client) + (args.clients - 1))
    args.last_sport = args.sport + ports - 1
    return args


def flow_stream(args, direction, size, pps, isg):
    """One continuous stream of `size`-byte frames walking the N flows.

    Direction 0 (inside): client -> server, the client address and port
    from the tuple generator. Direction 1 (outside): the same flows' replies,
    server -> client, the generated address and port as destination.
    """
    udp = {"chksum": 0} if args.csum == "zero" else {}
    if direction == 0:
        l3 = IP(src=args.client, dst=args.server)
        l4 = UDP(sport=args.sport, dport=args.dport, **udp)
        ip_field, port_field = "IP.src", "UDP.sport"
    else:
        l3 = IP(src=args.server, dst=args.client)
        l4 = UDP(sport=args.dport, dport=args.sport, **udp)
        ip_field, port_field = "IP.dst", "UDP.dport"
    base = Ether() / l3 / l4
    pad = max(0, size - FCS - len(base)) * "x"

    vm = STLVM()
    vm.tuple_var(name="flow", ip_min=args.client, ip_max=args.last_client,
                 port_min=args.sport, port_max=args.last_sport,
                 limit_flows=args.flows)
    vm.write(fv_name="flow.ip", pkt_offset=ip_field)
    vm.write(fv_name="flow.port", pkt_offset=port_field)
    if args.csum == "hw":
        # Last: IPv4 header and UDP checksums over the rewritten packet.
        vm.fix_chksum_hw(l3_offset="IP", l4_offset="UDP",
                         l4_type=CTRexVmInsFixHwCs.L4_TYPE_UDP)
    else:
        vm.fix_chksum(offset="IP")

    return STLStream(packet=STLPktBuilder(pkt=base / pad, vm=vm),
                     isg=isg, mode=STLTXCont(pps=pps))


class TollgateImix(object):
    def get_streams(self, tunables, **kwargs):
        args = parse_tunables(tunables)
        # TRex passes direction = port_id % 2.
        direction = kwargs.get("direction", 0)
        return [flow_stream(args, direction, size, pps=weight, isg=isg)
                for size, weight, isg in zip(args.sizes, args.weights, ISG)]


# dynamic load: used by the TRex console and the simulator
def register():
    return TollgateImix()
