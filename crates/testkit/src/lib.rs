//! What Tollgate's tests that need root share: one check that a test may
//! run. Outside CI a test that cannot run says so and is skipped; in CI
//! (`CI=true`) it fails instead: CI must never pass by skipping one.

#![forbid(unsafe_code)]

use std::process::{Command, Stdio};

/// True if this process runs with effective user id 0 (read from
/// `/proc/self/status`, no system call of our own).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// True if a test that needs root (`what`: the lab, loading BPF) can run;
/// else says it is skipped, and in CI fails instead.
pub fn root_or_skip(what: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(!in_ci(), "CI must run the tests that need root ({what})");
    eprintln!("SKIPPED: {what} needs root");
    false
}

/// [`root_or_skip`] for the lab tests (network namespaces, XDP).
pub fn lab_allowed() -> bool {
    root_or_skip("the lab (network namespaces, XDP)")
}

/// [`lab_allowed`], and every command of `tools` present (`[command,
/// version flag]`): a missing one skips the test, or fails it in CI (where
/// `./x deps` must have installed it).
pub fn lab_with(tools: &[[&str; 2]]) -> bool {
    if !lab_allowed() {
        return false;
    }
    for [cmd, flag] in tools {
        let found = Command::new(cmd)
            .arg(flag)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            assert!(!in_ci(), "CI must install {cmd} (./x deps)");
            eprintln!("SKIPPED: {cmd} is not installed");
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_what_the_kernel_says() {
        // The effective uid asked another way: the owner of a file this
        // process creates.
        let dir = std::env::temp_dir().join(format!("testkit-{}", std::process::id()));
        std::fs::write(&dir, b"").expect("temp file");
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&dir).expect("meta"));
        let _ = std::fs::remove_file(&dir);
        assert_eq!(is_root(), owner == 0);
    }
}
