// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Tollgate's XDP program, attached to both sides of the bridge.
 *
 * Every frame goes to the AF_XDP socket of the queue it arrived on (the
 * workers: the slow path, owner of every connection), except, with offload
 * on, the plain packets of connections a worker installed in `flows`: those
 * are forwarded to the other side here, after the same checks the worker's
 * conntrack core would make (checksums, TCP flags and options, the TCP
 * in-window check and its state update). Whatever this program is not sure
 * of goes to the worker; a packet of an active flow that needs the worker
 * withdraws the flow first, so the worker gets the state and every later
 * packet of it, in order. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "tollgate.h"

/* How frames handed to a socket carry the fast path's mark (struct
 * tg_meta), chosen by user space before the program is loaded from what the
 * kernel offers (tollgate.h, TG_MARK_*). A constant of the loaded program:
 * the verifier never walks the branches of the other way, so a kernel that
 * refuses bpf_xdp_adjust_meta still loads the prefix variant. */
const volatile __u32 tg_mark = TG_MARK_NONE;

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 2 * TG_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tg_config);
} settings SEC(".maps");

/* The two sides as egress ports (slot = side). */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * TG_OFFLOAD_SLOTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tg_key);
	__type(value, __u32);
} flows SEC(".maps");

/* IPv4 flows (tollgate.h): IPv6 ones are in `flows`. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TG_FLOWS4_BUCKETS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct tg_bucket4);
} flows4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TG_OFFLOAD_SLOTS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct tg_flow);
} flow_state SEC(".maps");

/* Why packets of installed flows went to the slow path (user space reads
 * the sums over CPUs). */
enum tg_punt {
	TG_PUNT_PENDING = 0,
	TG_PUNT_NOT_PLAIN = 1,
	TG_PUNT_WINDOW = 2,
	TG_PUNT_INACTIVE = 3,
	TG_PUNT_BUSY = 4,
	/* Not a punt: frames dropped because the prefix did not fit (no
	 * headroom: a driver breaking XDP's rule), prefix mode only. */
	TG_NO_MARK_ROOM = 5,
	TG_PUNT_REASONS = 6,
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TG_PUNT_REASONS);
	__type(key, __u32);
	__type(value, __u64);
} punts SEC(".maps");

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10
#define TCP_URG 0x20
#define IPPROTO_ICMPV6_ 58
#define ICMP_ECHOREPLY_ 0
#define ICMP_ECHO_ 8
#define ICMPV6_ECHO_REQUEST_ 128
#define ICMPV6_ECHO_REPLY_ 129

static __always_inline void count_punt(__u32 why)
{
	__u64 *n = bpf_map_lookup_elem(&punts, &why);

	if (n)
		*n += 1;
}

/* What the parser found out about a packet. */
struct pkt {
	struct tg_key key;
	/* The packet can go through the fast path as far as its own headers
	 * tell (no fragment, options, odd flags, bad checksum...). */
	int plain;
	/* TCP: */
	__u32 seq, ack, end;
	__u16 win;
	/* Highest SACK right edge, if the segment has SACK blocks. */
	__u32 sack_max;
	__u8 has_sack;
	/* IP length (the core's byte count). */
	__u32 ip_len;
	/* IPv4 (looked up in flows4). */
	__u8 v4;
};

