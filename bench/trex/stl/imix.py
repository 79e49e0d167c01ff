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
import os

# TRex puts the profile's directory on the import path while loading it.
from udp_flows import add_flow_arguments, check_flows, flow_stream

# Inter-stream gaps (microseconds) so the three streams do not start in step.
ISG = (0.0, 0.1, 0.2)


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
    add_flow_arguments(parser)
    args = parser.parse_args(tunables)
    if len(args.sizes) != len(args.weights) or not args.sizes:
        parser.error("--sizes and --weights need the same number of values")
    if len(args.sizes) > len(ISG):
        parser.error("at most %d sizes" % len(ISG))
    if any(not 64 <= s <= 9216 for s in args.sizes):
        parser.error("sizes must be 64..9216 (frame on the wire, CRC included)")
    if any(w < 1 for w in args.weights):
        parser.error("weights must be at least 1")
    check_flows(parser, args)
    return args


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
