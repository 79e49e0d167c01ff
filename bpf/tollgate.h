/* Map layouts shared by Tollgate's XDP program and user space
 * (crates/dataplane/src/bpf.rs and offload.rs mirror them; tests check the
 * sizes and offsets). */
#ifndef TOLLGATE_H
#define TOLLGATE_H

/* Queues per interface the XSKMAP can hold; its slot for queue q of side s
 * (0 inside, 1 outside) is s * TG_MAX_QUEUES + q. */
#define TG_MAX_QUEUES 64

/* Key 0 of the `config` array map. */
struct tg_config {
	/* 0: pass every frame to the kernel stack; 1: redirect to the AF_XDP
	 * socket of the receiving queue (frames of a queue without a socket
	 * are passed). */
	__u32 redirect;
	/* 1: forward the plain packets of offloaded flows (the fast path). */
	__u32 offload;
	/* Interface index of each side (0 inside, 1 outside). */
	__u32 ifindex[2];
	/* 1: verify L4 checksums before forwarding, as the core does. */
	__u32 checksum;
	/* The key of `flows4`'s hash (random, chosen when the program is
	 * loaded: no one outside can aim flows at one bucket). */
	__u32 flows4_seed;
	/* 1: with TG_MARK_PREFIX, frames passed for want of a socket carry
	 * the prefix too (BPF_PROG_TEST_RUN, where no socket exists). */
	__u32 mark_unsocketed;
};

/* ---- the fast path (flow offload) ----
 *
 * `flows` (hash) maps the tuple a packet carries, with the side it enters
 * on, to (slot << 1 | direction); `flow_state` (an mmap-able array) holds one
 * struct tg_flow per slot. Only the connection's owning worker writes a
 * slot's keys; the XDP program and the worker share the slot under `ctl`. */

/* Offload slots (all workers together). */
#define TG_OFFLOAD_SLOTS 131072

/* `ctl`: the state in its top four bits; while pending, how many packets the
 * program sent to the slow path in each direction (bits 0-29, 30-59). */
#define TG_CTL_SHIFT 60
#define TG_CTL_QBITS 30
#define TG_CTL_QMASK ((1ULL << TG_CTL_QBITS) - 1)
enum tg_flow_state {
	/* No connection. */
	TG_FREE = 0,
	/* Installed; packets still go to the slow path (counted in ctl) until
	 * the worker has forwarded every one of them (`done`, `ready`): then
	 * the program makes it ACTIVE with the packet it holds. */
	TG_PENDING = 1,
	/* The program forwards plain packets itself. */
	TG_ACTIVE = 2,
	/* The program is updating the slot (a lock, never held long). */
	TG_BUSY = 3,
	/* Given back: every packet goes to the slow path, which owns the state
	 * again (set by the program when a packet needs the slow path, or by
	 * the worker). */
	TG_WITHDRAWN = 4,
};

/* IPv4 flows are found through `flows4` instead: an mmap-able array of
 * buckets of four entries, indexed by a keyed hash of the tuple (struct
 * tg_entry4 and tg_flows4_hash below). A lookup reads one cache line, where
 * the hash map reads its bucket and then an element elsewhere; with many
 * flows those are cache misses. The workers write the entries directly
 * (no system call): claim a free entry by compare-and-swap on `meta`, fill
 * in the tuple, then publish `meta` with VALID; remove by clearing VALID.
 * A bucket with no free entry refuses the flow (it stays on the slow path).
 * The program reads `meta` before and after the tuple and takes the entry
 * only if it did not change (GEN changes with every reuse of an entry). */
#define TG_FLOWS4_BUCKETS 524288
#define TG_FLOWS4_WAYS 4
#define TG_E4_VALID (1U << 31)
#define TG_E4_CLAIMED (1U << 30)
#define TG_E4_GEN_SHIFT 21
#define TG_E4_GEN_MASK (0x1ffU << TG_E4_GEN_SHIFT)
/* The tuple's protocol is ICMP, or UDP (neither: TCP); its side is the
 * outside. Part of the key: an ICMP echo's id and type/code could read as a
 * TCP or UDP flow's ports. */
#define TG_E4_ICMP (1U << 20)
#define TG_E4_UDP (1U << 19)
#define TG_E4_SIDE (1U << 18)
#define TG_E4_KEY_MASK (TG_E4_ICMP | TG_E4_UDP | TG_E4_SIDE)
/* slot << 1 | direction, as the value of `flows`. */
#define TG_E4_REF_MASK ((1U << 18) - 1)

struct tg_entry4 {
	/* As the packet carries them (network byte order), read as a word. */
	__u32 src;
	__u32 dst;
	/* Source and destination port, likewise. */
	__u32 ports;
	__u32 meta;
};

struct tg_bucket4 {
	struct tg_entry4 e[TG_FLOWS4_WAYS];
};

/* The bucket hash of an IPv4 tuple: its three words and the key bits of meta,
 * mixed under the seed (user space computes the same). */
static __always_inline __u32 tg_mix(__u32 h, __u32 w)
{
	h ^= w;
	h *= 0x9e3779b1U;
	return h ^ (h >> 16);
}

