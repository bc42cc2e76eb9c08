//! The allocator: mimalloc (glibc's malloc and free were 30% of a profile of the pipeline,
//! BENCHMARKS.md), and how long it keeps freed memory. One of two places with `unsafe`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` of mimalloc 3's `mi_option_t` (unnamed in the bindings).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long, in milliseconds, freed memory stays with the process before mimalloc returns
/// it to the kernel (its default: 1,000). Each seal frees a head of spans and the next
/// head takes the memory again within seconds: with the default, the kernel zeroed it
/// anew each time, about 13% of the server's CPU in a catch-up (BENCHMARKS.md). The cost:
/// a burst's peak rose from 1.56 to 1.84 GB, and memory goes back a minute after it.
pub const PURGE_DELAY_MS: std::ffi::c_long = 60_000;

/// Sets [`PURGE_DELAY_MS`] unless `MIMALLOC_PURGE_DELAY` in the environment says otherwise.
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: stores an integer in mimalloc's option table; no pointers, any thread.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The purge delay mimalloc uses now, in milliseconds.
    fn purge_delay_ms() -> std::ffi::c_long {
        // SAFETY: `mi_option_get` reads an integer from mimalloc's option table; no pointers.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY)
        }
    }

    /// The option number is mimalloc's purge delay: its default is 1,000 ms unless the
    /// environment of the test run set it, and `configure` replaces it.
    #[test]
    fn the_option_set_is_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay_ms(), 1_000, "mimalloc 3's default purge delay");
            configure();
            assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
        }
    }
}
