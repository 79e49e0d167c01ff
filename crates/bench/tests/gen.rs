//! The traffic generator's backends (root: network namespaces, XDP): the
//! broadcast loop sends exactly the count asked for, rewrites every frame
//! into the next flow with its checksums right, paces, and
//! `TOLLGATE_FORCE_GEN` is honoured. Each test works in a namespace of its
//! own, removed however the test ends; nothing leaves it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bench::gen::{forced_backend, Backend, GenError, Generator, FORCE_ENV};
use conntrack::build::{ethernet, Pkt};
use conntrack::packet::tcp_flags::SYN;

/// The tests that set `TOLLGATE_FORCE_GEN` take turns with the others.
static ENV: Mutex<()> = Mutex::new(());

fn env_lock() -> std::sync::MutexGuard<'static, ()> {
    ENV.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A network namespace named after the process and the test, removed when
/// dropped (also when the test fails).
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("tgg{}{tag}", std::process::id());
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name]).expect("netns add");
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]).expect("lo up");
        ns
    }

    /// Runs `f` on a thread inside the namespace, pinned to CPU 0.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(format!("/run/netns/{}", self.0)).expect("netns");
                // SAFETY: `file` is an open namespace file; setns changes
                // only this thread's network namespace.
                let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
                dataplane::lab::Lab::pin(0);
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn udp_frame(size: usize) -> Vec<u8> {
    let payload = vec![0u8; size - 14 - 20 - 8];
    ethernet(
        &Pkt::udp4([10, 77, 0, 1], 1024, [10, 77, 0, 2], 5000)
            .payload(&payload)
            .build(),
        &[],
    )
}

#[test]
fn loop_sends_exactly_the_count_into_a_sink() {
    if !testkit::root_or_skip("loading XDP programs in a namespace") {
        return;
    }
    let _g = env_lock();
    let ns = Netns::new("k");
    ns.run(|| {
        let g = Generator::load_with(Some(Backend::Loop)).expect("generator");
        assert_eq!(g.backend(), Backend::Loop);
        // Fewer than go round at once, one, and many; several sizes.
        for (size, count) in [(60, 1u32), (60, 50), (60, 300_000), (1514, 20_000)] {
            let c = g.ceiling(&udp_frame(size), 1024, count).expect("ceiling");
            assert_eq!(c.received, u64::from(count), "{size} B x {count}: {c:?}");
            assert!(c.took > Duration::ZERO);
            eprintln!(
                "loop into a sink: {size} B x {count}: {:.3} Mpps ({:.3} s)",
                c.received_pps() / 1e6,
                c.took.as_secs_f64()
            );
        }
    });
}

/// A packet socket that receives every frame arriving at `ifindex`.
fn capture(ifindex: i32) -> OwnedFd {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket has no memory preconditions; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is fresh and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all;
    addr.sll_ifindex = ifindex;
    // SAFETY: `addr` is a sockaddr_ll of the size given, read only.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
    let size: libc::c_int = 32 << 20;
    // SAFETY: the option value is a c_int of the size given, read only.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::addr_of!(size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    fd
}

/// Frames from `fd` until `want` or a quiet half second.
fn receive(fd: &OwnedFd, want: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 2048];
    let mut quiet = Instant::now();
    while got.len() < want && quiet.elapsed() < Duration::from_millis(500) {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            got.push(buf[..n as usize].to_vec());
            quiet = Instant::now();
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    got
}

