"""TRex advanced-stateful profile: passive-mode FTP sessions through a Tollgate box.

Each session is a control connection to port 21 from a client on TRex port 0
(Tollgate's inside NIC) to the server on port 1 (the outside NIC):

    220 greeting, USER/331, PASS/230, TYPE I/200,
    PASV/"227 Entering Passive Mode (a,b,c,d,p1,p2)", RETR/150,
    the data connection, 226, QUIT/221, close.

The 227 names the server address and the fixed --data-port. Tollgate's FTP
helper reads it on the control connection and creates an expectation
(client address, any port -> server address, data port); the data
connection, a second template ("ftp_data") that the client's program starts
with exec_template once it has read the 150, matches it and passes as
RELATED. With bench/trex/tollgate-trex.toml the inside may open only ports
21 and 80 (and UDP), so without the expectation the data connection is
dropped: every completed transfer is the helper at work.

    start -f bench/trex/astf/ftp_sessions.py -m 1 -t --cps 500 --size 100000

TRex's limits here (bench/trex/README.md has the rest):
- Program payloads are fixed bytes: the 227 can only name one address, so
  the server pool is the single address --server. The profile is for one
  port pair (0/1): on further pairs ASTFIPGenGlobal's ip_offset moves the
  server address and the 227 would name another host (Tollgate refuses that
  announcement: tollgate_helper_refused_total{helper="ftp"}).
- Templates on their own run independently (each at its own rate), so a
  data template with its own rate would start before the expectation exists
  and from another client address. Here the data template has no rate of its
  own: exec_template opens it from inside the session, from the session's
  client address, after the 227 has crossed Tollgate.
- One client address can have one expectation for (server, data port) at a
  time: a second session from the same address while the first one's data
  connection has not started is refused as a clash
  (tollgate_conntrack_expect_refused_total; its data connection then finds
  the other session's expectation or none). Clients are used in turn, so
  keep --clients above cps x session time.
- The server sends 226 right after 150 (a TRex server flow cannot wait for
  another flow); the client reads it only after the transfer.
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

CONTROL_PORT = 21
CONTROL_GROUP = "ftp_ctrl"
DATA_GROUP = "ftp_data"
FILE_NAME = "bench.bin"
# Marks where, in the control dialogue, the client runs the data connection.
DATA = "data"


def ipv4(text):
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError("not an IPv4 address: %r" % text)


def pasv_reply(server, data_port):
    """The 227 line: the server's address and the data port as six numbers."""
    return "227 Entering Passive Mode (%s,%d,%d).\r\n" % (
        server.replace(".", ","), data_port >> 8, data_port & 0xFF)


def control_dialogue(server, data_port, size):
    """The control connection in order: ("c" or "s", line) for what the client
    or the server sends, and (DATA, None) where the data connection runs."""
    return [
        ("s", "220 tollgate-bench FTP server ready.\r\n"),
        ("c", "USER anonymous\r\n"),
        ("s", "331 Please specify the password.\r\n"),
        ("c", "PASS bench@example.org\r\n"),
        ("s", "230 Login successful.\r\n"),
        ("c", "TYPE I\r\n"),
        ("s", "200 Switching to Binary mode.\r\n"),
        ("c", "PASV\r\n"),
        ("s", pasv_reply(server, data_port)),
        ("c", "RETR %s\r\n" % FILE_NAME),
        ("s", "150 Opening BINARY mode data connection for %s (%d bytes).\r\n"
         % (FILE_NAME, size)),
        (DATA, None),
        ("s", "226 Transfer complete.\r\n"),
        ("c", "QUIT\r\n"),
        ("s", "221 Goodbye.\r\n"),
    ]