static __always_inline __u16 fold(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* Sums `len` bytes at `p` (one's complement, 32-bit partial) into `sum`;
 * false if they are not all inside the packet. `len` at most 1536 + 3. */
static __always_inline int csum_bytes(void *p, __u32 len, void *data_end, __u64 *sum)
{
	__u64 s = *sum;
	__u32 off = 0;

	/* Small segments (most ACKs, small datagrams): summed in place, no
	 * helper call. */
	if (len <= 64) {
		__u16 *w = p;
#pragma unroll
		for (int k = 0; k < 32; k++) {
			if ((__u32)(k * 2 + 2) > len)
				break;
			if ((void *)(w + k + 1) > data_end)
				return 0;
			s += w[k];
		}
		if (len & 1) {
			__u8 *b = p + (len & 0x7e);
			if ((void *)(b + 1) > data_end)
				return 0;
			/* The odd byte is the high-order byte of a last word
			 * padded with zero: in memory order, the low byte. */
			s += b[0];
		}
		*sum = s;
		return 1;
	}

#pragma unroll
	for (int i = 0; i < 6; i++) {
		if (len - off < 256)
			break;
		if (p + off + 256 > data_end)
			return 0;
		s += (__u32)bpf_csum_diff(0, 0, (__be32 *)(p + off), 256, 0);
		off += 256;
	}
	if (len - off >= 256)
		return 0;
#define CHUNK(n)                                                              \
	if (len - off >= n) {                                                 \
		if (off > 1536 || p + off + n > data_end)                     \
			return 0;                                             \
		s += (__u32)bpf_csum_diff(0, 0, (__be32 *)(p + off), n, 0);   \
		off += n;                                                     \
	}
	CHUNK(128)
	CHUNK(64)
	CHUNK(32)
	CHUNK(16)
	CHUNK(8)
	CHUNK(4)
#undef CHUNK
	if (off > 1792)
		return 0;
	__u32 rest = len - off;
	__u8 *b = p + off;
	if (rest >= 1) {
		if ((void *)(b + 1) > data_end)
			return 0;
		/* Big-endian words read as little-endian: the low byte first. */
		s += b[0];
	}
	if (rest >= 2) {
		if ((void *)(b + 2) > data_end)
			return 0;
		s += (__u32)b[1] << 8;
	}
	if (rest >= 3) {
		if ((void *)(b + 3) > data_end)
			return 0;
		s += (__u32)b[2] << 16;
	}
	*sum = s;
	return 1;
}

/* Parses an untagged IPv4 or IPv6 TCP/UDP frame, or an ICMP/ICMPv6 echo
 * request or reply. 0: not for the fast path at all (no lookup); 1: looked
 * up, `p->plain` says whether it may be forwarded here. A global function:
 * the verifier checks it once, apart. */
__attribute__((noinline)) int tg_parse(struct xdp_md *ctx, __u32 checksum, __u32 side,
					struct pkt *p)
{
	if (!p)
		return 0;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u64 sum = 0;
	void *l4;
	__u32 l4_len;
	__u8 proto;
	int v4 = 0;

	if ((void *)(eth + 1) > end)
		return 0;
	p->key.side = side;
	p->plain = 1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		__u8 *ip = (void *)(eth + 1);

		if ((void *)(ip + 20) > end)
			return 0;
		if ((ip[0] >> 4) != 4)
			return 0;
		__u32 ihl = (ip[0] & 0x0f) * 4;
		__u32 tot = ((__u32)ip[2] << 8) | ip[3];
		if (ihl != 20) {
			/* Options: the worker's. Ports still looked up below
			 * only for plain headers: an offloaded flow's packet
			 * with options is rare; it goes to the worker, which
			 * (the flow being withdrawn by the next plain miss or
			 * never) keeps the verdicts: options do not change
			 * conntrack's answer, only ours cannot vouch for it. */
			return 0;
		}
		if (tot < 20 || (void *)ip + tot > end)
			return 0;
		/* Header checksum (always checked by the core): ten 16-bit
		 * words summed in place (cheaper than a helper call). */
		__u16 *w = (void *)ip;
		__u64 hs = 0;
#pragma unroll
		for (int k = 0; k < 10; k++)
			hs += w[k];
		if (fold(hs) != 0xffff)
			return 0;
		/* Fragments: their ports are not all there. */
		if ((ip[6] & 0x3f) || ip[7])
			return 0;
		proto = ip[9];
		v4 = 1;
		p->v4 = 1;
		__builtin_memcpy(p->key.src, ip + 12, 4);
		__builtin_memcpy(p->key.dst, ip + 16, 4);
		p->ip_len = tot;
		l4 = ip + 20;
		l4_len = tot - 20;
		if (checksum) {
			/* Pseudo header: addresses, zero, protocol, length. */
			sum += (__u64)w[6] + w[7] + w[8] + w[9];
			sum += bpf_htons((__u16)proto) + bpf_htons((__u16)l4_len);
		}
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		__u8 *ip = (void *)(eth + 1);

		if ((void *)(ip + 40) > end)
			return 0;
		if ((ip[0] >> 4) != 6)
			return 0;
		__u32 plen = ((__u32)ip[4] << 8) | ip[5];
		proto = ip[6];
		if ((void *)ip + 40 + plen > end)
			return 0;
		__builtin_memcpy(p->key.src, ip + 8, 16);
		__builtin_memcpy(p->key.dst, ip + 24, 16);
		p->ip_len = 40 + plen;
		l4 = ip + 40;
		l4_len = plen;
		if (checksum) {
			sum += (__u32)bpf_csum_diff(0, 0, (__be32 *)(ip + 8), 32, 0);
			sum += bpf_htonl(plen) >> 16;
			sum += bpf_htonl(plen) & 0xffff;
			sum += bpf_htons((__u16)proto);
		}
	} else {
		return 0;
	}
	p->key.proto = proto;
	if (l4_len > 1600)
		return 0;
	if (proto == IPPROTO_UDP) {
		__u8 *u = l4;

		if ((void *)(u + 8) > end || l4_len < 8)
			return 0;
		__builtin_memcpy(&p->key.sport, u, 2);
		__builtin_memcpy(&p->key.dport, u + 2, 2);
		__u32 ulen = ((__u32)u[4] << 8) | u[5];
		if (ulen < 8 || ulen > l4_len) {
			p->plain = 0;
			return 1;
		}
		if (checksum && (u[6] | u[7])) {
			/* The pseudo header's length is the IP payload's for
			 * IPv4 above; UDP's own length counts: redo it. */
			if (eth->h_proto == bpf_htons(ETH_P_IP)) {
				sum -= bpf_htons((__u16)l4_len);
				sum += bpf_htons((__u16)ulen);
			} else {
				sum -= bpf_htonl(l4_len) >> 16;
				sum -= bpf_htonl(l4_len) & 0xffff;
				sum += bpf_htonl(ulen) >> 16;
				sum += bpf_htonl(ulen) & 0xffff;
			}
			if (!csum_bytes(u, ulen, end, &sum) || fold(sum) != 0xffff)
				p->plain = 0;
		}
		return 1;
	}
	if ((v4 && proto == IPPROTO_ICMP) || (!v4 && proto == IPPROTO_ICMPV6_)) {
		__u8 *c = l4;

		if ((void *)(c + 8) > end || l4_len < 8)
			return 0;
		/* Echo request and reply with code 0, the only ICMP the core
		 * offloads (a code is part of the tuple: another one is another
		 * connection). Errors and other types: not looked up, the
		 * worker's (an error quoting an offloaded flow is only counted
		 * there; the flow stays here). */
		__u8 request = v4 ? ICMP_ECHO_ : ICMPV6_ECHO_REQUEST_;
		__u8 reply = v4 ? ICMP_ECHOREPLY_ : ICMPV6_ECHO_REPLY_;
		if ((c[0] != request && c[0] != reply) || c[1] != 0)
			return 0;
		/* The core's tuple: the identifier as the source port, type and
		 * code as the destination port, both as the header has them. */
		__builtin_memcpy(&p->key.sport, c + 4, 2);
		__builtin_memcpy(&p->key.dport, c, 2);
		if (checksum) {
			/* The whole message; ICMPv6's with the pseudo header
			 * summed above, ICMP's without one. */
			if (v4)
				sum = 0;
			if (!csum_bytes(c, l4_len, end, &sum) || fold(sum) != 0xffff)
				p->plain = 0;
		}
		return 1;
	}
	if (proto != IPPROTO_TCP)
		return 0;
	__u8 *t = l4;
	if ((void *)(t + 20) > end || l4_len < 20)
		return 0;
	__builtin_memcpy(&p->key.sport, t, 2);
	__builtin_memcpy(&p->key.dport, t + 2, 2);
	__u32 doff = (t[12] >> 4) * 4;
	__u8 flags = t[13];
	if (doff < 20 || doff > l4_len) {
		p->plain = 0;
		return 1;
	}
	/* Only ACK segments without SYN, FIN, RST or URG (PSH, ECE, CWR
	 * allowed): the established state's own column. */
	if ((flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK | TCP_URG)) != TCP_ACK) {
		p->plain = 0;
		return 1;
	}
	/* Options: the layouts Linux and most stacks send on established
	 * connections, matched at fixed places (no loop for the verifier):
	 * none; NOP NOP timestamps; then maybe NOP NOP SACK with 1-4 blocks.
	 * Their walk gives what the core's gives (the highest SACK right edge);
	 * any other layout is the slow path's. */
	if (doff > 20) {
		__u32 olen = doff - 20;
		__u8 *o = t + 20;
		__u32 at = 0;

		if ((void *)(o + 4) > end) {
			p->plain = 0;
			return 1;
		}
		if (olen >= 12 && o[0] == 1 && o[1] == 1 && o[2] == 8 && o[3] == 10)
			at = 12;
		if (at < olen) {
			__u8 *sk = o + (at ? 12 : 0);

			if ((void *)(sk + 4) > end || sk[0] != 1 || sk[1] != 1 || sk[2] != 5) {
				p->plain = 0;
				return 1;
			}
			__u32 len = sk[3];
			if ((len != 10 && len != 18 && len != 26 && len != 34) || at + 2 + len != olen) {
				p->plain = 0;
				return 1;
			}
#pragma unroll
			for (int b = 0; b < 4; b++) {
				if (2 + 8 * b + 8 > len)
					break;
				__u8 *r = sk + 2 + 2 + 8 * b + 4;
				if ((void *)(r + 4) > end) {
					p->plain = 0;
					return 1;
				}
				__u32 right = ((__u32)r[0] << 24) | ((__u32)r[1] << 16) |
					      ((__u32)r[2] << 8) | r[3];
				if (!p->has_sack || (__s32)(right - p->sack_max) > 0)
					p->sack_max = right;
				p->has_sack = 1;
			}
		}
	}
	if (checksum) {
		if (!csum_bytes(t, l4_len, end, &sum) || fold(sum) != 0xffff) {
			p->plain = 0;
			return 1;
		}
	}
	p->seq = ((__u32)t[4] << 24) | ((__u32)t[5] << 16) | ((__u32)t[6] << 8) | t[7];
	p->ack = ((__u32)t[8] << 24) | ((__u32)t[9] << 16) | ((__u32)t[10] << 8) | t[11];
	p->win = ((__u16)t[14] << 8) | t[15];
	p->end = p->seq + (l4_len - doff);
	return 1;
}

