//! The fast path's redirect targets, re-checked while Tollgate runs.
//!
//! At start-up both interfaces must say they transmit the frames other
//! devices' XDP programs redirect to them
//! ([`crate::bpf::check_redirect_targets`]). An operator can change that
//! later (`ethtool -K PEER gro off` on a veth's peer): the program would then
//! redirect established flows into a device that drops them. A [`Watcher`]
//! thread asks both interfaces about once a second and suspends the fast
//! path while one cannot take them: the program's `offload` goes off, so it
//! hands every frame to the workers, which own every connection anyway; the
//! workers take their flows back and offer none until it resumes.
//!
//! States and transitions ([`Recheck::update`]):
//!
//! ```text
//! Running   --(an interface refuses, or does not answer)------------> Suspended
//! Suspended --(both take redirected frames at `hold` checks in a row)--> Running
//! ```
//!
//! Anything else keeps the state; each transition logs one line. `hold` damps
//! a flapping device (a script toggling GRO, a driver resetting): it starts
//! at one check, doubles (up to [`MAX_HOLD`]) with every suspension that
//! comes less than [`STABLE`] checks after a resume, and is one check again
//! once the fast path has run that long. Each resume moves every worker's
//! flows twice (back, then offered again): a flapping device would otherwise
//! make them do it every second.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::bpf::{redirect_target, Target, XdpProgram, NO_XMIT};

/// How often the watcher asks the interfaces.
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// Checks the fast path must run after a resume for the next suspension not
/// to count as flapping (a minute).
pub const STABLE: u32 = 60;

/// The most good checks in a row a resume waits for (about a minute).
pub const MAX_HOLD: u32 = 64;

/// The fast path's suspension as the watcher publishes it; the workers and
/// the metrics read it.
#[derive(Debug, Default)]
pub struct OffloadStatus {
    suspended: AtomicBool,
    suspensions: AtomicU64,
}

impl OffloadStatus {
    /// True while the fast path is suspended (the workers offer no flow).
    pub fn suspended(&self) -> bool {
        self.suspended.load(Ordering::Acquire)
    }

    /// Times it was suspended.
    pub fn suspensions(&self) -> u64 {
        self.suspensions.load(Ordering::Relaxed)
    }
}

/// What a re-check asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing.
    Keep,
    /// Suspend the fast path; the line to log.
    Suspend(String),
    /// Resume it; the line to log.
    Resume(String),
}

/// The re-check's state: the fast path running or suspended, and its damping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recheck {
    suspended: bool,
    /// Good checks in a row a resume needs.
    hold: u32,
    /// While suspended: good checks in a row so far. While running: checks
    /// since the resume (up to [`STABLE`]).
    count: u32,
}

impl Default for Recheck {
    fn default() -> Self {
        Recheck {
            suspended: false,
            hold: 1,
            // Start-up checked both interfaces: as if running stably.
            count: STABLE,
        }
    }
}

impl Recheck {
    /// True while suspended.
    pub fn suspended(&self) -> bool {
        self.suspended
    }

    /// Good checks in a row the next resume needs.
    pub fn hold(&self) -> u32 {
        self.hold
    }

    /// The next state, from what interfaces `names` said (`said`, in the
    /// same order).
    pub fn update(&mut self, names: [&str; 2], said: &[Target; 2]) -> Change {
        let why: Vec<String> = names
            .iter()
            .zip(said)
            .filter_map(|(name, t)| match t {
                Target::Takes => None,
                Target::Refuses => Some(format!("{name} {NO_XMIT}")),
                Target::Unanswered(e) => Some(format!(
                    "{name} did not say whether it transmits frames redirected by XDP ({e})"
                )),
            })
            .collect();
        match (self.suspended, why.is_empty()) {
            (false, false) => {
                self.suspended = true;
                let flapping = self.count < STABLE;
                self.hold = if flapping {
                    (self.hold * 2).min(MAX_HOLD)
                } else {
                    1
                };
                self.count = 0;
                let until = if self.hold == 1 {
                    "until both interfaces take redirected frames again".to_string()
                } else {
                    format!(
                        "until both interfaces have taken redirected frames at {} checks in a \
                         row (about {} s: the last resume was less than {} s ago)",
                        self.hold,
                        u64::from(self.hold) * RECHECK_EVERY.as_secs(),
                        u64::from(STABLE) * RECHECK_EVERY.as_secs()
                    )
                };
                Change::Suspend(format!(
                    "offload: {}; fast path suspended: every packet goes through the workers {until}",
                    why.join("; ")
                ))
            }
            (true, true) => {
                self.count += 1;
                if self.count < self.hold {
                    return Change::Keep;
                }
                self.suspended = false;
                self.count = 0;
                Change::Resume(format!(
                    "offload: {} and {} transmit frames redirected by XDP again; fast path resumed",
                    names[0], names[1]
                ))
            }
            (true, false) => {
                // Not yet: the good checks start over.
                self.count = 0;
                Change::Keep
            }
            (false, true) => {
                self.count = (self.count + 1).min(STABLE);
                Change::Keep
            }
        }
    }
}

