//! Fuzzes the whole pipeline (parse, conntrack, helpers, policy) on sequences
//! of arbitrary packets: the input is split into packets at 0xFF 0x00 pairs,
//! each prefixed by a side byte and a time step.
#![no_main]

use conntrack::policy::{Action, Policy, Rule, Side};
use conntrack::{Config, HelperKind, Pipeline};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut helper_rule = Rule::any(Action::Accept);
    helper_rule.helper = Some(HelperKind::Ftp);
    let policy = Policy {
        rules: vec![helper_rule, Rule::any(Action::Accept)],
        default: Action::Drop,
    };
    let mut p = Pipeline::new(
        // Small tables: allocation per run dominates otherwise, and small
        // tables reach full-table paths.
        Config {
            max_entries: 64,
            expect_max: 16,
            helper_slots: 16,
            frag_slots: 16,
            ..Config::default()
        },
        policy,
    );
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
        let _ = p.process(side, pkt, now);
        assert!(p.conntrack().len() <= 64);
    }
});
