//! A thin layer over the CUDA driver API (through `cudarc`'s dynamically loaded bindings): one
//! context, the process's compiled module, raw device buffers and kernel launches on the
//! context's default stream. Raw pointers keep sub-buffer offsets (a row's KV cache slot, a
//! chunk of tokens) as plain arithmetic.

use crate::error::{GpuError, Result};
use crate::ptx;
use cudarc::driver::{result, sys, CudaContext};
use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Whether a CUDA driver library can be loaded on this machine (it may still have no device).
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

/// An opened CUDA device with the kernels compiled for its architecture (or the CPU emulation
/// of one that `srdd-gpu-emu` provides for tests).
pub struct Gpu {
    engine: Engine,
    name: String,
    cc: (i32, i32),
    sms: u32,
    allocated: AtomicUsize,
    dp4a: AtomicBool,
}

/// What runs the kernels.
enum Engine {
    /// A CUDA device: its context and the compiled module.
    Cuda {
        ctx: Arc<CudaContext>,
        funcs: HashMap<&'static str, sys::CUfunction>,
        _module: Module,
    },
    /// The kernels compiled for the host and run by a CPU emulation of the execution model;
    /// device memory is host memory.
    Emulated(EmuLaunch),
}

/// The emulator's launch entry: `(kernel name, grid x, y, z, block threads, parameters)`,
/// returning 0 on success (`srdd-gpu-emu`'s `srdd_emu_launch`).
pub type EmuLaunch =
    unsafe extern "C" fn(*const std::ffi::c_char, u32, u32, u32, u32, *mut *mut c_void) -> i32;

/// Alignment of the emulator's allocations (as cudaMalloc's).
const EMU_ALIGN: usize = 256;

struct Module(sys::CUmodule);

// SAFETY: a CUmodule and its CUfunctions are handles valid on every thread of the process
// while the module is loaded (the driver API is thread-safe).
unsafe impl Send for Gpu {}
// SAFETY: as above; every use binds the context first.
unsafe impl Sync for Gpu {}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: the module was loaded by `Gpu::open` and is unloaded once.
        let _ = unsafe { result::module::unload(self.0) };
    }
}

