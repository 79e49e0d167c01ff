//! The core's two hints to the machine, and its only `unsafe`: large tables
//! backed by transparent huge pages where the kernel offers them (a table of
//! a million connections spans ~170 MB, and with 4 KiB pages nearly every
//! lookup also misses the TLB), and cache prefetches for a batch's entries.

#![allow(unsafe_code)]

/// Cache prefetch hint for the line at `p`; a no-op where the target has
/// none.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint: it never faults (not even on an invalid
    // address) and neither reads nor writes memory as the program can observe.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A vector of `n` copies of `v`, its memory advised for huge pages before it
/// is first touched.
pub fn huge_vec<T: Clone>(n: usize, v: T) -> Vec<T> {
    let mut vec: Vec<T> = Vec::with_capacity(n);
    advise_huge(
        vec.as_mut_ptr().cast::<u8>(),
        n.saturating_mul(core::mem::size_of::<T>()),
    );
    vec.resize(n, v);
    vec
}

#[cfg(target_os = "linux")]
fn advise_huge(ptr: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    if len < HUGE {
        return;
    }
    // Only whole 2 MiB pages inside the allocation can be huge.
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + len) & !(HUGE - 1);
    if end <= start {
        return;
    }
    // SAFETY: [start, end) lies inside the allocation `ptr..ptr+len` that the
    // caller owns; MADV_HUGEPAGE only changes how the kernel backs those pages,
    // never their contents or validity. Failure (no THP support) is harmless.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_ptr: *mut u8, _len: usize) {}

#[cfg(test)]
mod tests {
    #[test]
    fn huge_vec_is_filled() {
        let v = super::huge_vec(1 << 20, 7u64);
        assert_eq!(v.len(), 1 << 20);
        assert!(v.iter().all(|&x| x == 7));
    }
}
