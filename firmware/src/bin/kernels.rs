//! The Cortex-M4 kernel self-test (QEMU mps2-an386): the int8 GEMM on the DSP extension
//! (`Isa::ArmDsp`, `SMLAD`) must give exactly the scalar reference's i32 sums, and the int8
//! Linear and conv built on it exactly the reference's f32 bits. The host cannot run Arm code,
//! so `tests/tests/firmware.rs` runs this binary under QEMU and checks its last line.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use srdd_core::kernels::{
    act_row_len, conv2d_with, conv_scratch_len, gemm_i8_sums, linear_scratch_len, linear_with,
    pack_official, panels_len, Conv, ConvInput, ConvScratch, Isa, Linear, LinearScratch, Pad,
    PanelsI8, Weight,
};
use srdd_core::parallel::Sequential;

/// The kernels under test: the DSP ones on the Cortex-M4 (mps2-an386), the Helium ones on the
/// Cortex-M55 (mps3-an547).
#[cfg(not(an547))]
const FAST: Isa = Isa::ArmDsp;
#[cfg(an547)]
const FAST: Isa = Isa::ArmMve;

/// A tiny LCG (Knuth's MMIX constants): the test needs varied bytes, not good randomness.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }
    /// A code in [−127, 127] (what the quantizer gives), extremes often.
    fn act(&mut self) -> i8 {
        match self.next() % 8 {
            0 => 127,
            1 => -127,
            _ => ((self.next() % 255) as i32 - 127) as i8,
        }
    }
    /// Any weight byte, −128 included.
    fn weight(&mut self) -> i8 {
        match self.next() % 8 {
            0 => i8::MIN,
            1 => i8::MAX,
            _ => self.next() as i8,
        }
    }
    fn f32(&mut self) -> f32 {
        (self.next() % 2001) as f32 / 1000.0 - 1.0
    }
}

/// A buffer aligned as the model's tensors are (64 bytes, like `MODEL` in `main.rs`). The MVE
/// kernel gathers panel words only from a word-aligned panel and sends any other to the
/// reference loop, so weights in an `i8` static left at an odd address would test the
/// reference against itself.
#[repr(C, align(64))]
struct Aligned<T>(T);

const MAX_ROWS: usize = 40;
const MAX_K: usize = 1100;
static mut WQ: Aligned<[i8; panels_len(MAX_ROWS, MAX_K)]> =
    Aligned([0; panels_len(MAX_ROWS, MAX_K)]);
static mut WSRC: [i8; MAX_ROWS * MAX_K] = [0; MAX_ROWS * MAX_K];
// Aligned like the arena's activation rows; rows start at `t · lda`, so the odd `lda`s below
// still give the kernels unaligned rows (both kernels accept any row address).
static mut A: Aligned<[i8; 9 * (MAX_K + 8)]> = Aligned([0; 9 * (MAX_K + 8)]);
static mut OUT: [[i32; 9 * MAX_ROWS]; 2] = [[0; 9 * MAX_ROWS]; 2];