impl Gpu {
    /// Opens device `ordinal`: probes the driver first (so a machine without CUDA gets
    /// [`GpuError::NoDriver`] instead of a panic), creates the context and compiles the kernels
    /// with NVRTC for the device's architecture.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        if !driver_present() {
            return Err(GpuError::NoDriver);
        }
        result::init().map_err(|e| GpuError::Driver(format!("cuInit: {e:?}")))?;
        let count = result::device::get_count().map_err(|_| GpuError::NoDevice)?;
        if ordinal as i32 >= count {
            return Err(GpuError::NoDevice);
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| GpuError::Driver(format!("{e:?}")))?;
        let cc = ctx.compute_capability()?;
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let sms = ctx
            .attribute(sys::CUdevice_attribute_enum::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?
            as u32;
        let arch = format!("compute_{}{}", cc.0, cc.1);
        let src = ptx::compile(&arch)?;
        let image = CString::new(src).map_err(|_| GpuError::Compile("PTX holds a NUL".into()))?;
        // SAFETY: the context is current (CudaContext::new binds it) and the image is PTX text.
        let module = unsafe { result::module::load_data(image.as_ptr() as *const c_void) }
            .map_err(|e| GpuError::Driver(format!("loading the PTX: {e:?}")))?;
        let module = Module(module);
        let mut funcs = HashMap::new();
        for name in ptx::KERNELS {
            let c = CString::new(*name).expect("kernel names hold no NUL");
            // SAFETY: the module is loaded.
            let f = unsafe { result::module::get_function(module.0, c) }
                .map_err(|e| GpuError::Driver(format!("kernel {name}: {e:?}")))?;
            funcs.insert(*name, f);
        }
        Ok(Gpu {
            engine: Engine::Cuda {
                ctx,
                funcs,
                _module: module,
            },
            name,
            cc,
            sms,
            allocated: AtomicUsize::new(0),
            dp4a: AtomicBool::new(std::env::var("SRDD_CUDA_GEMM").is_ok_and(|v| v == "dp4a")),
        })
    }

    /// A device whose kernels run on the CPU through `launch` (the emulator of
    /// `srdd-gpu-emu`), reporting compute capability `cc`: the whole backend then runs, slowly,
    /// on machines without CUDA, and is tested there against the CPU engine.
    pub fn emulated(launch: EmuLaunch, cc: (i32, i32)) -> Gpu {
        Gpu {
            engine: Engine::Emulated(launch),
            name: "CPU emulation of a CUDA device".into(),
            cc,
            sms: 1,
            allocated: AtomicUsize::new(0),
            dp4a: AtomicBool::new(false),
        }
    }

    /// Threads of a block that reduces one row (quantizers, LayerNorm, GroupNorm statistics):
    /// 256 on a GPU; 64 on the emulation, where each thread is a fiber that switches at every
    /// barrier (two warps still exercise the cross-warp step of the reductions).
    pub(crate) fn reduce_threads(&self) -> u32 {
        if self.is_emulated() {
            64
        } else {
            256
        }
    }

    /// Whether the kernels run on the CPU emulation.
    pub fn is_emulated(&self) -> bool {
        matches!(self.engine, Engine::Emulated(_))
    }

    /// The device's name, as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    /// Streaming multiprocessors.
    pub fn multiprocessors(&self) -> u32 {
        self.sms
    }

    /// Whether the int8 GEMMs run on the tensor cores (`mma.sync` s8, sm_80 and later) rather
    /// than on `dp4a`. `SRDD_CUDA_GEMM=dp4a` forces the latter.
    pub fn int8_tensor_cores(&self) -> bool {
        self.cc.0 >= 8 && !self.dp4a.load(Ordering::Relaxed)
    }

    /// Makes the int8 GEMMs run on `dp4a` (`true`) or on the tensor cores where the device has
    /// them (`false`): the op checks compare both against the CPU.
    pub fn use_dp4a(&self, on: bool) {
        self.dp4a.store(on, Ordering::Relaxed);
    }

    /// Bytes allocated on the device so far (never decreases: a measure of uploads).
    pub fn allocated(&self) -> usize {
        self.allocated.load(Ordering::Relaxed)
    }

    /// Makes the context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        if let Engine::Cuda { ctx, .. } = &self.engine {
            ctx.bind_to_thread()?;
        }
        Ok(())
    }

    /// A zeroed device buffer of `len` values of `T`.
    pub fn alloc<T>(&self, len: usize) -> Result<DevBuf> {
        let bytes = (len * std::mem::size_of::<T>()).max(4);
        self.allocated.fetch_add(bytes, Ordering::Relaxed);
        if self.is_emulated() {
            let layout = Layout::from_size_align(bytes, EMU_ALIGN)
                .map_err(|_| GpuError::Driver(format!("allocating {bytes} bytes")))?;
            // SAFETY: the layout has a non-zero size; freed with the same layout on drop.
            let p = unsafe { std::alloc::alloc_zeroed(layout) };
            if p.is_null() {
                return Err(GpuError::Driver(format!("allocating {bytes} bytes")));
            }
            return Ok(DevBuf {
                ptr: p as u64,
                bytes,
                host: true,
            });
        }
        // SAFETY: the context is current (callers bind it); the buffer is freed on drop.
        let ptr = unsafe { result::malloc_sync(bytes) }
            .map_err(|e| GpuError::Driver(format!("allocating {bytes} bytes: {e:?}")))?;
        // SAFETY: `ptr` holds `bytes` bytes.
        unsafe { result::memset_d8_sync(ptr, 0, bytes) }?;
        Ok(DevBuf {
            ptr,
            bytes,
            host: false,
        })
    }

    /// A device copy of `data`.
    pub fn upload<T: Copy>(&self, data: &[T]) -> Result<DevBuf> {
        let b = self.alloc::<T>(data.len())?;
        self.write(&b, 0, data)?;
        Ok(b)
    }

    /// Copies `data` to `buf` at element offset `at` (waits for the copy).
    pub fn write<T: Copy>(&self, buf: &DevBuf, at: usize, data: &[T]) -> Result<()> {
        let size = std::mem::size_of::<T>();
        if data.is_empty() {
            return Ok(());
        }
        assert!(
            (at + data.len()) * size <= buf.bytes,
            "device write out of bounds"
        );
        let dst = buf.ptr + (at * size) as u64;
        if buf.host {
            // SAFETY: host memory of the buffer, the range inside it (asserted).
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst as *mut T, data.len()) };
            return Ok(());
        }
        // SAFETY: the range lies inside the buffer (asserted).
        unsafe { result::memcpy_htod_sync(dst, data) }?;
        Ok(())
    }

    /// Copies `out.len()` values from `buf` at element offset `at` (waits for every launch
    /// before it on the stream).
    pub fn read<T: Copy>(&self, buf: &DevBuf, at: usize, out: &mut [T]) -> Result<()> {
        let size = std::mem::size_of::<T>();
        if out.is_empty() {
            return Ok(());
        }
        assert!(
            (at + out.len()) * size <= buf.bytes,
            "device read out of bounds"
        );
        let src = buf.ptr + (at * size) as u64;
        if buf.host {
            // SAFETY: host memory of the buffer, the range inside it (asserted).
            unsafe { std::ptr::copy_nonoverlapping(src as *const T, out.as_mut_ptr(), out.len()) };
            return Ok(());
        }
        // SAFETY: the range lies inside the buffer (asserted).
        unsafe { result::memcpy_dtoh_sync(out, src) }?;
        Ok(())
    }

    /// Waits for every launch so far, and reports an asynchronous kernel fault.
    pub fn sync(&self) -> Result<()> {
        match &self.engine {
            Engine::Cuda { ctx, .. } => ctx
                .synchronize()
                .map_err(|e| GpuError::Driver(format!("a kernel failed: {e:?}"))),
            Engine::Emulated(_) => Ok(()),
        }
    }

    /// Launches kernel `name` on `grid × block` threads with `shared` dynamic shared bytes.
    pub(crate) fn launch(
        &self,
        name: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        shared: u32,
        args: &Args,
    ) -> Result<()> {
        let mut slots = args.0.clone();
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|v| v as *mut u64 as *mut c_void)
            .collect();
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let funcs = match &self.engine {
            Engine::Cuda { funcs, .. } => funcs,
            Engine::Emulated(launch) => {
                let c = CString::new(name).expect("kernel names hold no NUL");
                // SAFETY: as for the CUDA launch below; the emulator reads each parameter from
                // its slot with the kernel's own parameter type, and device memory is host
                // memory that outlives the (synchronous) call.
                let rc = unsafe {
                    launch(
                        c.as_ptr(),
                        grid.0,
                        grid.1,
                        grid.2,
                        block,
                        params.as_mut_ptr(),
                    )
                };
                return match rc {
                    0 => Ok(()),
                    rc => Err(GpuError::Driver(format!(
                        "emulated launch of {name} failed ({rc})"
                    ))),
                };
            }
        };
        let f = *funcs.get(name).expect("every kernel is loaded at open");
        if shared > 48 * 1024 {
            // SAFETY: `f` is a loaded kernel.
            unsafe {
                result::function::set_function_attribute(
                    f,
                    sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    shared as i32,
                )
            }?;
        }
        // SAFETY: the kernel's parameters are, in order, the values pushed by the wrapper in
        // `ops` that matches its signature in `kernels/*.cu` (pointers and 32-bit scalars, each
        // read from the low bytes of its 8-byte slot); buffers outlive the launch because every
        // result is read back with a synchronous copy before they are dropped.
        unsafe {
            result::launch_kernel(
                f,
                grid,
                (block, 1, 1),
                shared,
                std::ptr::null_mut(),
                &mut params,
            )
        }
        .map_err(|e| GpuError::Driver(format!("launching {name}: {e:?}")))
    }
}

