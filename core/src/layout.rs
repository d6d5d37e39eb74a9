//! Arena layouts written once.
//!
//! Every group of buffers that one phase takes from the arena is declared with
//! [`arena_layout!`]: a struct of slices, each field with its element type, its length as an
//! expression of a sizes value, and a name that says its shape. The macro derives from that one
//! table the byte count (for [`crate::Plan`], `srdd-tools inspect` and the firmware's build
//! script), the per-buffer listing, and the code that takes the buffers from an
//! [`Arena`](crate::arena::Arena) in the same order, so the size and the taking cannot drift
//! apart.

/// When a planned buffer is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// From the start of the run to its end.
    Run,
    /// During one scale step (the region is reused by the next step and by the decoder).
    Step,
    /// During decoding (overlays the step scratch).
    Decode,
}

/// One planned buffer: its name (with its shape), bytes in the arena (rounded to
/// [`ARENA_ALIGN`](crate::arena::ARENA_ALIGN)) and lifetime.
pub type BufferInfo = (&'static str, usize, Lifetime);

/// Declares a group of arena buffers once; see the [module docs](self).
///
/// ```ignore
/// arena_layout! {
///     /// Doc of the struct.
///     pub(crate) struct Bufs<'s>(s: &Shape) {
///         /// Hidden states.
///         hidden: [f32; s.rows * s.n * s.c] = "hidden states (rows x tokens x C)",
///     }
/// }
/// ```
/// gives `Bufs::buffers(&shape) -> [(&str, usize); N]`, `Bufs::bytes(&shape)` and
/// `Bufs::take(&shape, &mut arena) -> Result<Bufs>`.
macro_rules! arena_layout {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident<$lt:lifetime>($s:ident: &$sty:ty) {
            $( $(#[$fmeta:meta])* $field:ident: [$ty:ty; $len:expr] = $label:literal, )*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name<$lt> {
            $( $(#[$fmeta])* pub(crate) $field: &$lt mut [$ty], )*
        }

        #[allow(dead_code)]
        impl<$lt> $name<$lt> {
            /// Every buffer's name and arena bytes, in the order [`Self::take`] takes them.
            pub(crate) fn buffers($s: &$sty) -> [(&'static str, usize); [$(stringify!($field)),*].len()] {
                [$( ($label, $crate::arena::bytes_of::<$ty>($len)) ),*]
            }

            /// Arena bytes of the whole group.
            pub(crate) fn bytes($s: &$sty) -> usize {
                Self::buffers($s).iter().map(|b| b.1).sum()
            }

            /// Takes every buffer from `ar`, in table order.
            pub(crate) fn take(
                $s: &$sty,
                ar: &mut $crate::arena::Arena<$lt>,
            ) -> $crate::error::Result<Self> {
                Ok($name { $( $field: ar.take::<$ty>($len)?, )* })
            }
        }
    };
}
pub(crate) use arena_layout;

/// Reads zeroed bytes as `bool`s (flags live in the arena as `u8`, which `bytemuck` can take).
pub(crate) fn zeroed_flags(bytes: &mut [u8]) -> &mut [bool] {
    bytes.iter_mut().for_each(|b| *b = 0);
    // SAFETY: every byte is 0, a valid `bool`; the slice keeps the borrow of `bytes`.
    unsafe { core::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<bool>(), bytes.len()) }
}