/// One GEMM case: `m` rows `lda` apart against `rows × k` weights, view from `o0`, channels
/// `c0..c1` of the view. Returns the sums compared.
fn gemm_case(
    rng: &mut Lcg,
    m: usize,
    k: usize,
    rows: usize,
    o0: usize,
    win: (usize, usize),
    lda: usize,
) -> usize {
    // SAFETY: the single-threaded entry is the only user of these statics.
    let (wq, wsrc, a, out) = unsafe {
        (
            &mut (*core::ptr::addr_of_mut!(WQ)).0,
            &mut *core::ptr::addr_of_mut!(WSRC),
            &mut (*core::ptr::addr_of_mut!(A)).0,
            &mut *core::ptr::addr_of_mut!(OUT),
        )
    };
    let (wsrc, wq) = (&mut wsrc[..rows * k], &mut wq[..panels_len(rows, k)]);
    wsrc.iter_mut().for_each(|v| *v = rng.weight());
    assert!(pack_official(wsrc, &[rows, k], wq));
    let scales = [1.0f32; MAX_ROWS];
    let mut w = PanelsI8::new(wq, &scales[..rows], rows, k, 1).unwrap();
    w.o0 = o0;
    let kp = act_row_len(k);
    let a = &mut a[..(m - 1) * lda + kp];
    a.iter_mut().for_each(|v| *v = rng.act());
    // The padding inputs of the last row stay zero as the layers keep them (the panel's padding
    // is zero anyway, so only real inputs matter).
    let n = m * (win.1 - win.0);
    let [ref_out, fast_out] = out;
    ref_out[..n].iter_mut().for_each(|v| *v = 0x5a5a_5a5a);
    fast_out[..n].iter_mut().for_each(|v| *v = -0x5a5a_5a5a);
    assert!(gemm_i8_sums(Isa::Scalar, a, lda, m, &w, win, ref_out));
    assert!(gemm_i8_sums(FAST, a, lda, m, &w, win, fast_out));
    if ref_out[..n] != fast_out[..n] {
        let i = (0..n).find(|&i| ref_out[i] != fast_out[i]).unwrap();
        hprintln!(
            "FAIL gemm m={} k={} rows={} o0={} c={}..{} lda={}: sum {} scalar {} {:?} {}",
            m,
            k,
            rows,
            o0,
            win.0,
            win.1,
            lda,
            i,
            ref_out[i],
            FAST,
            fast_out[i]
        );
        debug::exit(debug::EXIT_FAILURE);
    }
    n
}

static mut CW: [i8; 24 * 20 * 9] = [0; 24 * 20 * 9];
static mut CQ: Aligned<[i8; 3 * panels_len(24, 3 * 20)]> = Aligned([0; 3 * panels_len(24, 3 * 20)]);
static mut CX: [f32; 20 * 13 * 11] = [0.0; 20 * 13 * 11];
static mut CY: [[f32; 24 * 13 * 11]; 2] = [[0.0; 24 * 13 * 11]; 2];
static mut SCR_F: [f32; 8192] = [0.0; 8192];
static mut SCR_I: [i8; 16384] = [0; 16384];

/// The int8 Linear and the stride-1 and stride-2 int8 conv (overlapping GEMM rows), on the
/// scalar reference and on the DSP kernel: the f32 outputs must have the same bits.
fn layer_cases(rng: &mut Lcg) -> usize {
    // SAFETY: the single-threaded entry is the only user of these statics.
    let (cw, cq, cx, cy, sf, si) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(CW),
            &mut (*core::ptr::addr_of_mut!(CQ)).0,
            &mut *core::ptr::addr_of_mut!(CX),
            &mut *core::ptr::addr_of_mut!(CY),
            &mut *core::ptr::addr_of_mut!(SCR_F),
            &mut *core::ptr::addr_of_mut!(SCR_I),
        )
    };
    let mut compared = 0;
    let scales: [f32; 24] = core::array::from_fn(|_| rng.f32() * 0.01 + 0.02);
    let bias: [f32; 24] = core::array::from_fn(|_| rng.f32());
    // Conv: cin 20, cout 24, 3 × 3, 13 × 11 map, strides 1 and 2, pad 1.
    let (cin, cout, h, wd) = (20, 24, 13, 11);
    cw.iter_mut().for_each(|v| *v = rng.weight());
    assert!(pack_official(cw, &[cout, cin, 3, 3], cq));
    cx.iter_mut().for_each(|v| *v = rng.f32());
    let wp = PanelsI8::new(cq, &scales, cout, 3 * cin, 3).unwrap();
    let conv = Conv {
        w: Weight::I8(wp),
        b: &bias,
        cin,
        cout,
        k: 3,
    };
    for stride in [1, 2] {
        let input = ConvInput {
            x: cx,
            h,
            w: wd,
            stride,
            pad: Pad::same(1),
        };
        let (ho, wo) = input.out_sides(3);
        // The padded map's sides: enough for either path.
        let (nu, nr, nf) = conv_scratch_len(cin, h + 2, wd + 2, wo, 3);
        assert!(nu + nr <= si.len() && nf <= sf.len());
        for (isa, y) in [Isa::Scalar, FAST].into_iter().zip(cy.iter_mut()) {
            let (unfold, qrow) = si.split_at_mut(nu);
            let mut s = ConvScratch {
                unfold,
                qrow: &mut qrow[..nr],
                row_scale: &mut sf[..nf],
            };
            conv2d_with(isa, &Sequential, &input, &conv, y, Some(&mut s));
        }
        let n = cout * ho * wo;
        if cy[0][..n]
            .iter()
            .zip(&cy[1][..n])
            .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            hprintln!("FAIL conv stride {}", stride);
            debug::exit(debug::EXIT_FAILURE);
        }
        compared += n;
    }
    // Linear: 5 rows of 60 inputs to 24 outputs (the first conv weight's rows as the matrix),
    // with one-pass and two-pass ("a16") activations.
    for act16 in [false, true] {
        let w = PanelsI8::new(&cq[..panels_len(24, 60)], &scales, 24, 60, 1).unwrap();
        let l = Linear {
            w: Weight::I8(w.with_act16(act16)),
            b: Some(&bias),
            in_dim: 60,
            out_dim: 24,
        };
        for n in 1..=5 {
            let (nf, ni) = linear_scratch_len(n, 60);
            for (isa, y) in [Isa::Scalar, FAST].into_iter().zip(cy.iter_mut()) {
                let mut s = LinearScratch {
                    f: &mut sf[..nf],
                    q: &mut si[..ni],
                };
                linear_with(isa, &Sequential, &cx[..n * 60], n, &l, y, &mut s);
            }
            if cy[0][..n * 24]
                .iter()
                .zip(&cy[1][..n * 24])
                .any(|(a, b)| a.to_bits() != b.to_bits())
            {
                hprintln!("FAIL linear n={} a16 {}", n, act16);
                debug::exit(debug::EXIT_FAILURE);
            }
            compared += n * 24;
        }
    }
    compared
}