static __always_inline int before(__u32 a, __u32 b)
{
	return (__s32)(a - b) < 0;
}

static __always_inline int after(__u32 a, __u32 b)
{
	return (__s32)(b - a) < 0;
}

/* The core's in_window() for an ACK segment of an established connection
 * whose two directions both have a window (and no liberal flag: such flows
 * are not offloaded): 1 and the state updated exactly as the core would; 2,
 * accepted with nothing changed (the core's "ignore"); or 0 (the core would
 * not simply accept it: the worker decides) and nothing changed. */
static __always_inline int tcp_in_window(struct tg_flow *f, __u32 dir, struct pkt *p)
{
	struct tg_tcp_dir *s = dir ? &f->tcp[1] : &f->tcp[0];
	struct tg_tcp_dir *r = dir ? &f->tcp[0] : &f->tcp[1];
	__u32 seq = p->seq, ack = p->ack, end = p->end, sack = ack;
	__u32 win = p->win;

	if ((r->flags & TG_TCP_SACK_PERM) && p->has_sack && after(p->sack_max, sack))
		sack = p->sack_max;

	if (s->maxwin == 0 || r->maxwin == 0)
		return 0;
	__u32 maxackwin = s->maxwin > 66000 ? s->maxwin : 66000;
	if (!before(seq, s->maxend + 1))
		return 0;
	if (!before(sack, r->end + 1))
		return 0;
	/* Retransmitted data the receiver has acknowledged, or an ACK under
	 * the lower bound: the core lets them through unchanged (not even the
	 * timeout is refreshed). */
	if (!after(end, s->end - r->maxwin - 1))
		return 2;
	if (!after(sack, r->end - maxackwin - 1))
		return 2;
	if (s->scale > 14)
		return 0;
	win <<= s->scale;
	__u32 swin = win + (sack - ack);
	if (s->maxwin < swin)
		s->maxwin = swin;
	if (after(end, s->end)) {
		s->end = end;
		s->flags |= TG_TCP_DATA_UNACK;
	}
	if (!(s->flags & TG_TCP_MAXACK_SET)) {
		s->maxack = ack;
		s->flags |= TG_TCP_MAXACK_SET;
	} else if (after(ack, s->maxack)) {
		s->maxack = ack;
	}
	__u32 s_maxend = s->maxend;
	if (r->maxwin != 0 && after(end, s_maxend))
		r->maxwin += end - s_maxend;
	if (after(sack + win, r->maxend - 1)) {
		r->maxend = sack + win;
		if (win == 0)
			r->maxend += 1;
	}
	if (ack == r->end)
		r->flags &= ~TG_TCP_DATA_UNACK;
	/* Retransmissions of the same ACK segment (index ACK). */
	if (f->last_dir == dir && f->last_seq == seq && f->last_ack == ack &&
	    f->last_end == end && f->last_win == p->win) {
		if (f->retrans < 255)
			f->retrans++;
	} else {
		f->last_dir = dir;
		f->last_seq = seq;
		f->last_ack = ack;
		f->last_end = end;
		f->last_win = p->win;
		f->retrans = 0;
	}
	f->last_ack_valid = 1;
	return 1;
}

