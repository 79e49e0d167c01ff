//! What the pipeline targets share: the pipeline they drive, and their input
//! format (the input split into packets at 0xFF bytes, each prefixed by a
//! side byte, bit 0 set for the outside, and a time step in 100 ms).

use conntrack::policy::{Action, Policy, Rule, Side};
use conntrack::{Config, HelperKind, Pipeline};

/// A pipeline with small tables (allocation per run dominates otherwise, and
/// small tables reach the full-table paths), the FTP helper on every
/// connection, accepting everything that is not invalid.
pub fn pipeline(checksum: bool) -> Pipeline {
    let mut helper_rule = Rule::any(Action::Accept);
    helper_rule.helper = Some(HelperKind::Ftp);
    let policy = Policy {
        rules: vec![helper_rule, Rule::any(Action::Accept)],
        default: Action::Drop,
    };
    Pipeline::new(
        Config {
            checksum,
            max_entries: 64,
            expect_max: 16,
            helper_slots: 16,
            frag_slots: 16,
            ..Config::default()
        },
        policy,
    )
}

/// The packets of `data` with their side and absolute time (ns).
pub fn packets(data: &[u8]) -> impl Iterator<Item = (Side, &[u8], u64)> {
    let mut now = 0u64;
    data.split(|&b| b == 0xff).filter_map(move |chunk| {
        let [side, step, pkt @ ..] = chunk else {
            return None;
        };
        now += u64::from(*step) * 100_000_000;
        let side = if side & 1 == 0 {
            Side::Inside
        } else {
            Side::Outside
        };
        Some((side, pkt, now))
    })
}
