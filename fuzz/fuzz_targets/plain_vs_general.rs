//! Differential fuzzing of the conntrack core's plain path (established TCP
//! ACKs, UDP) against its general path: the same packet sequence (the
//! `pipeline` target's format: packets split at 0xFF, each prefixed by a
//! side byte and a time step) through two pipelines, one with the plain path
//! switched off, must give every packet the same result and leave the same
//! table and counters.
#![no_main]

use conntrack::policy::{Action, Policy, Rule, Side};
use conntrack::{Config, HelperKind, Pipeline};
use libfuzzer_sys::fuzz_target;

fn pipeline() -> Pipeline {
    let mut helper_rule = Rule::any(Action::Accept);
    helper_rule.helper = Some(HelperKind::Ftp);
    let policy = Policy {
        rules: vec![helper_rule, Rule::any(Action::Accept)],
        default: Action::Drop,
    };
    Pipeline::new(
        Config {
            // Checksums off: mutated packets still parse, so sequences reach
            // established connections (the `pipeline` target checks them).
            checksum: false,
            max_entries: 64,
            expect_max: 16,
            helper_slots: 16,
            frag_slots: 16,
            ..Config::default()
        },
        policy,
    )
}

fuzz_target!(|data: &[u8]| {
    let mut plain = pipeline();
    let mut general = pipeline();
    general.conntrack_mut().set_general_only(true);
    let mut now = 0u64;
    for chunk in data.split(|&b| b == 0xff) {
        let [side, step, pkt @ ..] = chunk else {
            continue;
        };
        now += u64::from(*step) * 100_000_000;
        let side = if side & 1 == 0 {
            Side::Inside
        } else {
            Side::Outside
        };
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
