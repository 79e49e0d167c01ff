// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Tollgate's XDP program: hands each frame to the AF_XDP socket of the queue
 * it arrived on, when user space says so; everything else goes to the stack. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "tollgate.h"

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, TG_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tg_config);
} config SEC(".maps");

SEC("xdp")
int tg_redirect(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct tg_config *c = bpf_map_lookup_elem(&config, &zero);

	if (!c || !c->redirect)
		return XDP_PASS;
	/* No socket on this queue: XDP_PASS rather than a drop. */
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