#[entry]
fn main() -> ! {
    if !FAST.supported() || Isa::active() != FAST {
        hprintln!(
            "FAIL: {:?} is not the active ISA ({:?})",
            FAST,
            Isa::active()
        );
        debug::exit(debug::EXIT_FAILURE);
    }
    let mut rng = Lcg(0x5eed);
    let (mut cases, mut sums) = (0, 0);
    // k around the 4-input groups and the 512-input chunk of the kernel; rows around the
    // 16-channel panels; m around the 4-row tile.
    for k in [1, 3, 4, 5, 17, 63, 130, 511, 512, 513, 515, 1030, MAX_K] {
        for (rows, o0, win) in [
            (1, 0, (0, 1)),
            (7, 0, (0, 7)),
            (16, 0, (3, 16)),
            (17, 0, (0, 17)),
            (33, 0, (5, 29)),
            (40, 9, (2, 31)),
        ] {
            for m in 1..=9 {
                let kp = act_row_len(k);
                // Separate rows, rows with a gap, and overlapping rows (as the stride-1 conv).
                for lda in [kp, kp + 3, (k / 3).max(1)] {
                    sums += gemm_case(&mut rng, m, k, rows, o0, win, lda);
                    cases += 1;
                }
            }
        }
    }
    let layers = layer_cases(&mut rng);
    // The FPU's f16 → f32 (`VCVTB`, the precision plan's f16 weights) against `half`'s portable
    // conversion, on every finite half.
    let mut halves = 0;
    for bits in 0..=u16::MAX {
        let h = half::f16::from_bits(bits);
        if !h.is_finite() {
            continue;
        }
        let (got, want) = (srdd_core::kernels::dot::f16_to_f32(h), h.to_f32());
        if got.to_bits() != want.to_bits() {
            hprintln!("FAIL f16 {:#06x}: {} vs {}", bits, got, want);
            debug::exit(debug::EXIT_FAILURE);
        }
        halves += 1;
    }
    hprintln!("f16 ok: {} finite halves convert exactly", halves);
    hprintln!(
        "kernels ok: {} GEMM cases ({} sums) and {} Linear/conv outputs bit-identical, scalar vs {:?}",
        cases,
        sums,
        layers,
        FAST
    );
    debug::exit(debug::EXIT_SUCCESS);
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("PANIC: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
