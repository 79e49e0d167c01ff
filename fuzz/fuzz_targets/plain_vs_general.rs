//! Differential fuzzing of the conntrack core's plain path (established TCP
//! ACKs, UDP) against its general path: the same packet sequence (the input
//! format of `seq::packets`) through two pipelines, one with the plain path
//! switched off, must give every packet the same result and leave the same
//! table and counters.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod seq;

fuzz_target!(|data: &[u8]| {
    // Checksums off: mutated packets still parse, so sequences reach
    // established connections (the `pipeline` target checks them).
    let mut plain = seq::pipeline(false);
    let mut general = seq::pipeline(false);
    general.conntrack_mut().set_general_only(true);
    let mut now = 0u64;
    for (side, pkt, at) in seq::packets(data) {
        now = at;
        let a = plain.process(side, pkt, now);
        let b = general.process(side, pkt, now);
        assert_eq!(a, b, "packet at {now} ns");
    }
    assert_eq!(general.conntrack().plain_hits(), 0);
    assert_eq!(plain.conntrack().stats(), general.conntrack().stats());
    let (mut x, mut y) = (Vec::new(), Vec::new());
    plain.conntrack().export_state(now, &mut x);
    general.conntrack().export_state(now, &mut y);
    assert_eq!(x, y, "tables differ");
});
