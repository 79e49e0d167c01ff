//! Tollgate's XDP program through the verifier and BPF_PROG_TEST_RUN
//! (root; CI runs it as root).

mod common;

use dataplane::bpf::{action, XdpProgram};

#[test]
fn program_loads_and_passes_what_it_must_not_take() {
    if !common::root_or_skip("loading BPF") {
        return;
    }
    let mut p = XdpProgram::load().expect("verifier accepts the program");
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
