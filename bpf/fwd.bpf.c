// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The bench's reference: every frame redirected to the other port, no state,
 * no checks (the ceiling of XDP forwarding on this machine, which the fast
 * path is measured against). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct fwd_cfg {
	/* Interface index of port 1; anything else goes to port 1, frames of
	 * port 1 go to port 0. */
	__u32 ifindex1;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fwd_cfg);
} fwdcfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} fwdports SEC(".maps");

SEC("xdp")
int tg_fwd(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct fwd_cfg *c = bpf_map_lookup_elem(&fwdcfg, &zero);

	if (!c)
		return XDP_PASS;
	__u32 to = ctx->ingress_ifindex == c->ifindex1 ? 0 : 1;
	return bpf_redirect_map(&fwdports, to, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
