//! # srdd-display
//!
//! Streams the VQVAE decoder's rows straight to an SPI display, so a microcontroller never holds
//! the image: the decoder's row sink calls [`St7735::write_row`]. The command sequence is the
//! ST7735 / ILI9341 family's (sleep out, 16-bit colour, column/row address set, memory write);
//! pixels go out as big-endian RGB565. Only `embedded_hal::spi::SpiDevice` is needed; the
//! data/command line is a `embedded_hal::digital::OutputPin`.
#![no_std]
#![deny(missing_docs)]

use embedded_hal::digital::OutputPin;
use embedded_hal::spi::SpiDevice;

/// ST7735 / ILI9341 commands used here.
pub mod cmd {
    /// Software reset.
    pub const SWRESET: u8 = 0x01;
    /// Sleep out.
    pub const SLPOUT: u8 = 0x11;
    /// Interface pixel format.
    pub const COLMOD: u8 = 0x3A;
    /// Display on.
    pub const DISPON: u8 = 0x29;
    /// Column address set.
    pub const CASET: u8 = 0x2A;
    /// Row address set.
    pub const RASET: u8 = 0x2B;
    /// Memory write.
    pub const RAMWR: u8 = 0x2C;
}

/// Errors of the bus or the data/command pin.
#[derive(Debug)]
pub enum DisplayError<S, P> {
    /// SPI error.
    Spi(S),
    /// Data/command pin error.
    Pin(P),
    /// A row longer than the window or than the conversion buffer.
    RowTooLong,
}

/// Converts 8-bit RGB to big-endian RGB565.
pub fn rgb565(r: u8, g: u8, b: u8) -> [u8; 2] {
    let v = ((r as u16 & 0xF8) << 8) | ((g as u16 & 0xFC) << 3) | (b as u16 >> 3);
    v.to_be_bytes()
}

/// A display on an SPI device with a data/command pin.
pub struct St7735<SPI, DC> {
    spi: SPI,
    dc: DC,
    width: u16,
}

impl<SPI: SpiDevice, DC: OutputPin> St7735<SPI, DC> {
    /// Wraps the bus; call [`St7735::init`] next.
    pub fn new(spi: SPI, dc: DC) -> Self {
        St7735 { spi, dc, width: 0 }
    }

    fn command(&mut self, c: u8, args: &[u8]) -> Result<(), DisplayError<SPI::Error, DC::Error>> {
        self.dc.set_low().map_err(DisplayError::Pin)?;
        self.spi.write(&[c]).map_err(DisplayError::Spi)?;
        if !args.is_empty() {
            self.dc.set_high().map_err(DisplayError::Pin)?;
            self.spi.write(args).map_err(DisplayError::Spi)?;
        }
        Ok(())
    }

    /// Reset, wake, 16-bit colour, display on.
    pub fn init(&mut self) -> Result<(), DisplayError<SPI::Error, DC::Error>> {
        self.command(cmd::SWRESET, &[])?;
        self.command(cmd::SLPOUT, &[])?;
        self.command(cmd::COLMOD, &[0x05])?;
        self.command(cmd::DISPON, &[])
    }

    /// Opens a `width × height` window at the origin and starts a memory write; rows follow.
    pub fn begin_image(
        &mut self,
        width: u16,
        height: u16,
    ) -> Result<(), DisplayError<SPI::Error, DC::Error>> {
        let (w, h) = (
            width.saturating_sub(1).to_be_bytes(),
            height.saturating_sub(1).to_be_bytes(),
        );
        self.command(cmd::CASET, &[0, 0, w[0], w[1]])?;
        self.command(cmd::RASET, &[0, 0, h[0], h[1]])?;
        self.command(cmd::RAMWR, &[])?;
        self.dc.set_high().map_err(DisplayError::Pin)?;
        self.width = width;
        Ok(())
    }

    /// Sends one decoder row (interleaved RGB floats in [−1, 1]) as RGB565, in chunks of 32
    /// pixels (no buffer larger than 64 bytes).
    pub fn write_row(&mut self, row: &[f32]) -> Result<(), DisplayError<SPI::Error, DC::Error>> {
        if row.len() / 3 > self.width as usize {
            return Err(DisplayError::RowTooLong);
        }
        let mut buf = [0u8; 64];
        for chunk in row.chunks(3 * 32) {
            let mut n = 0;
            for px in chunk.chunks_exact(3) {
                let [hi, lo] = rgb565(to_u8(px[0]), to_u8(px[1]), to_u8(px[2]));
                buf[n] = hi;
                buf[n + 1] = lo;
                n += 2;
            }
            self.spi.write(&buf[..n]).map_err(DisplayError::Spi)?;
        }
        Ok(())
    }

    /// Gives the bus and pin back.
    pub fn release(self) -> (SPI, DC) {
        (self.spi, self.dc)
    }
}

/// The same 8-bit mapping as the PNG writer.
fn to_u8(v: f32) -> u8 {
    srdd_core::vae::to_rgb8(v)
}