/// The thread re-checking one program's interfaces. It holds the program:
/// dropping the watcher stops the thread and drops the program (detaching
/// it) before it returns.
pub struct Watcher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts re-checking the interfaces of `prog`'s two sides, named
    /// `names`, every [`RECHECK_EVERY`], publishing into `status`. The thread
    /// stays in the caller's network namespace (the interfaces').
    pub fn start(
        prog: XdpProgram,
        names: [String; 2],
        status: Arc<OffloadStatus>,
    ) -> std::io::Result<Watcher> {
        let (tx, rx) = bounded(1);
        let thread = std::thread::Builder::new()
            .name("tg-recheck".into())
            .spawn(move || watch(prog, &names, &status, &rx))?;
        Ok(Watcher {
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // Disconnected: the thread wakes at once and ends.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The watcher's loop, until `stop` is disconnected.
fn watch(mut prog: XdpProgram, names: &[String; 2], status: &OffloadStatus, stop: &Receiver<()>) {
    let ifindex = [prog.side_ifindex(0), prog.side_ifindex(1)];
    let mut recheck = Recheck::default();
    // What the program's config says now (the start-up turned it on).
    let mut program_on = true;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(RECHECK_EVERY) {
        let said = [redirect_target(ifindex[0]), redirect_target(ifindex[1])];
        match recheck.update([&names[0], &names[1]], &said) {
            Change::Keep => {}
            Change::Suspend(line) => {
                // The workers first: they stop offering flows and take theirs
                // back, so the program soon redirects nothing even if its
                // config cannot be written.
                status.suspended.store(true, Ordering::Release);
                status.suspensions.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("{line}");
            }
            Change::Resume(line) => tracing::info!("{line}"),
        }
        let on = !recheck.suspended();
        if on != program_on {
            match prog.set_fast_path(on) {
                Ok(()) => program_on = on,
                Err(e) => tracing::error!(
                    "offload: could not {} the fast path: {e}; trying again in {} s",
                    if on { "resume" } else { "suspend" },
                    RECHECK_EVERY.as_secs()
                ),
            }
        }
        // Resuming: the program first, so that every frame the workers see
        // once they offer flows again carries the program's metadata.
        if on && program_on {
            status.suspended.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 2] = ["tgin", "tgout"];

    fn gone() -> Target {
        Target::Unanswered("querying the XDP features of interface 7: No such device".into())
    }

    #[test]
    fn running_stays_while_both_take_redirected_frames() {
        let mut r = Recheck::default();
        for _ in 0..3 {
            assert_eq!(
                r.update(NAMES, &[Target::Takes, Target::Takes]),
                Change::Keep
            );
        }
        assert!(!r.suspended());
    }

    #[test]
    fn a_refusing_interface_suspends_once_naming_it() {
        let mut r = Recheck::default();
        let Change::Suspend(line) = r.update(NAMES, &[Target::Takes, Target::Refuses]) else {
            panic!("suspends")
        };
        assert!(r.suspended());
        // The start-up error's words, naming only the interface that refuses.
        assert!(line.contains(&format!("tgout {NO_XMIT}")), "{line}");
        assert!(!line.contains("tgin"), "{line}");
        assert!(line.contains("fast path suspended"), "{line}");
        // Still refusing, or the other one refusing too: no second line.
        assert_eq!(
            r.update(NAMES, &[Target::Takes, Target::Refuses]),
            Change::Keep
        );
        assert_eq!(
            r.update(NAMES, &[Target::Refuses, Target::Refuses]),
            Change::Keep
        );
        // One of the two back is not enough.
        assert_eq!(
            r.update(NAMES, &[Target::Takes, Target::Refuses]),
            Change::Keep
        );
        assert!(r.suspended());
    }

    #[test]
    fn an_interface_that_does_not_answer_suspends_saying_why() {
        let mut r = Recheck::default();
        let Change::Suspend(line) = r.update(NAMES, &[gone(), Target::Takes]) else {
            panic!("suspends")
        };
        assert!(line.contains("tgin did not say"), "{line}");
        assert!(line.contains("No such device"), "{line}");
        // Both wrong: both named.
        let mut r = Recheck::default();
        let Change::Suspend(line) = r.update(NAMES, &[gone(), Target::Refuses]) else {
            panic!("suspends")
        };
        assert!(
            line.contains("tgin did not say") && line.contains("tgout cannot"),
            "{line}"
        );
    }

    #[test]
    fn both_taking_again_resumes_once() {
        let mut r = Recheck::default();
        assert!(matches!(
            r.update(NAMES, &[Target::Refuses, gone()]),
            Change::Suspend(_)
        ));
        let Change::Resume(line) = r.update(NAMES, &[Target::Takes, Target::Takes]) else {
            panic!("resumes")
        };
        assert!(!r.suspended());
        assert!(
            line.contains("tgin and tgout") && line.contains("resumed"),
            "{line}"
        );
        assert_eq!(
            r.update(NAMES, &[Target::Takes, Target::Takes]),
            Change::Keep
        );
        // And again: every suspension is its own.
        assert!(matches!(
            r.update(NAMES, &[Target::Takes, gone()]),
            Change::Suspend(_)
        ));
    }

    /// Checks until the next change, and the change.
    fn until_change(r: &mut Recheck, said: &[Target; 2]) -> (u32, Change) {
        for n in 1..=1000 {
            let c = r.update(NAMES, said);
            if c != Change::Keep {
                return (n, c);
            }
        }
        panic!("no change in 1000 checks");
    }

    const GOOD: [Target; 2] = [Target::Takes, Target::Takes];
    const BAD: [Target; 2] = [Target::Takes, Target::Refuses];

    #[test]
    fn a_flapping_interface_waits_longer_before_each_resume() {
        let mut r = Recheck::default();
        // The first suspension after a stable start resumes at once.
        assert!(matches!(r.update(NAMES, &BAD), Change::Suspend(_)));
        assert_eq!(r.hold(), 1);
        assert!(matches!(
            until_change(&mut r, &GOOD),
            (1, Change::Resume(_))
        ));
        // Flapping every second: 2, 4, 8... good checks in a row, up to MAX_HOLD.
        let mut holds = Vec::new();
        for _ in 0..9 {
            let Change::Suspend(line) = r.update(NAMES, &BAD) else {
                panic!("suspends")
            };
            let (n, c) = until_change(&mut r, &GOOD);
            assert!(matches!(c, Change::Resume(_)));
            assert_eq!(n, r.hold());
            assert!(line.contains(&format!("at {n} checks in a row")), "{line}");
            holds.push(n);
        }
        assert_eq!(holds, [2, 4, 8, 16, 32, 64, 64, 64, 64]);
    }

    #[test]
    fn a_bad_check_while_waiting_starts_the_wait_over() {
        let mut r = Recheck::default();
        r.update(NAMES, &BAD);
        until_change(&mut r, &GOOD);
        r.update(NAMES, &BAD);
        assert_eq!(r.hold(), 2);
        assert_eq!(r.update(NAMES, &GOOD), Change::Keep);
        assert_eq!(r.update(NAMES, &[gone(), Target::Takes]), Change::Keep);
        assert_eq!(r.update(NAMES, &GOOD), Change::Keep);
        assert!(matches!(r.update(NAMES, &GOOD), Change::Resume(_)));
    }

    #[test]
    fn running_stably_forgets_the_flapping() {
        let mut r = Recheck::default();
        for _ in 0..4 {
            r.update(NAMES, &BAD);
            until_change(&mut r, &GOOD);
        }
        assert_eq!(r.hold(), 8);
        // Suspended again just before STABLE checks: still flapping.
        for _ in 0..STABLE - 1 {
            assert_eq!(r.update(NAMES, &GOOD), Change::Keep);
        }
        r.update(NAMES, &BAD);
        assert_eq!(r.hold(), 16);
        until_change(&mut r, &GOOD);
        // A minute of running: the next suspension resumes at the first good check.
        for _ in 0..STABLE {
            assert_eq!(r.update(NAMES, &GOOD), Change::Keep);
        }
        let Change::Suspend(line) = r.update(NAMES, &BAD) else {
            panic!("suspends")
        };
        assert_eq!(r.hold(), 1);
        assert!(
            line.contains("until both interfaces take redirected frames again"),
            "{line}"
        );
        assert!(matches!(
            until_change(&mut r, &GOOD),
            (1, Change::Resume(_))
        ));
    }
}
