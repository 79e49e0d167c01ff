"""TRex stateless profile: UDP frames of one size over N flows, for a Tollgate box.

Port 0 (direction 0) is cabled to Tollgate's inside NIC and sends from the
client addresses to the server; port 1 (direction 1) is cabled to the outside
NIC and sends the replies of the very same flows (addresses and ports
swapped). Tollgate's strict policy lets the outside answer only flows the
inside opened, so start port 0 first, then port 1 once every flow has been
seen (N packets on port 0). See bench/trex/README.md.

    start -f bench/trex/stl/udp_flows.py -p 0 -m 1mpps -t --flows 100000
    start -f bench/trex/stl/udp_flows.py -p 1 -m 1mpps -t --flows 100000

(-t must be the last option of `start`; every tunable below goes after it.)

The N flows come from the field engine's tuple generator (STLVmTupleGen):
client addresses advance first, then the source port, and after N tuples the
walk starts again. TRex splits the walk between its cores; both directions
use the same split, so they cover the same flows.
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


def ipv4(text):
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError("not an IPv4 address: %r" % text)


def add_flow_arguments(parser):
    """The options every profile over N flows takes (imix.py uses them too)."""
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


def check_flows(parser, args):
    """Checks the flow options and derives the last client address and port."""
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


def parse_tunables(tunables):
    parser = argparse.ArgumentParser(
        prog=os.path.basename(__file__),
        description="UDP over N flows; port 0 = Tollgate inside, port 1 = outside.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--size", type=int, default=64,
                        help="frame size on the wire, CRC included (64..9216)")
    add_flow_arguments(parser)
    args = parser.parse_args(tunables)
    if not 64 <= args.size <= 9216:
        parser.error("--size must be 64..9216 (frame on the wire, CRC included)")
    check_flows(parser, args)
    return args


def flow_stream(args, direction, size, pps=1, isg=0):
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


class TollgateUdpFlows(object):
    def get_streams(self, tunables, **kwargs):
        args = parse_tunables(tunables)
        # TRex passes direction = port_id % 2.
        direction = kwargs.get("direction", 0)
        return [flow_stream(args, direction, args.size)]


# dynamic load: used by the TRex console and the simulator
def register():
    return TollgateUdpFlows()
