/* Map layouts shared by Tollgate's XDP program and user space
 * (crates/dataplane/src/bpf.rs mirrors them; a test checks the sizes). */
#ifndef TOLLGATE_H
#define TOLLGATE_H

/* Queues per interface the XSKMAP can hold. */
#define TG_MAX_QUEUES 64

/* Key 0 of the `config` array map. */
struct tg_config {
	/* 0: pass every frame to the kernel stack; 1: redirect to the AF_XDP
	 * socket of the receiving queue (frames of a queue without a socket
	 * are passed). */
	__u32 redirect;
};

#endif
