// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* A traffic generator for the bench harness and the flood tests: run with
 * BPF_PROG_TEST_RUN and BPF_F_TEST_XDP_LIVE_FRAMES on the client's interface,
 * it sends the given frame again and again out of that interface, each time
 * as another of `flows` flows:
 *   mode 0: an IPv4/UDP frame, from another source port (and destination
 *           port beyond 50 000 flows); `reverse` sends the replies instead;
 *   mode 1: an IPv4/TCP SYN, from another (spoofed) source address in the
 *           frame's source /17 and another source port: a SYN flood. The IP
 *           and TCP checksums are kept right, so only the table is attacked.
 * With `gap_ns` set, each frame waits (spinning on the clock, in bpf_loop)
 * until `gap_ns` after the previous one's slot: a paced sender, for the
 * RFC 2544 zero-loss search. The kernel transmits the frames of a test run
 * in batches of 64 (and forwards them on this CPU, at the batch's end, when
 * the peer runs inline), so the rate holds on average: a sender behind its
 * schedule sends at once until it has caught up, but one more than 2 ms
 * behind starts a fresh schedule instead of bursting (the caller sees the
 * lower rate in the run's time).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct gen_cfg {
	__u32 flows;
	__u32 counter;
	/* Non-zero: the frame is a reply (server to client), ports swapped. */
	__u32 reverse;
	__u32 mode;
	/* Pacing: nanoseconds between frames (0: flat out) and the next
	 * frame's slot (0: now). */
	__u64 gap_ns;
	__u64 next_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_cfg);
} gencfg SEC(".maps");

/* One's-complement update of a checksum for one 16-bit word changed
 * (RFC 1624, eqn. 3); byte order does not matter if it is the same for all. */
static __always_inline __u16 csum_update(__u16 csum, __u16 old, __u16 new)
{
	__u32 s = (__u16)~csum + (__u16)~old + new;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

static long spin(__u64 index, void *deadline)
{
	return bpf_ktime_get_ns() >= *(__u64 *)deadline;
}

/* Waits for the next frame's slot. */
static __always_inline void pace(struct gen_cfg *c)
{
	__u64 now = bpf_ktime_get_ns();

	if (c->next_ns == 0 || now > c->next_ns + 2000000) {
		c->next_ns = now;
	} else if (now < c->next_ns) {
		__u64 deadline = c->next_ns;

		bpf_loop(1 << 20, spin, &deadline, 0);
	}
	c->next_ns += c->gap_ns;
}

SEC("xdp")
int tg_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct gen_cfg *c = bpf_map_lookup_elem(&gencfg, &zero);
	/* Ethernet 14 + IPv4 20 (no options) + L4. */
	__u16 *ip = data + 14;
	__u16 *l4 = data + 14 + 20;

	if (!c || c->flows == 0)
		return XDP_ABORTED;
	if (c->gap_ns)
		pace(c);
	/* One CPU runs the generator: a plain increment is enough. */
	__u32 n = c->counter++ % c->flows;
	if (c->mode == 1) {
		/* TCP header: ports, seq, ack, offset/flags, window, checksum. */
		if ((void *)(l4 + 10) > end)
			return XDP_ABORTED;
		__u16 old_lo = ip[7];
		__u16 old_port = l4[0];
		__u16 new_lo = bpf_htons((bpf_ntohs(old_lo) & 0x8000) | (n & 0x7fff));
		__u16 new_port = bpf_htons(1024 + (n >> 15) % 60000);
		ip[7] = new_lo; /* low half of the source address */
		ip[5] = csum_update(ip[5], old_lo, new_lo);
		l4[0] = new_port;
		l4[8] = csum_update(csum_update(l4[8], old_lo, new_lo), old_port, new_port);
		return XDP_TX;
	}
	if ((void *)(l4 + 4) > end)
		return XDP_ABORTED;
	__u16 client = bpf_htons(1024 + n % 50000);
	__u16 server = bpf_htons(5000 + n / 50000);
	l4[0] = c->reverse ? server : client;
	l4[1] = c->reverse ? client : server;
	l4[3] = 0; /* no UDP checksum */
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