/* Notes the mark the worker reads with the frame (written by hand_over). */
static __always_inline void set_meta(struct tg_meta *m, __u8 kind, __u8 dir, __u32 slot)
{
	m->kind = kind;
	m->dir = dir;
	m->slot = slot;
}

/* Writes the mark as XDP metadata in front of the frame. Only the metadata
 * variant of the program contains this call (tg_mark is a load-time
 * constant). */
static __always_inline void write_meta(struct xdp_md *ctx, struct tg_meta *mark)
{
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct tg_meta)))
		return;
	struct tg_meta *m = (void *)(long)ctx->data_meta;
	if ((void *)(m + 1) > (void *)(long)ctx->data)
		return;
	*m = *mark;
}

/* Puts the mark in front of the frame, as part of it (prefix variant): 0,
 * or -1 if the frame has no headroom (every XDP driver leaves 256 bytes). */
static __always_inline int write_prefix(struct xdp_md *ctx, struct tg_meta *mark)
{
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct tg_meta)))
		return -1;
	struct tg_meta *m = (void *)(long)ctx->data;
	if ((void *)(m + 1) > (void *)(long)ctx->data_end)
		return -1;
	__builtin_memcpy(m, mark, sizeof(*m));
	return 0;
}

/* Gives the flow back to the worker: from ACTIVE (or after our own BUSY). */
static __always_inline int withdraw(struct tg_flow *f, __u64 from)
{
	return __sync_val_compare_and_swap(&f->ctl, from,
					   (__u64)TG_WITHDRAWN << TG_CTL_SHIFT) == from;
}

