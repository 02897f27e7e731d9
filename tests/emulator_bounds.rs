//! Self-tests of the CPU emulator (`gpu_kernels::device::emu`), out-of-range accesses: the
//! kernels here are plain host functions written against `gpu_kernels::device`, launched
//! through `emu::launch`. An index past the end of a global buffer (scalar, 4-wide, or through
//! an offset view) or of static or dynamic shared memory, a bug the GPU would hide or turn into
//! silent corruption, is reported with the failing block and thread coordinates: this is the
//! "deliberately broken kernel is caught" check (an off-by-one `i <= n`). A failing thread
//! aborts its block promptly rather than leaving the others stuck at a barrier.
//!
//! One of the emulator's self-tests, split by what they cover (`emu_common/mod.rs` lists
//! them and holds their helpers).

mod emu_common;

use emu_common::{cfg, expect_err, global_thread, linear, reported_thread};
use gpu_kernels::device::emu;
use gpu_kernels::device::{
    Dim3, In, Out, atomic_add_u32, block_idx, dynamic_shared, sync_threads, thread_idx,
};
use gpu_kernels::shared_array;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Out-of-range global memory: the "deliberately broken kernel is caught" check.
// ---------------------------------------------------------------------------------------------

/// Correct: `y[i] = 2 x[i]` for `i < n`.
fn scale_kernel(x: In<f32>, y: Out<f32>, n: u32) {
    let i = global_thread();
    if i < n as usize {
        y.set(i, 2.0 * x.at(i));
    }
}

/// The classic off-by-one (`<=`): exactly one thread, `i == n`, reads past the end.
fn scale_kernel_off_by_one(x: In<f32>, y: Out<f32>, n: u32) {
    let i = global_thread();
    if i <= n as usize {
        y.set(i, 2.0 * x.at(i));
    }
}

#[test]
fn correct_kernel_runs_and_writes_every_element() {
    let n = 100;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut y = vec![f32::NAN; n];
    let (xi, yo) = (In::from_slice(&x), Out::from_slice(&mut y));
    emu::launch(linear(2, 64), || scale_kernel(xi, yo, n as u32)).unwrap();
    let want: Vec<f32> = x.iter().map(|v| 2.0 * v).collect();
    assert_eq!(y, want);
}

#[test]
fn out_of_range_global_read_is_reported_with_coordinates() {
    let n = 100;
    let x = vec![1.0f32; n];
    let mut y = vec![0.0f32; n + 1];
    let (xi, yo) = (In::from_slice(&x), Out::from_slice(&mut y));
    let msg = expect_err(emu::launch(linear(2, 64), || {
        scale_kernel_off_by_one(xi, yo, n as u32)
    }));
    // Global thread 100 = block 1, thread 36.
    assert_eq!(
        msg,
        "block (1, 0, 0) thread (36, 0, 0): out-of-bounds read of global memory: index 100, length 100"
    );
}

#[test]
fn out_of_range_global_write_is_reported_with_coordinates() {
    let n = 100;
    let x = vec![1.0f32; n + 1];
    let mut y = vec![0.0f32; n];
    let (xi, yo) = (In::from_slice(&x), Out::from_slice(&mut y));
    let msg = expect_err(emu::launch(linear(4, 32), || {
        scale_kernel_off_by_one(xi, yo, n as u32)
    }));
    // Global thread 100 = block 3, thread 4.
    assert_eq!(
        msg,
        "block (3, 0, 0) thread (4, 0, 0): out-of-bounds write of global memory: index 100, length 100"
    );
    // Every in-range element was still written correctly by the threads that ran.
    assert!(y.iter().all(|v| *v == 2.0));
}

/// A 3-D launch where only block (1, 2, 0), thread (3, 1, 1) indexes past the end.
fn one_bad_thread_3d(y: Out<u32>) {
    let (b, t) = (block_idx(), thread_idx());
    let bad = b == Dim3::new(1, 2, 0) && t == Dim3::new(3, 1, 1);
    let i = if bad { 1_000_000 } else { 0 };
    if bad || t == Dim3::new(0, 0, 0) {
        atomic_add_u32(y, i, 1);
    }
}

#[test]
fn out_of_range_reports_3d_block_and_thread() {
    let mut y = vec![0u32; 7];
    let yo = Out::from_slice(&mut y);
    let msg = expect_err(emu::launch(cfg((2, 3, 1), (4, 2, 2), 0), || {
        one_bad_thread_3d(yo)
    }));
    assert_eq!(
        msg,
        "block (1, 2, 0) thread (3, 1, 1): out-of-bounds atomic of global memory: index 1000000, length 7"
    );
}

fn vector_read_kernel(x: In<f32>, y: Out<f32>) {
    let i = 4 * global_thread();
    y.set4(i, x.at4(i));
}

