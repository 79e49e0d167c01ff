//! Fuzzes reading a conntrack state file (`[control] state_file`): the header
//! check, then importing the records into a small table; the table must keep
//! working after whatever was imported.
#![no_main]

use conntrack::policy::{Action, Policy, Side};
use conntrack::table::state;
use conntrack::{Config, Pipeline};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut p = Pipeline::new(
        Config {
            max_entries: 64,
            ..Config::default()
        },
        Policy {
            rules: vec![],
            default: Action::Accept,
        },
    );
    let recs = match state::records(data) {
        Ok(r) => r,
        // Not a state file: the records part is tried raw as well.
        Err(_) => data,
    };
    let (done, _) = p.conntrack_mut().import_state(recs, 1_000_000_000);
    assert_eq!(p.conntrack().len(), done);
    let mut out = Vec::new();
    assert_eq!(p.conntrack().export_state(1_000_000_000, &mut out), done);
    // A packet through the table afterwards.
    let pkt = conntrack::build::Pkt::udp4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2).build();
    let _ = p.process(Side::Inside, &pkt, 2_000_000_000);
});
