//! The `uniqlog` binary.

mod cli;

/// glibc malloc kept freed memory in per-thread arenas: under load a node's RSS rose by about
/// 80 MiB at every snapshot while its heap stayed flat at ~265 MiB (heaptrack). mimalloc
/// returns it. The simulator keeps the system allocator; it measures no memory.
#[cfg(not(madsim))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    #[cfg(all(not(madsim), target_os = "linux"))]
    no_huge_pages();
    cli::main()
}

/// mimalloc returns freed memory to the kernel and takes it back as load comes and goes; on
/// transparent huge pages every page taken back is a fault that zeroes 2 MiB. That was 5-9 %
/// of a node's CPU at 64 clients, and without them a request costs about 8 % less server CPU
/// (bench/README.md, issue 25 step 6). The `no_thp` build of mimalloc stops asking for huge
/// pages; this also keeps kernels set to use them for everything (`always`) from imposing
/// them. Called before any thread starts.
#[cfg(all(not(madsim), target_os = "linux"))]
fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}
