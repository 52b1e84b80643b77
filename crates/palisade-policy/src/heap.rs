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

/// What [`release_binary_pages`] gave back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Read-only file mappings whose pages were dropped.
    pub mappings: usize,
    /// Their resident size before (bytes).
    pub bytes: u64,
}

/// Drops the resident pages of the read-only file mappings of the executable and its libraries
/// (their code and constant data) that no one ever wrote to. Start-up runs much code the
/// serving process never runs again (argument parsing, migrations, seeding, config checks, the compilers of the policy
/// set): with 64 KiB fault-around, it leaves most of a 15 MiB code segment resident. After the
/// drop, the pages the process does run fault back in from the page cache (minor faults, the
/// same bytes), and the rest stay out. A mapping with any privately written page (relocated
/// read-only data) is left alone: dropping it would lose the writes. A no-op off Linux.
pub fn release_binary_pages() -> Released {
    #[cfg(target_os = "linux")]
    {
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return Released::default();
        };
        let mut out = Released::default();
        for m in read_only_clean_mappings(&smaps) {
            // SAFETY: `[start, end)` is a whole mapping of a file, private, mapped without write
            // permission and with no anonymous (privately written) page: every page equals the
            // file's bytes, so dropping them only unmaps them, and the next access maps the same
            // bytes back from the page cache or the file (which the loader mapped, and a running
            // executable or loaded library is not written in place). No Rust reference sees a
            // change.
            #[allow(unsafe_code)]
            let done = unsafe {
                libc::madvise(
                    m.start as *mut libc::c_void,
                    m.end - m.start,
                    libc::MADV_DONTNEED,
                )
            } == 0;
            if done {
                out.mappings += 1;
                out.bytes += m.rss;
            }
        }
        out
    }
    #[cfg(not(target_os = "linux"))]
    Released::default()
}

/// One mapping of `/proc/self/smaps` that [`release_binary_pages`] may drop.
#[derive(Debug, PartialEq, Eq)]
struct CleanMapping {
    start: usize,
    end: usize,
    rss: u64,
}

/// The file mappings in `smaps` that are private, not writable and hold no anonymous page
/// (pseudo-mappings such as `[vdso]` are not files and never qualify).
fn read_only_clean_mappings(smaps: &str) -> Vec<CleanMapping> {
    let mut found = Vec::new();
    // The mapping being read, and whether it qualifies so far.
    let mut current: Option<(CleanMapping, bool)> = None;
    let mut finish = |current: &mut Option<(CleanMapping, bool)>| {
        if let Some((m, true)) = current.take() {
            found.push(m);
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            finish(&mut current);
            let perms = fields.next().unwrap_or("");
            // offset, device, inode, then the path (which may contain spaces).
            let name = line
                .splitn(6, |c: char| c.is_ascii_whitespace())
                .nth(5)
                .map(str::trim)
                .unwrap_or("");
            let eligible = name.starts_with('/')
                && perms.len() == 4
                && perms.as_bytes()[0] == b'r'
                && perms.as_bytes()[1] == b'-'
                && perms.as_bytes()[3] == b'p'
                && end > start;
            current = Some((CleanMapping { start, end, rss: 0 }, eligible));
            continue;
        }
        let Some((m, ok)) = current.as_mut() else {
            continue;
        };
        let kb = || {
            fields
                .clone()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        };
        match first {
            "Rss:" => m.rss = kb().saturating_mul(1024),
            // Privately written pages (or a field that cannot be read): not ours to drop.
            "Anonymous:" | "Swap:" if kb() != 0 => *ok = false,
            _ => {}
        }
    }
    finish(&mut current);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_read_only_private_file_mappings_qualify() {
        let smaps = "\
555500000000-555500100000 r--p 00000000 fd:01 42   /opt/palisade bin/palisade
Rss:                 900 kB
Anonymous:             0 kB
Swap:                  0 kB
555500100000-555500f00000 r-xp 00100000 fd:01 42   /opt/palisade bin/palisade
Rss:               12000 kB
Anonymous:             0 kB
555500f00000-555501000000 r--p 00f00000 fd:01 42   /opt/palisade bin/palisade
Rss:                 800 kB
Anonymous:           600 kB
555501000000-555501100000 rw-p 01000000 fd:01 42   /opt/palisade bin/palisade
Rss:                  64 kB
Anonymous:            64 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 7    /usr/lib/libc.so.6
Rss:                1000 kB
Anonymous:             0 kB
7f0000300000-7f0000301000 r-xp 00000000 00:00 0    [vdso]
Rss:                   4 kB
Anonymous:             0 kB
7f0000400000-7f0000500000 r--p 00000000 00:00 0
Rss:                   4 kB
Anonymous:             0 kB
7f0000100000-7f0000200000 r--s 00000000 fd:01 42   /opt/palisade bin/palisade
Rss:                   4 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 r--p 00000000 fd:01 42   /opt/palisade bin/palisade
Rss:                   4 kB
Anonymous:           bad kB
";
        let found = read_only_clean_mappings(smaps);
        assert_eq!(
            found,
            vec![
                CleanMapping {
                    start: 0x5555_0000_0000,
                    end: 0x5555_0010_0000,
                    rss: 900 << 10
                },
                CleanMapping {
                    start: 0x5555_0010_0000,
                    end: 0x5555_00f0_0000,
                    rss: 12_000 << 10
                },
                CleanMapping {
                    start: 0x7f00_0000_0000,
                    end: 0x7f00_0010_0000,
                    rss: 1_000 << 10
                },
            ]
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_executables_code_is_given_back_and_still_runs() {
        // Touch a good part of this test binary's code first (the regex compiler).
        let set = crate::PolicySet::compile(&[]).unwrap();
        drop(set);
        let _ = regex::Regex::new(r"(?i)\b(\w+)@(\w+)\.com\b").unwrap();
        let released = release_binary_pages();
        assert!(released.mappings >= 1, "{released:?}");
        assert!(released.bytes > 0, "{released:?}");
        // Everything still runs and reads the same constant data after the drop.
        let re = regex::Regex::new(r"(?i)\b(\w+)@(\w+)\.com\b").unwrap();
        assert!(re.is_match("Mail ALICE@example.com today"));
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let after: u64 = read_only_clean_mappings(&smaps).iter().map(|m| m.rss).sum();
        assert!(after < released.bytes, "{after} of {}", released.bytes);
    }
}
