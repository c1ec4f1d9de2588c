//! Allocator settings for processes that train with these ops.

/// Training frees and re-allocates the same large buffers every step; glibc's defaults hand
/// them back to the kernel each time and fault them in again, which cost up to a third of a conv
/// training step. Keeping up to 1 GiB of freed heap (a SimCLR step on 512 ResNet views frees
/// more than 256 MiB between steps), and serving blocks under 64 MiB from the heap rather than
/// fresh mappings, removes that churn. Worker threads get arenas of their own
/// by default, whose 64 MiB heaps are unmapped whole whenever they empty, whatever the trim
/// threshold; one arena for all threads keeps that memory too (a ResNet-20 step spent half its
/// time in page faults without it). Call it first thing in `main`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_allocator() {
    // SAFETY: mallopt only changes allocator settings; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Other allocators keep their own defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}
