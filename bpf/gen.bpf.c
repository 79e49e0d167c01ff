// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* A traffic generator for the bench harness: run with BPF_PROG_TEST_RUN and
 * BPF_F_TEST_XDP_LIVE_FRAMES on the client's interface, it sends the given
 * IPv4/UDP frame again and again, each time from another of `flows` source
 * ports (and destination ports beyond 50 000 flows), out of that interface;
 * `reverse` sends the replies of the same flows. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct gen_cfg {
	__u32 flows;
	__u32 counter;
	/* Non-zero: the frame is a reply (server to client), ports swapped. */
	__u32 reverse;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_cfg);
} gencfg SEC(".maps");

SEC("xdp")
int tg_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct gen_cfg *c = bpf_map_lookup_elem(&gencfg, &zero);
	/* Ethernet 14 + IPv4 20 + UDP 8, no IP options. */
	__u16 *udp = data + 14 + 20;

	if (!c || c->flows == 0 || (void *)(udp + 4) > end)
		return XDP_ABORTED;
	/* One CPU runs the generator: a plain increment is enough. */
	__u32 n = c->counter++ % c->flows;
	__u16 client = bpf_htons(1024 + n % 50000);
	__u16 server = bpf_htons(5000 + n / 50000);
	udp[0] = c->reverse ? server : client;
	udp[1] = c->reverse ? client : server;
	udp[3] = 0; /* no UDP checksum */
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