static __always_inline __u32 tg_flows4_hash(__u32 seed, __u32 src, __u32 dst, __u32 ports,
					    __u32 want)
{
	__u32 h = tg_mix(tg_mix(tg_mix(tg_mix(seed, src), dst), ports), want);

	h ^= h >> 13;
	h *= 0x85ebca6bU;
	h ^= h >> 16;
	return h & (TG_FLOWS4_BUCKETS - 1);
}

/* A direction's tuple as its packets carry it, and the side they enter on. */
struct tg_key {
	/* IPv4: the first four bytes, the rest zero. */
	__u8 src[16];
	__u8 dst[16];
	/* Network byte order. */
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 side;
	__u16 pad;
};

/* TCP window state of one direction (the core's TcpDir). */
struct tg_tcp_dir {
	__u32 end;
	__u32 maxend;
	__u32 maxwin;
	__u32 maxack;
	__u8 scale;
	__u8 flags;
	__u16 pad;
};

/* Window-state flag bits (the core's tcp::flag). */
#define TG_TCP_DATA_UNACK 0x10
#define TG_TCP_MAXACK_SET 0x20
#define TG_TCP_SACK_PERM 0x02

struct tg_flow {
	__u64 ctl;
	/* bpf_ktime_get_coarse_ns() of the last packet forwarded here
	 * (CLOCK_MONOTONIC_COARSE: a tick behind at most; timeouts are
	 * seconds). */
	__u64 last_seen;
	/* Forwarded here since the flow became active (only this program
	 * writes them while it is). */
	__u64 packets[2];
	__u64 bytes[2];
	/* TCP only: window tracking, as the core's in-window check leaves it. */
	struct tg_tcp_dir tcp[2];
	__u32 last_seq;
	__u32 last_ack;
	__u32 last_end;
	__u16 last_win;
	__u8 last_dir;
	__u8 retrans;
	__u8 proto;
	/* 1: the last packet was a TCP ACK-only segment (last_* are valid). */
	__u8 last_ack_valid;
	__u16 pad;
	/* Written by the worker while the flow is pending, read by the
	 * program: packets of each direction (sent to the slow path while
	 * pending) the worker has forwarded, published after it wrote the
	 * window state above; and, per direction (bit 0, bit 1), whether that
	 * side's RX ring has been empty since the install (no older packet of
	 * the flow left in it). The program makes the flow active when both
	 * directions are caught up. */
	__u32 done[2];
	/* Bits 0, 1: ready; bit 2: the worker gave up waiting (the flow never
	 * paused long enough): activate with the next plain packet anyway. */
	__u32 ready;
	/* Worker only: the counters it already handed to the core. */
	__u64 reported_packets[2];
	__u64 reported_bytes[2];
	/* Worker only: packets sent while pending that it will still take
	 * after the program made the flow active (they were overtaken). */
	__u64 stale;
	__u64 pad3[4];
};
_Static_assert(sizeof(struct tg_flow) == 192, "struct tg_flow is 192 bytes");
_Static_assert(sizeof(struct tg_key) == 40, "struct tg_key is 40 bytes");
_Static_assert(sizeof(struct tg_bucket4) == 64, "a bucket is one cache line");
_Static_assert(2 * TG_OFFLOAD_SLOTS <= TG_E4_REF_MASK + 1, "slot << 1 | dir fits in REF");
_Static_assert(((TG_E4_VALID | TG_E4_CLAIMED) & TG_E4_GEN_MASK) == 0 &&
		       ((TG_E4_VALID | TG_E4_CLAIMED | TG_E4_GEN_MASK) & TG_E4_KEY_MASK) == 0 &&
		       (TG_E4_KEY_MASK & TG_E4_REF_MASK) == 0 &&
		       (TG_E4_GEN_MASK & TG_E4_REF_MASK) == 0,
	       "the meta fields do not overlap");

/* The mark the program gives the worker with a frame it hands to an AF_XDP
 * socket: with TG_MARK_META as XDP metadata in front of the frame, while
 * offload is on; with TG_MARK_PREFIX as 8 bytes put in front of every
 * frame, as part of it (bpf_xdp_adjust_head; offload on or off), which the
 * worker takes off before anything else reads the frame. A prefix, not a
 * trailer: XDP guarantees headroom, not tailroom (a frame the kernel built
 * for a packet socket has none). */
#define TG_MARK_META 1
#define TG_MARK_PREFIX 2
/* No mark: the program has no fast path (offload stays off). */
#define TG_MARK_NONE 0
struct tg_meta {
	__u16 magic;
	__u8 kind;
	__u8 dir;
	__u32 slot;
};
#define TG_META_MAGIC 0x7467
enum tg_meta_kind {
	/* Not a packet of an installed flow. */
	TG_META_NONE = 0,
	/* Sent to the slow path while its flow was pending (counted in ctl). */
	TG_META_PENDING = 1,
	/* Its flow was active and this packet needs the slow path: the program
	 * withdrew the flow; the worker takes the state back first. */
	TG_META_WITHDRAWN = 2,
};

#endif