struct spin_ctx {
	struct tg_flow *f;
	__u64 ctl;
};

/* bpf_loop callback: waits while another CPU holds the slot. */
static long spin_cb(__u64 i, void *data)
{
	struct spin_ctx *sc = data;
	__u64 c = *(volatile __u64 *)&sc->f->ctl;

	sc->ctl = c;
	return (c >> TG_CTL_SHIFT) != TG_BUSY;
}

/* A plain packet of a flow we hold (BUSY): forwarded and accounted, the flow
 * ACTIVE again; or, when the core would not simply accept it, given to the
 * slow path with the flow withdrawn. */
static __always_inline int forward_locked(struct tg_meta *m, struct tg_flow *f, __u32 dir,
					  __u32 slot, __u32 side, struct pkt *p)
{
	const __u64 active = (__u64)TG_ACTIVE << TG_CTL_SHIFT;
	const __u64 busy = (__u64)TG_BUSY << TG_CTL_SHIFT;

	/* UDP and ICMP echo: the core only refreshes the timeout and counts.
	 * The packet's protocol is the flow's (the key holds it): asking the
	 * packet spares UDP and ICMP the slot's second cache line. */
	int w = p->key.proto == IPPROTO_TCP ? tcp_in_window(f, dir, p) : 1;

	if (w == 0) {
		withdraw(f, busy);
		count_punt(TG_PUNT_WINDOW);
		set_meta(m, TG_META_WITHDRAWN, dir, slot);
		return -1;
	}
	if (w == 1)
		f->last_seen = bpf_ktime_get_coarse_ns();
	f->packets[dir & 1] += 1;
	f->bytes[dir & 1] += p->ip_len;
	__sync_lock_test_and_set(&f->ctl, active);
	return bpf_redirect_map(&ports, side ^ 1, 0);
}