def control_programs(dialogue):
    """Client and server programs of the control connection: each side sends
    its lines and waits for the other's, byte for byte."""
    prog_c = ASTFProgram()
    prog_s = ASTFProgram()
    for who, line in dialogue:
        if who == DATA:
            # Open a flow of the data template from this flow's client
            # address and wait until it is done.
            prog_c.set_next_template(DATA_GROUP)
            prog_c.exec_template()
        elif who == "c":
            prog_c.send(line)
            prog_s.recv(len(line))
        else:
            prog_s.send(line)
            prog_c.recv(len(line))
    # The client closes after 221; the server then closes too.
    prog_s.wait_for_peer_close()
    return prog_c, prog_s


def data_programs(size):
    """The data connection: the server sends the file and closes (end of
    file); the client reads it all, then closes."""
    prog_c = ASTFProgram()
    prog_c.recv(size)
    prog_s = ASTFProgram()
    prog_s.send("", size=size, fill="x")
    return prog_c, prog_s


def parse_tunables(tunables):
    parser = argparse.ArgumentParser(
        prog=os.path.basename(__file__),
        description="Passive FTP sessions; clients on port 0 (Tollgate inside), "
                    "the server on port 1 (outside).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--cps", type=float, default=100.0,
                        help="new sessions per second (times the -m multiplier)")
    parser.add_argument("--size", type=int, default=100000,
                        help="bytes of the file each session downloads")
    parser.add_argument("--data-port", type=int, default=50000,
                        help="the port the 227 announces")
    parser.add_argument("--client", type=ipv4, default="16.0.0.0",
                        help="first client (inside) address")
    parser.add_argument("--clients", type=int, default=65536,
                        help="client addresses, used in turn")
    parser.add_argument("--server", type=ipv4, default="48.0.0.1",
                        help="the server (outside) address, named in the 227")
    args = parser.parse_args(tunables)
    if args.cps < 0.5:
        parser.error("--cps must be at least 0.5 (TRex's minimum per template)")
    if args.size < 1:
        parser.error("--size must be at least 1")
    if not 1024 <= args.data_port <= 65535:
        parser.error("--data-port must be 1024..65535")
    first = ipaddress.IPv4Address(args.client)
    if args.clients < 1 or int(first) + args.clients - 1 > 0xFFFFFFFF:
        parser.error("--clients must be at least 1 and stay below 255.255.255.255")
    args.last_client = str(first + (args.clients - 1))
    return args


class TollgateFtpSessions(object):
    def get_profile(self, tunables, **kwargs):
        args = parse_tunables(tunables)
        ip_gen = ASTFIPGen(
            glob=ASTFIPGenGlobal(ip_offset="1.0.0.0"),
            dist_client=ASTFIPGenDist(ip_range=[args.client, args.last_client],
                                      distribution="seq"),
            # One server address: the one the 227 names.
            dist_server=ASTFIPGenDist(ip_range=[args.server, args.server],
                                      distribution="seq"),
        )

        ctrl_c, ctrl_s = control_programs(
            control_dialogue(args.server, args.data_port, args.size))
        control = ASTFTemplate(
            client_template=ASTFTCPClientTemplate(program=ctrl_c, ip_gen=ip_gen,
                                                  port=CONTROL_PORT, cps=args.cps),
            server_template=ASTFTCPServerTemplate(program=ctrl_s,
                                                  assoc=ASTFAssociationRule(port=CONTROL_PORT)),
            tg_name=CONTROL_GROUP,
        )

        data_c, data_s = data_programs(args.size)
        data = ASTFTemplate(
            # cps 0: never started on its own, only by exec_template above.
            client_template=ASTFTCPClientTemplate(program=data_c, ip_gen=ip_gen,
                                                  port=args.data_port, cps=0),
            server_template=ASTFTCPServerTemplate(program=data_s,
                                                  assoc=ASTFAssociationRule(port=args.data_port)),
            tg_name=DATA_GROUP,
        )
        return ASTFProfile(default_ip_gen=ip_gen, templates=[control, data])


# dynamic load: used by the TRex console and the simulator
def register():
    return TollgateFtpSessions()
