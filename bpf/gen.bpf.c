// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* A traffic generator for the bench harness and the flood tests, two ways
 * (crates/bench/src/gen.rs picks one):
 *
 * - tg_gen, run with BPF_PROG_TEST_RUN and BPF_F_TEST_XDP_LIVE_FRAMES on
 *   the sending interface: it sends the given frame again and again out of
 *   that interface (XDP_TX);
 * - tg_genloop, attached to one end of a veth pair (the loop) whose other
 *   end and the sending interface are in `genports`: each frame that comes
 *   round the loop is rewritten and broadcast to both (one copy leaves by
 *   the sending interface, the other goes round again), until `limit`
 *   frames have left; then it drops what still comes round. A few hundred
 *   frames written into the loop once keep it going. Needs no special
 *   privilege beyond attaching XDP, for kernels that refuse live frames.
 *
 * Each frame sent is another of `flows` flows:
 *   mode 0: an IPv4/UDP frame, from another source port (and destination
 *           port beyond 50 000 flows); `reverse` sends the replies instead;
 *   mode 1: an IPv4/TCP SYN, from another (spoofed) source address in the
 *           frame's source /17 and another source port: a SYN flood. The IP
 *           and TCP checksums are kept right, so only the table is attacked.
 * With `gap_ns` set, each frame waits (spinning on the clock, in bpf_loop)
 * until `gap_ns` after the previous one's slot: a paced sender, for the
 * RFC 2544 zero-loss search. The kernel transmits the frames of a test run
 * in batches of 64, those of the loop in batches of up to 16 (a devmap's
 * bulk queue) and at the end of each NAPI poll, and forwards them on this
 * CPU when the peer runs inline, so the rate holds on average: a sender
 * behind its schedule sends at once until it has caught up, but one more
 * than 2 ms behind starts a fresh schedule instead of bursting (the caller
 * sees the lower rate in the run's time).
 *
 * tg_sink: counts and drops everything (the receiving end of the pair the
 * generator's own ceiling is measured into).
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
	/* The loop only. Frames to send; frames sent so far; frames seen
	 * (sent or dropped: the loop is empty once this stops moving); when
	 * the last one was sent (bpf_ktime_get_ns); the length of the frames
	 * the loop carries (anything else is dropped). */
	__u64 limit;
	__u64 sent;
	__u64 passes;
	__u64 done_ns;
	__u32 len;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_cfg);
} gencfg SEC(".maps");

/* The loop's two destinations: 0 the sending interface, 1 the loop's other
 * end. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} genports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sinkcount SEC(".maps");

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

/* Makes the frame the next flow's. Returns 0, or -1 if it is too short.
 * Works on a frame that was already rewritten (the loop's): the checksums
 * are updated from what the frame holds. */
static __always_inline int rewrite(struct gen_cfg *c, void *data, void *end)
{
	/* Ethernet 14 + IPv4 20 (no options) + L4. */
	__u16 *ip = data + 14;
	__u16 *l4 = data + 14 + 20;

	/* One CPU runs the generator: a plain increment is enough. */
	__u32 n = c->counter++ % c->flows;
	if (c->mode == 1) {
		/* TCP header: ports, seq, ack, offset/flags, window, checksum. */
		if ((void *)(l4 + 10) > end)
			return -1;
		__u16 old_lo = ip[7];
		__u16 old_port = l4[0];
		__u16 new_lo = bpf_htons((bpf_ntohs(old_lo) & 0x8000) | (n & 0x7fff));
		__u16 new_port = bpf_htons(1024 + (n >> 15) % 60000);
		ip[7] = new_lo; /* low half of the source address */
		ip[5] = csum_update(ip[5], old_lo, new_lo);
		l4[0] = new_port;
		l4[8] = csum_update(csum_update(l4[8], old_lo, new_lo), old_port, new_port);
		return 0;
	}
	if ((void *)(l4 + 4) > end)
		return -1;
	__u16 client = bpf_htons(1024 + n % 50000);
	__u16 server = bpf_htons(5000 + n / 50000);
	l4[0] = c->reverse ? server : client;
	l4[1] = c->reverse ? client : server;
	l4[3] = 0; /* no UDP checksum */
	return 0;
}

SEC("xdp")
int tg_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct gen_cfg *c = bpf_map_lookup_elem(&gencfg, &zero);

	if (!c || c->flows == 0)
		return XDP_ABORTED;
	if (c->gap_ns)
		pace(c);
	if (rewrite(c, data, end) < 0)
		return XDP_ABORTED;
	return XDP_TX;
}

SEC("xdp")
int tg_genloop(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct gen_cfg *c = bpf_map_lookup_elem(&gencfg, &zero);
	__u16 *eth = data;

	if (!c)
		return XDP_DROP;
	/* The loop end's NAPI runs on one CPU at a time: plain increments. */
	c->passes++;
	if (c->flows == 0 || c->sent >= c->limit)
		return XDP_DROP;
	/* Only the frames the generator put in the loop (the loop's ends have
	 * no addresses, but whatever else the kernel might send is not ours). */
	if ((void *)(eth + 7) > end || bpf_xdp_get_buff_len(ctx) != c->len ||
	    eth[6] != bpf_htons(0x0800))
		return XDP_DROP;
	if (c->gap_ns)
		pace(c);
	if (rewrite(c, data, end) < 0)
		return XDP_DROP;
	c->sent++;
	if (c->sent == c->limit)
		c->done_ns = bpf_ktime_get_ns();
	return bpf_redirect_map(&genports, 0, BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS);
}

SEC("xdp")
int tg_sink(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&sinkcount, &zero);

	if (n)
		*n += 1;
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