/// A device allocation (host memory under the emulator), freed on drop.
pub struct DevBuf {
    ptr: u64,
    bytes: usize,
    host: bool,
}

impl DevBuf {
    /// Device address of element `at` of `T`.
    pub fn at<T>(&self, at: usize) -> u64 {
        debug_assert!(at * std::mem::size_of::<T>() <= self.bytes);
        self.ptr + (at * std::mem::size_of::<T>()) as u64
    }
    /// Device address of the first byte.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if self.host {
            let layout = Layout::from_size_align(self.bytes, EMU_ALIGN).expect("checked at alloc");
            // SAFETY: allocated by `Gpu::alloc` with this layout, freed once.
            unsafe { std::alloc::dealloc(self.ptr as *mut u8, layout) };
            return;
        }
        // SAFETY: allocated by `Gpu::alloc`, freed once.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// Kernel arguments, each in an 8-byte slot (pointers as `u64`, `int` and `float` in the low
/// four bytes: the launch reads each parameter's own size from its slot).
#[derive(Default, Clone)]
pub(crate) struct Args(Vec<u64>);

impl Args {
    pub(crate) fn new() -> Self {
        Args(Vec::with_capacity(16))
    }
    /// A device pointer.
    pub(crate) fn p(mut self, ptr: u64) -> Self {
        self.0.push(ptr);
        self
    }
    /// An `int`.
    pub(crate) fn i(mut self, v: usize) -> Self {
        self.0.push(v as u32 as u64);
        self
    }
    /// A `float`.
    pub(crate) fn f(mut self, v: f32) -> Self {
        self.0.push(v.to_bits() as u64);
        self
    }
}