/* An IPv4 packet's entry in flows4: 1 and slot << 1 | dir in `ref`, or 0. */
static __always_inline int find4(struct pkt *p, __u32 seed, __u32 *ref)
{
	__u32 src, dst, ports;

	__builtin_memcpy(&src, p->key.src, 4);
	__builtin_memcpy(&dst, p->key.dst, 4);
	__builtin_memcpy(&ports, &p->key.sport, 4);
	__u32 want = (p->key.proto == IPPROTO_UDP ? TG_E4_UDP : 0) |
		     (p->key.proto == IPPROTO_ICMP ? TG_E4_ICMP : 0) |
		     (p->key.side ? TG_E4_SIDE : 0);
	__u32 b = tg_flows4_hash(seed, src, dst, ports, want);
	struct tg_bucket4 *bk = bpf_map_lookup_elem(&flows4, &b);

	if (!bk)
		return 0;
#pragma unroll
	for (int i = 0; i < TG_FLOWS4_WAYS; i++) {
		struct tg_entry4 *e = &bk->e[i];
		__u32 m = *(volatile __u32 *)&e->meta;

		if (!(m & TG_E4_VALID) || (m & TG_E4_KEY_MASK) != want)
			continue;
		/* Compiler barriers keep the reads in order (x86 and the
		 * other strongly ordered CPUs keep loads in order; the worker
		 * writes the tuple before it publishes meta). */
		asm volatile("" ::: "memory");
		if (e->src != src || e->dst != dst || e->ports != ports)
			continue;
		asm volatile("" ::: "memory");
		/* The entry did not change while we read it. */
		if (*(volatile __u32 *)&e->meta != m)
			continue;
		*ref = m & TG_E4_REF_MASK;
		return 1;
	}
	return 0;
}

/* The fast path: XDP_REDIRECT to the other side, or -1 (with the mark in
 * `m` set) for the slow path. */
static __always_inline int fast(struct xdp_md *ctx, struct tg_config *c, __u32 side,
				struct tg_meta *m)
{
	struct pkt p = {};

	if (!tg_parse(ctx, c->checksum, side, &p))
		return -1;
	__u32 ref;
	if (p.v4) {
		if (!find4(&p, c->flows4_seed, &ref))
			return -1;
	} else {
		__u32 *v = bpf_map_lookup_elem(&flows, &p.key);
		if (!v)
			return -1;
		ref = *v;
	}
	__u32 slot = ref >> 1, dir = ref & 1;
	struct tg_flow *f = bpf_map_lookup_elem(&flow_state, &slot);
	if (!f)
		return -1;
	const __u64 active = (__u64)TG_ACTIVE << TG_CTL_SHIFT;
	const __u64 busy = (__u64)TG_BUSY << TG_CTL_SHIFT;
	__u64 ctl = f->ctl;
	/* What to do, decided under the slot's protocol (small loop body: the
	 * work happens after it). */
	enum { GIVE_UP, PENDING_PUNT, LOCKED, WITHDRAWN_PUNT, INACTIVE } what = GIVE_UP;

