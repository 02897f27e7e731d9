//! What `kernel!` gives the host, checked without a GPU: a kernel of any arity (none, and
//! fourteen parameters of every kind) gets a typed `launch` that runs the kernel function on
//! the emulator and, on the CUDA path, hands the launcher one parameter slot per parameter with
//! the right bits; its `ENTRY` is registered beside gpu-kernels' own (what build.rs checks the
//! PTX against and the CUDA loader loads).

use gpu_kernels::device::entry::{self, Arg, Entry, Launcher, ParamKind};
use gpu_kernels::device::{Dim3, In, Out, emu, thread_idx};
use gpu_kernels::kernel;
use std::cell::RefCell;

kernel! {
    /// `y[t] = x[t]·f + Σ words + i` for each thread `t`, from fourteen parameters.
    pub fn fourteen(
        x: In<f32>,
        ids: In<u32>,
        y: Out<f32>,
        w0: u32,
        w1: u32,
        w2: u32,
        w3: u32,
        w4: u32,
        w5: u32,
        w6: u32,
        w7: u32,
        w8: u32,
        f: f32,
        i: i32
    ) {
        let t = thread_idx().x as usize;
        let words = w0 + w1 + w2 + w3 + w4 + w5 + w6 + w7 + w8 + ids.at(t);
        y.set(t, x.at(t) * f + words as f32 + i as f32);
    }
}

kernel! {
    /// No parameters at all.
    pub fn nothing() {}
}

kernel! {
    threads = 64;
    /// Built for blocks of exactly 64 threads.
    pub fn fixed_block(y: Out<u32>) {
        y.set(thread_idx().x as usize, 1);
    }
}

/// A launcher that runs on the emulator (one block of `Config` threads) or records the CUDA
/// parameter slots it is given.
struct Recorder {
    emulate: bool,
    cuda: RefCell<Vec<(&'static str, Vec<u64>)>>,
}

// SAFETY: the CUDA path only records; the emulated path runs over slices the test owns.
unsafe impl Launcher for Recorder {
    type Config = u32;
    type Error = String;
    fn is_emulator(&self) -> bool {
        self.emulate
    }
    fn launch_cuda(&self, entry: &'static Entry, _: u32, params: &[u64]) -> Result<(), String> {
        self.cuda.borrow_mut().push((entry.name, params.to_vec()));
        Ok(())
    }
    fn launch_emulated(
        &self,
        _: &'static Entry,
        threads: u32,
        kernel: &(dyn Fn() + Sync),
    ) -> Result<(), String> {
        let cfg = emu::LaunchConfig {
            grid: Dim3::new(1, 1, 1),
            block: Dim3::new(threads, 1, 1),
            dynamic_shared_bytes: 0,
        };
        emu::launch(cfg, kernel).map_err(|e| e.0)
    }
}

/// Host slices as kernel pointers; their "device address" is the slice's address.
struct Read<'a, T>(&'a [T]);
struct Write<'a, T>(&'a RefCell<Vec<T>>);

// SAFETY: the slices outlive the (synchronous) launch; the CUDA path only records addresses.
unsafe impl<T: Copy> Arg<Recorder, In<T>> for Read<'_, T> {
    fn cuda(&self, _: &Recorder) -> Result<u64, String> {
        Ok(self.0.as_ptr() as u64)
    }
    fn emulated(&self, _: &Recorder) -> Result<In<T>, String> {
        Ok(In::from_slice(self.0))
    }
}
// SAFETY: as above; the emulated launch is the only writer while it runs.
unsafe impl<T: Copy> Arg<Recorder, Out<T>> for Write<'_, T> {
    fn cuda(&self, _: &Recorder) -> Result<u64, String> {
        Ok(self.0.borrow().as_ptr() as u64)
    }
    fn emulated(&self, _: &Recorder) -> Result<Out<T>, String> {
        Ok(Out::from_slice(&mut self.0.borrow_mut()))
    }
}

fn recorder(emulate: bool) -> Recorder {
    Recorder {
        emulate,
        cuda: RefCell::new(Vec::new()),
    }
}

