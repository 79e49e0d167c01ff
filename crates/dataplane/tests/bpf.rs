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
