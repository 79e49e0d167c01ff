// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Test-lab RSS: a tc egress program on a lab endpoint's multi-queue veth that
 * picks the TX queue of each frame, which veth makes the receiver's RX queue.
 *   mode 1 (symmetric): the queue a NIC's RSS would pick with the symmetric
 *          Toeplitz key and the default indirection table, computed from the
 *          per-byte tables the loader fills (the same tables as Tollgate's
 *          owner hash), so every packet lands on its owner's queue;
 *   mode 2 (fixed): every frame to queue `fixed` (an asymmetric NIC when the
 *          two endpoints use different queues).
 * veth takes skb->queue_mapping - 1 as the queue: the program writes q + 1. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct steer_cfg {
	__u32 mode;
	__u32 queues;
	__u32 fixed;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct steer_cfg);
} steercfg SEC(".maps");

/* tables[pos * 256 + byte]: the Toeplitz partial hash of `byte` at `pos`. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 36 * 256);
	__type(key, __u32);
	__type(value, __u32);
} toeplitz SEC(".maps");

static __always_inline __u32 part(__u32 pos, __u8 b)
{
	__u32 k = pos * 256 + b;
	__u32 *v = bpf_map_lookup_elem(&toeplitz, &k);

	return v ? *v : 0;
}

SEC("tc")
int tg_steer(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct steer_cfg *c = bpf_map_lookup_elem(&steercfg, &zero);
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u8 *p = data;

	if (!c || c->mode == 0 || c->queues == 0)
		return TC_ACT_OK;
	if (c->mode == 2) {
		skb->queue_mapping = c->fixed + 1;
		return TC_ACT_OK;
	}
	/* Ethernet, IPv4 without options or fragments: addresses and, for TCP
	 * and UDP, ports. Anything else: addresses only, or queue 0. */
	if ((void *)(p + 14 + 20 + 4) > end) {
		skb->queue_mapping = 1;
		return TC_ACT_OK;
	}
	__u16 et = (__u16)p[12] << 8 | p[13];
	__u32 h = 0;
	if (et == 0x0800) {
		__u8 *ip = p + 14;
		__u32 ihl = (ip[0] & 15) * 4;
		__u8 proto = ip[9];
		__u16 frag = ((__u16)ip[6] << 8 | ip[7]) & 0x3fff;
#pragma unroll
		for (int i = 0; i < 8; i++)
			h ^= part(i, ip[12 + i]);
		if ((proto == 6 || proto == 17) && !frag && ihl == 20) {
			__u8 *l4 = ip + 20;
#pragma unroll
			for (int i = 0; i < 4; i++)
				h ^= part(8 + i, l4[i]);
		}
	} else if (et == 0x86dd) {
		if ((void *)(p + 14 + 40 + 4) > end) {
			skb->queue_mapping = 1;
			return TC_ACT_OK;
		}
		__u8 *ip = p + 14;
		__u8 next = ip[6];
#pragma unroll
		for (int i = 0; i < 32; i++)
			h ^= part(i, ip[8 + i]);
		if (next == 6 || next == 17) {
			__u8 *l4 = ip + 40;
#pragma unroll
			for (int i = 0; i < 4; i++)
				h ^= part(32 + i, l4[i]);
		}
	} else {
		skb->queue_mapping = 1;
		return TC_ACT_OK;
	}
	skb->queue_mapping = (h % 128) % c->queues + 1;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
