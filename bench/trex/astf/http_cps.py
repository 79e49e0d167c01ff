"""TRex advanced-stateful profile: HTTP connections per second through a Tollgate box.

Every connection is a whole TCP session: handshake, one HTTP/1.1 GET, a
200 response of --size body bytes, then the client closes. Clients (TRex
port 0, cabled to Tollgate's inside NIC) come from a pool of --clients
addresses from --client on; servers (port 1, the outside NIC) from
--servers addresses from --server on. Tollgate sees each connection as new
from the inside (accepted by the strict policy), then established both ways,
then closing.

    start -f bench/trex/astf/http_cps.py -m 1 -t --cps 10000 --size 1024

The connection rate is --cps times the multiplier (-m) of `start`; -t must
be the last option, every tunable goes after it. See bench/trex/README.md.
"""

import argparse
import ipaddress
import os

from trex.astf.api import (
    ASTFAssociationRule,
    ASTFIPGen,
    ASTFIPGenDist,
    ASTFIPGenGlobal,
    ASTFProfile,
    ASTFProgram,
    ASTFTCPClientTemplate,
    ASTFTCPServerTemplate,
    ASTFTemplate,
)


def ipv4(text):
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError("not an IPv4 address: %r" % text)


def http_request(server, size):
    """The GET the client sends (its length is what the server waits for)."""
    return ("GET /bench/%d HTTP/1.1\r\n"
            "Host: %s\r\n"
            "User-Agent: tollgate-bench\r\n"
            "Accept: */*\r\n"
            "\r\n" % (size, server))


def http_response_head(size):
    """Status line and headers of the answer; --size body bytes follow."""
    return ("HTTP/1.1 200 OK\r\n"
            "Server: tollgate-bench\r\n"
            "Content-Type: application/octet-stream\r\n"
            "Content-Length: %d\r\n"
            "Connection: close\r\n"
            "\r\n" % size)


def parse_tunables(tunables):
    parser = argparse.ArgumentParser(
        prog=os.path.basename(__file__),
        description="HTTP connections per second; clients on port 0 (Tollgate inside), "
                    "servers on port 1 (outside).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--cps", type=float, default=1000.0,
                        help="new connections per second (times the -m multiplier)")
    parser.add_argument("--size", type=int, default=1024,
                        help="HTTP response body bytes")
    parser.add_argument("--client", type=ipv4, default="16.0.0.0",
                        help="first client (inside) address")
    parser.add_argument("--clients", type=int, default=65536,
                        help="client addresses")
    parser.add_argument("--server", type=ipv4, default="48.0.0.0",
                        help="first server (outside) address")
    parser.add_argument("--servers", type=int, default=256,
                        help="server addresses")
    parser.add_argument("--port", type=int, default=80,
                        help="server TCP port")
    args = parser.parse_args(tunables)
    if args.cps < 0.5:
        parser.error("--cps must be at least 0.5 (TRex's minimum per template)")
    if args.size < 0:
        parser.error("--size must not be negative")
    if not 1 <= args.port <= 65535:
        parser.error("--port must be 1..65535")
    for name in ("client", "server"):
        count = getattr(args, name + "s")
        first = ipaddress.IPv4Address(getattr(args, name))
        if count < 1 or int(first) + count - 1 > 0xFFFFFFFF:
            parser.error("--%ss must be at least 1 and stay below 255.255.255.255" % name)
        setattr(args, "last_" + name, str(first + (count - 1)))
    return args


class TollgateHttpCps(object):
    def get_profile(self, tunables, **kwargs):
        args = parse_tunables(tunables)
        request = http_request(args.server, args.size)
        head = http_response_head(args.size)
        total = len(head) + args.size

        # Client: the (implicit) connect, GET, read the whole answer, close.
        prog_c = ASTFProgram()
        prog_c.send(request)
        prog_c.recv(total)

        # Server: read the GET, answer (head, then the body filled to size),
        # close once the client has.
        prog_s = ASTFProgram()
        prog_s.recv(len(request))
        prog_s.send(head, size=total, fill="x")
        prog_s.wait_for_peer_close()

        ip_gen = ASTFIPGen(
            # Further port pairs (2/3, ...) shift both pools by this offset.
            glob=ASTFIPGenGlobal(ip_offset="1.0.0.0"),
            dist_client=ASTFIPGenDist(ip_range=[args.client, args.last_client],
                                      distribution="seq"),
            dist_server=ASTFIPGenDist(ip_range=[args.server, args.last_server],
                                      distribution="seq"),
        )
        template = ASTFTemplate(
            client_template=ASTFTCPClientTemplate(program=prog_c, ip_gen=ip_gen,
                                                  port=args.port, cps=args.cps),
            server_template=ASTFTCPServerTemplate(program=prog_s,
                                                  assoc=ASTFAssociationRule(port=args.port)),
            tg_name="http",
        )
        return ASTFProfile(default_ip_gen=ip_gen, templates=template)


# dynamic load: used by the TRex console and the simulator
def register():
    return TollgateHttpCps()
