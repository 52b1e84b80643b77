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
