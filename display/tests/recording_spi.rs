//! The display driver against a recording SPI device: the pixel bytes sent after RAMWR must be
//! exactly the RGB565 form of the PNG the host writes for the same sample.

use embedded_hal::digital::{ErrorType as PinErrorType, OutputPin};
use embedded_hal::spi::{ErrorType, Operation, SpiDevice};
use srdd_core::aligned::AlignedBytes;
use srdd_core::generate::{Generator, Plan, SampleOptions};
use srdd_core::{Model, NoHook, Schedule};
use srdd_display::{cmd, rgb565, St7735};
use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;

/// Every byte written, tagged with the data/command level at the time.
#[derive(Default)]
struct Log {
    dc_high: bool,
    bytes: Vec<(bool, u8)>,
}

struct RecordingSpi(Rc<RefCell<Log>>);
struct DcPin(Rc<RefCell<Log>>);

impl ErrorType for RecordingSpi {
    type Error = Infallible;
}
impl SpiDevice for RecordingSpi {
    fn transaction(&mut self, ops: &mut [Operation<'_, u8>]) -> Result<(), Infallible> {
        let mut log = self.0.borrow_mut();
        let dc = log.dc_high;
        for op in ops {
            match op {
                Operation::Write(w) => log.bytes.extend(w.iter().map(|b| (dc, *b))),
                Operation::Transfer(r, w) => {
                    log.bytes.extend(w.iter().map(|b| (dc, *b)));
                    r.fill(0);
                }
                Operation::TransferInPlace(b) => log.bytes.extend(b.iter().map(|x| (dc, *x))),
                Operation::Read(r) => r.fill(0),
                Operation::DelayNs(_) => {}
            }
        }
        Ok(())
    }
}
impl PinErrorType for DcPin {
    type Error = Infallible;
}
impl OutputPin for DcPin {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.0.borrow_mut().dc_high = false;
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        self.0.borrow_mut().dc_high = true;
        Ok(())
    }
}

#[test]
fn streamed_rows_match_the_png_pixels() {
    let bytes = AlignedBytes::read(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../models/default-int8.srdd").as_ref(),
    )
    .unwrap();
    let model = Model::from_bytes(bytes.as_bytes()).unwrap();
    let mut opts = SampleOptions::for_model(&model, 2);
    opts.seed = 11;
    let sched = Schedule::full(&model.config);
    let plan = Plan::new(&model.config, &opts, &sched).unwrap();
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut gen = Generator::new(&model, opts, sched, arena.as_bytes_mut()).unwrap();
    gen.run(&mut NoHook).unwrap();
    let side = model.config.image_side();

    let log = Rc::new(RefCell::new(Log::default()));
    let mut disp = St7735::new(RecordingSpi(log.clone()), DcPin(log.clone()));
    disp.init().unwrap();
    disp.begin_image(side as u16, side as u16).unwrap();
    // The same decode feeds the display and the PNG.
    let mut rgb = vec![0u8; side * side * 3];
    gen.decode(&mut |y, row| {
        disp.write_row(row).unwrap();
        for (o, v) in rgb[y * side * 3..(y + 1) * side * 3].iter_mut().zip(row) {
            *o = srdd_core::vae::to_rgb8(*v);
        }
    })
    .unwrap();

    // PNG round trip, as the CLI writes it.
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, side as u32, side as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(&rgb).unwrap();
    }
    let mut reader = png::Decoder::new(png_bytes.as_slice()).read_info().unwrap();
    let mut pixels = vec![0u8; reader.output_buffer_size()];
    reader.next_frame(&mut pixels).unwrap();
    let want: Vec<u8> = pixels
        .chunks_exact(3)
        .flat_map(|p| rgb565(p[0], p[1], p[2]))
        .collect();

    let log = log.borrow();
    // Commands are sent with D/C low; RAMWR is the last command; everything after it is pixels.
    let commands: Vec<u8> = log
        .bytes
        .iter()
        .filter(|(dc, _)| !dc)
        .map(|(_, b)| *b)
        .collect();
    assert_eq!(
        commands,
        vec![
            cmd::SWRESET,
            cmd::SLPOUT,
            cmd::COLMOD,
            cmd::DISPON,
            cmd::CASET,
            cmd::RASET,
            cmd::RAMWR
        ]
    );
    let ramwr = log
        .bytes
        .iter()
        .rposition(|(dc, b)| !dc && *b == cmd::RAMWR)
        .unwrap();
    let sent: Vec<u8> = log.bytes[ramwr + 1..]
        .iter()
        .map(|(dc, b)| {
            assert!(dc, "pixel data must be sent with D/C high");
            *b
        })
        .collect();
    assert_eq!(sent.len(), side * side * 2);
    assert_eq!(sent, want, "display bytes differ from the PNG's pixels");
}