/// The Internet checksum of `data` with `sum` added: 0xffff if it holds.
fn ones_sum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[test]
fn loop_floods_from_distinct_sources_with_right_checksums_and_paces() {
    if !testkit::root_or_skip("loading XDP programs in a namespace") {
        return;
    }
    let _g = env_lock();
    let ns = Netns::new("f");
    ns.run(|| {
        // A plain pair whose far end hands what arrives to the stack (GRO
        // gives it NAPI, so it takes redirected frames): seen by a capture.
        ip(&[
            "link", "add", "tgga", "type", "veth", "peer", "name", "tggb",
        ])
        .expect("veth");
        for end in ["tgga", "tggb"] {
            ip(&["link", "set", end, "addrgenmode", "none"]).expect("addrgenmode");
            ip(&["link", "set", end, "up"]).expect("up");
        }
        let g = Generator::load_with(Some(Backend::Loop)).expect("generator");
        // Without GRO (or XDP) the far end has no NAPI to take redirected
        // frames: the generator says so instead of losing them all.
        let refused = g.send("tgga", &udp_frame(60), 1, 10, false);
        assert!(
            matches!(&refused, Err(GenError::NoXmit(i)) if i == "tgga"),
            "{refused:?}"
        );
        let out = Command::new("ethtool")
            .args(["-K", "tggb", "gro", "on"])
            .output()
            .expect("ethtool");
        assert!(out.status.success(), "ethtool: {out:?}");
        let b = dataplane::bpf::ifindex("tggb").expect("tggb");
        let sock = capture(b);

        const SOURCES: u32 = 5000;
        let frame = ethernet(
            &Pkt::tcp4([10, 77, 128, 0], 1024, [10, 77, 0, 2], 9)
                .flags(SYN)
                .seq(1)
                .build(),
            &[],
        );
        // Two bursts, the second from where the first stopped; received
        // meanwhile (the socket's buffer would not hold them all).
        let frames = std::thread::scope(|s| {
            let rx = s.spawn(|| receive(&sock, SOURCES as usize));
            g.syn_flood("tgga", &frame, SOURCES, 0, 3000)
                .expect("flood");
            g.syn_flood("tgga", &frame, SOURCES, 3000, 2000)
                .expect("flood");
            rx.join().expect("receiver")
        });
        let syns: Vec<&Vec<u8>> = frames
            .iter()
            .filter(|f| f.len() >= 54 && f[12..14] == [8, 0] && f[23] == 6)
            .collect();
        assert_eq!(syns.len(), SOURCES as usize, "{} frames", frames.len());
        let mut seen = std::collections::HashSet::new();
        for f in &syns {
            let (iph, tcp) = (&f[14..34], &f[34..54]);
            assert_eq!(ones_sum(iph, 0), 0xffff, "IP checksum of {f:02x?}");
            let pseudo = ones_sum(&iph[12..20], 6 + 20);
            assert_eq!(
                ones_sum(tcp, u32::from(pseudo)),
                0xffff,
                "TCP checksum of {f:02x?}"
            );
            assert_eq!(&iph[12..14], &[10, 77], "source in 10.77.128.0/17");
            assert!(
                iph[14] >= 128,
                "source in 10.77.128.0/17: {:?}",
                &iph[12..16]
            );
            assert_eq!(tcp[13], SYN);
            seen.insert((iph[14], iph[15], tcp[0], tcp[1]));
        }
        assert_eq!(
            seen.len(),
            SOURCES as usize,
            "every frame from another source"
        );

        // Paced: 20 000 frames at 100 000 per second take about 0.2 s.
        let udp = udp_frame(60);
        let (took, frames) = std::thread::scope(|s| {
            let rx = s.spawn(|| receive(&sock, 20_000));
            let took = g
                .send_rate("tgga", &udp, 64, 20_000, 100_000.0)
                .expect("paced");
            (took, rx.join().expect("receiver"))
        });
        assert!(
            took >= Duration::from_millis(180) && took < Duration::from_millis(800),
            "paced run took {took:?}"
        );
        let got = frames
            .iter()
            .filter(|f| f.len() == 60 && f[23] == 17)
            .count();
        assert_eq!(got, 20_000);
        let _ = ip(&["link", "del", "tgga"]);
    });
}

#[test]
fn force_switch_is_honoured() {
    if !testkit::root_or_skip("loading XDP programs") {
        return;
    }
    let _g = env_lock();
    let restore = std::env::var(FORCE_ENV).ok();
    // What the kernel allows, probed.
    let auto = Generator::load_with(None).expect("generator").backend();
    std::env::set_var(FORCE_ENV, "loop");
    let forced_loop = Generator::load().map(|g| g.backend());
    std::env::set_var(FORCE_ENV, "live");
    let forced_live = Generator::load().map(|g| g.backend());
    std::env::set_var(FORCE_ENV, "sideways");
    let bad = Generator::load().map(|g| g.backend());
    match restore {
        Some(v) => std::env::set_var(FORCE_ENV, v),
        None => std::env::remove_var(FORCE_ENV),
    }
    assert_eq!(forced_loop.expect("forced loop"), Backend::Loop);
    match (auto, forced_live) {
        (Backend::Live, Ok(b)) => assert_eq!(b, Backend::Live),
        (Backend::Loop, Err(GenError::LiveRefused(why))) => {
            eprintln!("this kernel refuses live frames: {why}");
        }
        (a, r) => panic!("probed {a:?} but forcing live gave {r:?}"),
    }
    assert!(matches!(bad, Err(GenError::BadForce(v)) if v == "sideways"));
    assert_eq!(forced_backend(Some("loop")).ok(), Some(Some(Backend::Loop)));
}

#[test]
fn live_frames_send_the_count_where_the_kernel_allows_them() {
    if !testkit::root_or_skip("loading XDP programs in a namespace") {
        return;
    }
    let _g = env_lock();
    let ns = Netns::new("l");
    ns.run(|| {
        let auto = Generator::load_with(None).expect("generator");
        if auto.backend() == Backend::Loop {
            // The probe said no: forcing live must say so, not fall back.
            let forced = Generator::load_with(Some(Backend::Live));
            assert!(matches!(forced, Err(GenError::LiveRefused(_))));
            eprintln!("SKIPPED: this kernel refuses live frames");
            return;
        }
        for (size, count) in [(60, 1u32), (60, 100_000)] {
            let c = auto
                .ceiling(&udp_frame(size), 1024, count)
                .expect("ceiling");
            assert_eq!(c.received, u64::from(count), "{size} B x {count}: {c:?}");
        }
    });
}
