//! Tollgate's XDP program through the verifier and BPF_PROG_TEST_RUN
//! (root; CI runs it as root).

mod common;

use dataplane::bpf::{action, Mark, XdpProgram};
use dataplane::probe::{calling, load_xdp};

#[test]
fn program_loads_and_passes_what_it_must_not_take() {
    if !common::root_or_skip("loading BPF") {
        return;
    }
    let mut p = XdpProgram::load(false).expect("verifier accepts the program");
    assert_eq!(p.mark(), Mark::None);
    let mut frame = vec![0u8; 64];
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    // Redirection off (the initial state): everything goes to the stack.
    assert_eq!(p.test_run(&frame).unwrap(), action::PASS);
    // On, but no socket on the queue: still passed, never dropped.
    p.set_redirect(true).unwrap();
    assert_eq!(p.test_run(&frame).unwrap(), action::PASS);
    // An empty frame too.
    assert_eq!(p.test_run(&[0u8; 14]).unwrap(), action::PASS);
}

/// The re-check asks interfaces by index: one that does not exist (gone)
/// does not answer, and says why (the re-check then suspends the fast path).
#[test]
fn a_missing_redirect_target_does_not_answer() {
    use dataplane::bpf::{redirect_target, Target};
    if !common::root_or_skip("querying XDP features") {
        return;
    }
    match redirect_target(i32::MAX) {
        Target::Unanswered(why) => assert!(why.contains("No such device"), "{why}"),
        t => panic!("a missing interface answered {t:?}"),
    }
}

/// What this kernel accepts, as the probe tells it (printed: a skipped
/// variant names the kernel's answer).
fn helpers() -> (Result<(), String>, Result<(), String>) {
    let ask = |id| {
        load_xdp(&calling(id, -8))
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let meta = ask(libbpf_sys::BPF_FUNC_xdp_adjust_meta);
    let head = ask(libbpf_sys::BPF_FUNC_xdp_adjust_head);
    eprintln!("probe: bpf_xdp_adjust_meta {meta:?}, bpf_xdp_adjust_head {head:?}");
    (meta, head)
}

/// A UDP frame from 10.0.0.1:1000 to 10.0.0.2:2000, checksums right.
fn udp_frame() -> Vec<u8> {
    let l3 = conntrack::build::Pkt::udp4([10, 0, 0, 1], 1000, [10, 0, 0, 2], 2000)
        .payload(b"hello")
        .build();
    conntrack::build::ethernet(&l3, &[])
}

/// Every variant the kernel accepts loads, and each hands frames over
/// marked its own way: the prefix variant puts 8 bytes (magic first) in
/// front of every frame, offload on or off; the metadata variant writes them in
/// front, only with offload on; without a fast path nothing is added.
#[test]
fn each_mark_the_kernel_accepts_loads_and_marks_its_way() {
    if !common::root_or_skip("loading BPF") {
        return;
    }
    let (meta, head) = helpers();
    let frame = udp_frame();
    let mut tried = 0;
    for (mark, ok) in [(Mark::Meta, meta.is_ok()), (Mark::Prefix, head.is_ok())] {
        let loaded = XdpProgram::load_marked(mark);
        if !ok {
            // The probe's answer holds: the kernel refuses this variant.
            assert!(
                loaded.is_err(),
                "{mark:?} loaded although the probe said no"
            );
            continue;
        }
        tried += 1;
        let mut p = loaded.expect("the variant the probe accepts loads");
        p.set_redirect(true).unwrap();
        for offload in [false, true] {
            p.set_offload(offload, true).unwrap();
            let (rv, m) = p.test_run_meta(&frame).unwrap();
            assert_eq!(rv, action::PASS, "no socket: passed");
            let want = mark == Mark::Prefix || offload;
            assert_eq!(m.is_some(), want, "{mark:?} offload {offload}: mark {m:?}");
            if let Some(m) = m {
                // struct tg_meta: magic 0x7467, kind NONE (no flow installed).
                assert_eq!(u16::from_ne_bytes([m[0], m[1]]), 0x7467);
                assert_eq!(m[2], 0);
            }
        }
    }
    // The project's kernels have at least one of the two: if neither loads,
    // offload must be refused (below) and this test says so loudly.
    assert!(
        tried > 0,
        "this kernel refuses both marks: offload cannot run here"
    );
}

/// The choice follows the probe: metadata where the kernel takes it (unless
/// TOLLGATE_FORCE_NO_META=1), else the prefix; and a program without the
/// fast path refuses to turn it on.
#[test]
fn the_mark_follows_the_kernel_and_the_force_switch() {
    if !common::root_or_skip("loading BPF") {
        return;
    }
    let (meta, head) = helpers();
    let (mark, why) = Mark::choose(true).expect("one of the two loads");
    let forced = std::env::var("TOLLGATE_FORCE_NO_META").is_ok_and(|v| v == "1");
    let want = if meta.is_ok() && !forced {
        Mark::Meta
    } else {
        assert!(head.is_ok());
        Mark::Prefix
    };
    assert_eq!(mark, want, "{why}");
    assert_eq!(Mark::choose(false).unwrap().0, Mark::None);
    let mut p = XdpProgram::load(false).unwrap();
    assert!(p.set_offload(true, true).is_err());
    assert!(p.set_offload(false, true).is_ok());
}