#[test]
fn out_of_range_vector_access_and_offset_are_reported() {
    // 10 elements: thread 2's 4-wide read at 8..12 runs off the end.
    let x = vec![1.0f32; 10];
    let mut y = vec![0.0f32; 12];
    let (xi, yo) = (In::from_slice(&x), Out::from_slice(&mut y));
    let msg = expect_err(emu::launch(linear(1, 3), || vector_read_kernel(xi, yo)));
    assert!(
        msg.starts_with("block (0, 0, 0) thread (2, 0, 0): out-of-bounds 4-wide read")
            && msg.contains("index 8, length 10"),
        "{msg}"
    );

    let msg = expect_err(emu::launch(linear(1, 1), || {
        let _ = xi.offset(11);
    }));
    assert!(
        msg.contains("out-of-bounds offset of global memory: index 11, length 10"),
        "{msg}"
    );
    // An offset view is bounds-checked against what is left of the buffer.
    let msg = expect_err(emu::launch(linear(1, 1), || {
        let _ = xi.offset(6).at(4);
    }));
    assert!(
        msg.contains("out-of-bounds read of global memory: index 4, length 4"),
        "{msg}"
    );
}

/// One failing thread must not leave the rest of its block stuck at a barrier (which would
/// surface as a "deadlock"): the block is aborted promptly and the real error reported.
fn fail_before_barrier(x: In<f32>, y: Out<f32>) {
    let t = thread_idx().x as usize;
    let v = if t == 5 { x.at(1_000) } else { x.at(t) };
    sync_threads();
    y.set(t, v);
}

#[test]
fn a_failing_thread_aborts_its_block_promptly() {
    let x = vec![1.0f32; 64];
    let mut y = vec![0.0f32; 64];
    let (xi, yo) = (In::from_slice(&x), Out::from_slice(&mut y));
    let start = Instant::now();
    let msg = expect_err(emu::launch(linear(3, 64), || fail_before_barrier(xi, yo)));
    assert_eq!(
        msg,
        "block (0, 0, 0) thread (5, 0, 0): out-of-bounds read of global memory: index 1000, length 64"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Out-of-range shared memory, static and dynamic.
// ---------------------------------------------------------------------------------------------

shared_array!(fn oob_tile() -> [f32; 64]);

fn shared_read_past_end(y: Out<f32>) {
    let t = thread_idx().x as usize;
    oob_tile().store(t, t as f32);
    sync_threads();
    // Thread 63 reads element 64 of a 64-element array.
    y.set(t, oob_tile().load(t + 1));
}

fn shared_write_past_end() {
    let t = thread_idx().x as usize;
    oob_tile().store(t + 3, 0.0);
}

#[test]
fn out_of_range_shared_access_is_reported() {
    let mut y = vec![0.0f32; 64];
    let yo = Out::from_slice(&mut y);
    let msg = expect_err(emu::launch(linear(1, 64), || shared_read_past_end(yo)));
    assert_eq!(
        msg,
        "block (0, 0, 0) thread (63, 0, 0): out-of-bounds read of shared memory: index 64, length 64"
    );

    let msg = expect_err(emu::launch(linear(1, 64), shared_write_past_end));
    assert!(
        msg.contains("out-of-bounds write of shared memory") && msg.contains("length 64"),
        "{msg}"
    );
    // Which thread reports first is up to the scheduler; it is one of the three that overrun.
    let t = reported_thread(&msg);
    assert!((61..64).contains(&t), "{msg}");
    assert!(msg.contains(&format!("index {}", t + 3)), "{msg}");
}

#[test]
fn out_of_range_dynamic_shared_access_is_reported() {
    // The launch gives 256 bytes = 64 f32; asking for 65 elements is refused.
    let msg = expect_err(emu::launch(cfg((1, 1, 1), (1, 1, 1), 256), || {
        let _ = dynamic_shared::<f32>(65);
    }));
    assert!(
        msg.contains("kernel wants 260 bytes of dynamic shared memory, the launch gave 256"),
        "{msg}"
    );
    // Within the launch's size, indexing is checked against the length the kernel asked for.
    let msg = expect_err(emu::launch(cfg((1, 1, 1), (1, 1, 1), 256), || {
        dynamic_shared::<u32>(16).store(16, 1);
    }));
    assert!(
        msg.contains("out-of-bounds write of shared memory: index 16, length 16"),
        "{msg}"
    );
    // Sub-views are checked too.
    let msg = expect_err(emu::launch(cfg((1, 1, 1), (1, 1, 1), 256), || {
        let s = dynamic_shared::<f32>(64).offset(60);
        s.store(3, 0.0);
        let _ = s.load(4);
    }));
    assert!(
        msg.contains("out-of-bounds read of shared memory: index 4, length 4"),
        "{msg}"
    );
    let msg = expect_err(emu::launch(cfg((1, 1, 1), (1, 1, 1), 256), || {
        let _ = dynamic_shared::<f32>(64).offset(65);
    }));
    assert!(
        msg.contains("shared-memory offset 65 past length 64"),
        "{msg}"
    );
}
