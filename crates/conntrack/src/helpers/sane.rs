//! SANE network scanner protocol tracker (the kernel's
//! `nf_conntrack_sane.c`).
//!
//! On the control connection (TCP port 6566) the client sends RPCs as
//! big-endian 32-bit words. `SANE_NET_START` (RPC code 7, followed by a
//! 32-bit handle: an 8-byte request) makes the server open a data port and
//! reply with `status` (32 bits, 0 = success) then `port` (32 bits, of which
//! the kernel reads the high 16 bits as a must-be-zero field and the low 16
//! as the port). The client then connects to that port on the server (the
//! kernel expects TCP from the original source address to the original
//! destination address and the port).
//!
//! The reply does not say which request it answers, so, like the kernel, we
//! keep one bit per connection: "the last request was `SANE_NET_START`".
//! The state machine, packet by packet with a non-empty payload:
//! - client payload of exactly 8 bytes: RPC code 7 sets the bit, any other
//!   code clears it; client payloads of any other length leave it alone;
//! - server payload while the bit is set: the bit is cleared (whatever the
//!   payload), and if the payload has at least 8 bytes, status 0 and zero
//!   high port bits, the port is announced.
//!
//! Stricter than the kernel: it would announce port 0; we do not.

use super::{expected_tcp, HelpCx};

/// RPC code of `SANE_NET_START`.
const SANE_NET_START: u32 = 7;
/// `SANE_STATUS_GOOD`.
const SANE_STATUS_SUCCESS: u32 = 0;

/// Per-connection state of the SANE helper (one bit; `Default` is the
/// initial state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SaneState {
    /// The last client request was `SANE_NET_START`; the next server reply
    /// answers it.
    start_requested: bool,
}

impl SaneState {
    /// True while a `SANE_NET_START` request waits for its reply.
    pub fn start_requested(&self) -> bool {
        self.start_requested
    }
}

/// Feeds one TCP payload of the control connection (`from_client`: sent in
/// the original direction) and returns the data port that the server
/// announced, if this payload is a successful `SANE_NET_START` reply.
///
/// The caller hands over payloads only once the connection is established
/// in both directions, as the kernel looks at nothing before that.
pub fn on_payload(state: &mut SaneState, from_client: bool, payload: &[u8]) -> Option<u16> {
    // The kernel returns before touching the state when there is no data
    // (pure ACKs must not consume the pending request).
    if payload.is_empty() {
        return None;
    }
    if from_client {
        if let Ok(req) = <[u8; 8]>::try_from(payload) {
            let [a, b, c, d, ..] = req;
            state.start_requested = u32::from_be_bytes([a, b, c, d]) == SANE_NET_START;
        }
        return None;
    }
    if !std::mem::take(&mut state.start_requested) {
        return None;
    }
    let [s0, s1, s2, s3, z0, z1, p0, p1, ..] = *payload else {
        return None;
    };
    if u32::from_be_bytes([s0, s1, s2, s3]) != SANE_STATUS_SUCCESS || [z0, z1] != [0, 0] {
        return None;
    }
    match u16::from_be_bytes([p0, p1]) {
        0 => None,
        port => Some(port),
    }
}

/// The glue: the server announces a port on the connection's original
/// destination that its original source will connect to.
pub(crate) fn help(cx: &mut HelpCx<'_, '_>) {
    let Some(seg) = cx.tcp_payload() else {
        return;
    };
    let from_client = cx.from_client;
    let orig = cx.orig;
    let (st, asks) = cx.state();
    if let Some(port) = on_payload(&mut st.sane, from_client, seg.payload) {
        asks.push(expected_tcp(orig.src, orig.dst, port, orig.family, false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const START: [u8; 8] = [0, 0, 0, 7, 0, 0, 0, 1];

    fn reply(status: u32, port: u32) -> Vec<u8> {
        let mut v = status.to_be_bytes().to_vec();
        v.extend_from_slice(&port.to_be_bytes());
        // Resource name string that follows in real replies.
        v.extend_from_slice(&[0, 0, 0, 0]);
        v
    }

    #[test]
    fn start_then_success() {
        let mut s = SaneState::default();
        assert_eq!(on_payload(&mut s, true, &START), None);
        assert!(s.start_requested());
        // A pure ACK from the server does not consume the request.
        assert_eq!(on_payload(&mut s, false, &[]), None);
        assert!(s.start_requested());
        assert_eq!(on_payload(&mut s, false, &reply(0, 40000)), Some(40000));
        assert!(!s.start_requested());
        // The next reply answers something else.
        assert_eq!(on_payload(&mut s, false, &reply(0, 40001)), None);
        // Exactly 8 bytes of reply are enough.
        on_payload(&mut s, true, &START);
        assert_eq!(on_payload(&mut s, false, &reply(0, 1)[..8]), Some(1));
    }

    #[test]
    fn refused_replies_clear_the_request() {
        for r in [
            reply(1, 40000),               // status not success
            reply(0, 0x0001_9c40),         // non-zero high bits
            reply(0, 0),                   // port 0: kernel would expect it
            reply(0, 40000)[..7].to_vec(), // short
        ] {
            let mut s = SaneState::default();
            on_payload(&mut s, true, &START);
            assert_eq!(on_payload(&mut s, false, &r), None);
            assert!(!s.start_requested());
            // ... so a valid-looking reply afterwards is ignored.
            assert_eq!(on_payload(&mut s, false, &reply(0, 40000)), None);
        }
    }

    #[test]
    fn client_requests() {
        let mut s = SaneState::default();
        // Other RPC codes clear the bit.
        on_payload(&mut s, true, &START);
        on_payload(&mut s, true, &[0, 0, 0, 6, 0, 0, 0, 1]);
        assert!(!s.start_requested());
        // Requests that are not exactly 8 bytes leave it as it was.
        on_payload(&mut s, true, &START);
        on_payload(&mut s, true, &[0, 0, 0, 2, 0, 0, 0, 1, 0]);
        on_payload(&mut s, true, &[0, 0, 0, 7]);
        assert!(s.start_requested());
        let mut s = SaneState::default();
        on_payload(&mut s, true, &[0, 0, 0, 7, 0, 0, 0, 1, 0]);
        assert!(!s.start_requested());
        // No request: replies are ignored.
        assert_eq!(on_payload(&mut s, false, &reply(0, 40000)), None);
    }

    proptest! {
        #[test]
        fn never_panics(steps in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..20)), 0..20)) {
            let mut s = SaneState::default();
            for (from_client, p) in steps {
                if let Some(port) = on_payload(&mut s, from_client, &p) {
                    prop_assert!(port != 0);
                    prop_assert!(!from_client);
                }
            }
        }

        #[test]
        fn round_trip(port in 1u16.., handle: u32, extra in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut s = SaneState::default();
            let mut req = SANE_NET_START.to_be_bytes().to_vec();
            req.extend_from_slice(&handle.to_be_bytes());
            prop_assert_eq!(on_payload(&mut s, true, &req), None);
            let mut r = reply(0, u32::from(port));
            r.extend(extra);
            prop_assert_eq!(on_payload(&mut s, false, &r), Some(port));
        }
    }
}