	for (int tries = 0; tries < 8; tries++) {
		__u64 state = ctl >> TG_CTL_SHIFT;

		if (state == TG_PENDING) {
			__u64 q0 = ctl & TG_CTL_QMASK;
			__u64 q1 = (ctl >> TG_CTL_QBITS) & TG_CTL_QMASK;
			__u32 d0 = *(volatile __u32 *)&f->done[0];
			__u32 d1 = *(volatile __u32 *)&f->done[1];
			__u32 rdy = *(volatile __u32 *)&f->ready;
			__u64 next;

			/* Every packet given to the slow path has left the box and
			 * no older one waits in a ring (or the worker stopped
			 * waiting): this one may go ahead. */
			if (p.plain && ((rdy & 4) || (q0 == d0 && q1 == d1 && (q0 || (rdy & 1)) &&
						      (q1 || (rdy & 2)))))
				next = busy;
			else
				next = ctl + (dir ? (1ULL << TG_CTL_QBITS) : 1);
			__u64 seen = __sync_val_compare_and_swap(&f->ctl, ctl, next);
			if (seen == ctl) {
				what = next == busy ? LOCKED : PENDING_PUNT;
				break;
			}
			ctl = seen;
			continue;
		}
		if (state == TG_ACTIVE) {
			__u64 next = p.plain ? busy : (__u64)TG_WITHDRAWN << TG_CTL_SHIFT;
			__u64 seen = __sync_val_compare_and_swap(&f->ctl, active, next);
			if (seen == active) {
				what = p.plain ? LOCKED : WITHDRAWN_PUNT;
				break;
			}
			ctl = seen;
			continue;
		}
		if (state == TG_BUSY) {
			/* Another CPU (the other direction) holds it for a few
			 * instructions. */
			struct spin_ctx sc = { .f = f, .ctl = ctl };

			bpf_loop(4096, spin_cb, &sc, 0);
			ctl = sc.ctl;
			continue;
		}
		what = INACTIVE;
		break;
	}
	switch (what) {
	case LOCKED:
		return forward_locked(m, f, dir, slot, side, &p);
	case PENDING_PUNT:
		count_punt(TG_PUNT_PENDING);
		set_meta(m, TG_META_PENDING, dir, slot);
		return -1;
	case WITHDRAWN_PUNT:
		count_punt(TG_PUNT_NOT_PLAIN);
		set_meta(m, TG_META_WITHDRAWN, dir, slot);
		return -1;
	case INACTIVE:
		count_punt(TG_PUNT_INACTIVE);
		set_meta(m, TG_META_NONE, 0, 0);
		return -1;
	default:
		/* Held all along (never seen): the slow path; the worker takes
		 * the flow back from there, so nothing is lost but the order of
		 * this packet. */
		count_punt(TG_PUNT_BUSY);
		set_meta(m, TG_META_NONE, 0, 0);
		return -1;
	}
}

SEC("xdp")
int tg_redirect(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct tg_config *c = bpf_map_lookup_elem(&settings, &zero);

	if (!c || !c->redirect)
		return XDP_PASS;
	__u32 side = ctx->ingress_ifindex == c->ifindex[1] ? 1 : 0;
	__u32 q = ctx->rx_queue_index;
	if (q >= TG_MAX_QUEUES)
		return XDP_PASS;
	__u32 slot = side * TG_MAX_QUEUES + q;
	struct tg_meta m = { .magic = TG_META_MAGIC, .kind = TG_META_NONE };

	if (tg_mark != TG_MARK_NONE && c->offload) {
		int r = fast(ctx, c, side, &m);

		if (r >= 0)
			return r;
	}
	if (tg_mark == TG_MARK_PREFIX) {
		/* Every frame a socket gets carries the prefix, offload on or
		 * off, so the worker always knows to take it off. No socket on
		 * this queue: the kernel's, as it came. */
		if (!c->mark_unsocketed && !bpf_map_lookup_elem(&xsks, &slot))
			return XDP_PASS;
		if (write_prefix(ctx, &m)) {
			count_punt(TG_NO_MARK_ROOM);
			return XDP_DROP;
		}
	} else if (tg_mark == TG_MARK_META && c->offload) {
		/* Every frame handed over carries metadata, so the worker never
		 * reads a stale one (the frame's previous use). */
		write_meta(ctx, &m);
	}
	/* No socket on this queue: XDP_PASS rather than a drop. */
	return bpf_redirect_map(&xsks, slot, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
