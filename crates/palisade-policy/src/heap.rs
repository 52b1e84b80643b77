//! Giving memory freed by a policy compilation back to the operating system.
//!
//! Compiling the shipped packs builds and discards large intermediate automata (a peak of
//! ~120 MiB for ~40 MiB kept). glibc's allocator keeps freed pages of its arenas resident, so
//! without a trim the gateway's resident size stays near the compilation's peak for good.

/// Returns free heap pages to the operating system (glibc `malloc_trim`); a no-op elsewhere.
/// [`crate::PolicySet::compile`] calls it; a caller that parsed many policies without compiling
/// them (validation compiles every regex once, then drops it) can call it too.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `malloc_trim` takes a padding size, touches only the allocator's own free lists
    // (under the allocator's locks, so concurrent allocations are safe) and has no
    // preconditions on its caller.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes every thread allocate from one glibc arena (`mallopt(M_ARENA_MAX, 1)`); a no-op
/// elsewhere. Call it first thing in `main`, before any thread starts.
///
/// With per-thread arenas, which arena a policy compilation's garbage lands in depends on the
/// thread that ran it, and an arena's freed pages in the middle of its heap cannot be trimmed:
/// measured with all shipped packs, the idle gateway was 27 MiB in three runs of five and 34 MiB
/// in the other two; with one arena, 27 MiB in four of four (and the MCP-only gateway 19 MiB
/// instead of 19–27). Small allocations still come from each thread's cache without locking.
///
/// It also fixes the size from which allocations get their own mapping at 1 MiB
/// (`M_MMAP_THRESHOLD`). glibc otherwise raises that size to the largest block freed so far, so
/// once a 7 MiB password hash (Argon2) had been freed, later ones came from the heap and stayed
/// there: 150 users created at once left the process at 718 MiB; with the fixed size, 25 MiB.
pub fn use_one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `mallopt` only sets allocator parameters; `M_ARENA_MAX` with a positive value is
    // valid at any time and affects arenas created afterwards, and `M_MMAP_THRESHOLD` within
    // glibc's limits (up to 32 MiB on 64-bit) applies to later allocations.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Unmaps the whole pages of read-only data embedded in the binary (`text`) that start-up has
/// parsed and the process will not read again soon: the shipped packs and built-in models,
/// ~3 MB of JSON that would otherwise stay resident for good. The pages stay in the page cache;
/// a later read maps them again, unchanged. A no-op off Linux.
pub fn release_embedded(text: &'static str) {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    {
        // SAFETY: `sysconf` has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let Ok(page) = usize::try_from(page) else {
            return;
        };
        if page == 0 {
            return;
        }
        let start = (text.as_ptr() as usize).next_multiple_of(page);
        let end = (text.as_ptr() as usize + text.len()) / page * page;
        if end > start {
            // SAFETY: `[start, end)` is whole pages inside `text`, a `'static` string in the
            // binary's read-only data, a private file mapping that is never written: dropping its
            // pages only unmaps them, and the next read faults the same bytes back in from the
            // file (the running executable cannot be written to). No reference is invalidated.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = text;
}