static X: [f32; 4] = [1.5, -2.0, 0.25, 8.0];
static IDS: [u32; 4] = [10, 20, 30, 40];

fn launch_fourteen(l: &Recorder, y: &RefCell<Vec<f32>>) -> Result<(), String> {
    let (x, ids, out) = (Read(&X), Read(&IDS), Write(y));
    fourteen::launch(l, 4, x, ids, out, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0.5, -3)
}

#[test]
fn a_fourteen_parameter_kernel_runs_on_the_emulator() {
    let y = RefCell::new(vec![f32::NAN; 4]);
    launch_fourteen(&recorder(true), &y).unwrap();
    let want: Vec<f32> = (0..4)
        .map(|t| X[t] * 0.5 + (45 + IDS[t]) as f32 - 3.0)
        .collect();
    assert_eq!(*y.borrow(), want);
    nothing::launch(&recorder(true), 1).unwrap();
}

#[test]
fn the_cuda_path_gets_one_slot_per_parameter_with_its_bits() {
    let l = recorder(false);
    let y = RefCell::new(vec![f32::NAN; 4]);
    launch_fourteen(&l, &y).unwrap();
    nothing::launch(&l, 1).unwrap();
    let calls = l.cuda.borrow();
    let y_addr = y.borrow().as_ptr() as u64;
    let mut want = vec![X.as_ptr() as u64, IDS.as_ptr() as u64, y_addr];
    want.extend(1..=9);
    want.push(u64::from(0.5f32.to_bits()));
    want.push(u64::from((-3i32) as u32));
    assert_eq!(calls[0], ("fourteen", want));
    assert_eq!(calls[1], ("nothing", vec![]));
    assert!(
        y.borrow().iter().all(|v| v.is_nan()),
        "the CUDA path ran nothing here"
    );
}

#[test]
fn entries_are_registered_with_their_parameters() {
    let kinds: Vec<ParamKind> = fourteen::ENTRY.params.iter().map(|p| p.1).collect();
    let mut want = vec![ParamKind::Pointer; 3];
    want.extend([ParamKind::U32; 9]);
    want.extend([ParamKind::F32, ParamKind::I32]);
    assert_eq!(kinds, want);
    assert_eq!(fourteen::ENTRY.params[12].0, "f");
    assert!(nothing::ENTRY.params.is_empty());
    assert!(fourteen::ENTRY.file.ends_with("kernel_launch.rs"));
    assert_eq!(fixed_block::ENTRY.threads, Some(64));
    assert_eq!(fourteen::ENTRY.threads, None);
    let y = RefCell::new(vec![0u32; 64]);
    fixed_block::launch(&recorder(true), 64, Write(&y)).unwrap();
    assert!(y.borrow().iter().all(|&v| v == 1));

    let names: Vec<&str> = entry::entries().iter().map(|e| e.name).collect();
    for name in [
        "fourteen",
        "nothing",
        "rms_norm_rows",
        "gemm_wgmma_f32",
        "flash_attention_hd128",
        "moe_combine",
    ] {
        assert!(names.contains(&name), "{name} not registered: {names:?}");
    }
    assert!(names.is_sorted(), "entries() is sorted by name");
}

/// `registers_fit`, the const check behind every `lower_registers` / `raise_registers` split:
/// a 384-thread block has 168 registers per thread at launch, so the splits kiln runs fit and
/// the one that hung the H200 (a 32-register producer beside two 240-register consumers) does
/// not; a budget list must cover the block's warpgroups exactly.
#[test]
fn register_splits_are_checked_against_the_launch_pool() {
    use gpu_kernels::device::registers_fit;
    assert!(registers_fit(384, &[24, 240, 240]));
    assert!(registers_fit(384, &[40, 232, 232]));
    assert!(!registers_fit(384, &[32, 240, 240]));
    assert!(!registers_fit(384, &[40, 240, 240]));
    // 256 threads: 255 registers at most, 248 in whole eights.
    assert!(registers_fit(256, &[248, 248]));
    assert!(!registers_fit(256, &[256, 256]));
    assert!(!registers_fit(384, &[24, 240]));
}
