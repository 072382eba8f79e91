//! Images to tensors: decode, orient, convert colour, resize, crop and normalize.
//!
//! The geometry (resized size, crop offsets, padding) and the arithmetic follow torchvision's
//! `PILToTensor → Resize(antialias=True) → CenterCrop → ToDtype(scale=True) → Normalize`, so a model
//! sees what it saw in training. JPEGs decode with libjpeg-turbo ([`crate::jpeg`]), as in Pillow,
//! the other formats with the `image` crate (png, image-webp, gif, bmp); resampling uses
//! `fast_image_resize`, whose convolution filters are Pillow's, which torchvision's antialiased
//! resize reproduces. This module knows nothing of models, Python or Lambda.

use std::cell::RefCell;
use std::io::Cursor;

use fast_image_resize as fir;
use image::metadata::Orientation;
use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageReader};
use ndarray::ArrayView3;

use crate::error::{Error, Limit, Result};
use crate::jpeg;
use crate::manifest::{Color, Crop, Decode, ImageInput, Interpolation};

/// Default for `LAMBDATORCH_MAX_IMAGE_PIXELS`: 40 megapixels, above any phone camera.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 40_000_000;

/// What the `image` crate's decoders may allocate beyond the pixel buffer (its default): PNG
/// text chunks, ICC profiles, animation frames.
const DECODER_MAX_ALLOC: u64 = 512 * 1024 * 1024;

/// An image as the caller gave it.
#[derive(Debug, Clone, Copy)]
pub enum ImageSource<'a> {
    /// Encoded bytes: JPEG, PNG, WebP, GIF (first frame) or BMP.
    Encoded(&'a [u8]),
    /// Decoded pixels, height x width x channels (1: gray, 3: RGB, 4: RGBA), uint8.
    Array(ArrayView3<'a, u8>),
}

/// Decoded 8-bit pixels in the channel layout the model wants (1 or 3 channels, RGB order),
/// possibly at a reduced scale (`decode: "fast"`).
#[derive(Debug, Clone)]
pub struct Pixels {
    width: u32,
    height: u32,
    channels: usize,
    data: Vec<u8>,
    /// The image's size at full resolution, after orientation: the geometry torchvision computes
    /// its resize and crop from.
    full: (u32, u32),
    /// Full-resolution pixels per decoded pixel: 1, or the JPEG's DCT scaling denominator.
    denominator: u32,
}

impl Pixels {
    fn new(width: u32, height: u32, channels: usize, data: Vec<u8>) -> Pixels {
        Pixels {
            width,
            height,
            channels,
            data,
            full: (width, height),
            denominator: 1,
        }
    }
}

/// Reads the header, refuses images over `max_pixels` before any pixel buffer is allocated, then
/// decodes and applies the EXIF orientation. For the formats other than JPEG (the `image` crate).
fn decode_other(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage> {
    if bytes.is_empty() {
        return Err(Error::InvalidImage("the image is empty (0 bytes)".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|err| Error::InvalidImage(format!("cannot read the image: {err}")))?;
    if reader.format().is_none() || jpeg::is_jpeg(bytes) {
        return Err(Error::InvalidImage(format!(
            "unrecognized image format (starts with {}); send JPEG, PNG, WebP, GIF or BMP",
            hex_prefix(bytes)
        )));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(DECODER_MAX_ALLOC);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(invalid_image)?;
    let (width, height) = decoder.dimensions();
    check_pixels(width, height, max_pixels)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(invalid_image)?;
    image.apply_orientation(orientation);
    Ok(image)
}

fn invalid_image(err: image::ImageError) -> Error {
    match err {
        image::ImageError::Limits(_) => Error::TooLarge {
            limit: Limit::ImageDecoderBytes,
            actual: 0,
            max: DECODER_MAX_ALLOC,
        },
        other => Error::InvalidImage(format!("cannot decode the image: {other}")),
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn check_pixels(width: u32, height: u32, max_pixels: u64) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::InvalidImage(format!(
            "the image has no pixels ({width}x{height})"
        )));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(Error::ImageTooLarge {
            width,
            height,
            max: max_pixels,
        });
    }
    Ok(())
}

thread_local! {
    /// This thread's libjpeg-turbo decompressor, created on first use.
    static JPEG_DECODER: RefCell<Option<jpeg::Decoder>> = const { RefCell::new(None) };
    /// Pixel buffers of earlier images, reused so that a request does not page-fault its way
    /// through tens of megabytes of fresh memory. At most [`SPARE_BUFFERS`] per thread, each as
    /// large as the largest image this thread has seen (bounded by the pixel limit).
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// fast_image_resize's scratch space, likewise reused.
    static RESIZER: RefCell<fir::Resizer> = RefCell::new(fir::Resizer::new());
}

/// Spare pixel buffers kept per thread: decode, colour conversion or rotation, horizontal pass.
const SPARE_BUFFERS: usize = 3;

fn spare_buffer() -> Vec<u8> {
    SPARE.with_borrow_mut(Vec::pop).unwrap_or_default()
}

fn recycle(buffer: Vec<u8>) {
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < SPARE_BUFFERS {
            spare.push(buffer);
        }
    });
}

/// Decodes a JPEG with libjpeg-turbo, at 1/`denominator(width, height)` scale (oriented size),
/// in the model's colour layout, with the EXIF orientation applied.
fn decode_jpeg(
    bytes: &[u8],
    color: Color,
    max_pixels: u64,
    denominator: impl Fn(u32, u32, bool) -> u32,
) -> Result<Pixels> {
    if !jpeg::has_end_marker(bytes) {
        return Err(Error::InvalidImage(
            "the JPEG is truncated (no end-of-image marker after its last scan)".into(),
        ));
    }
    JPEG_DECODER.with_borrow_mut(|slot| {
        let decoder = match slot {
            Some(decoder) => decoder,
            None => slot.insert(jpeg::Decoder::new()?),
        };
        let orientation = jpeg::orientation(bytes);
        let swaps = matches!(
            orientation,
            Orientation::Rotate90
                | Orientation::Rotate270
                | Orientation::Rotate90FlipH
                | Orientation::Rotate270FlipH
        );
        let mut full = (0, 0);
        let mut data = spare_buffer();
        let decoded = decoder.decode(bytes, &mut data, |header| {
            check_pixels(header.width, header.height, max_pixels)?;
            full = if swaps {
                (header.height, header.width)
            } else {
                (header.width, header.height)
            };
            let layout = match (header.layout, color) {
                (jpeg::Layout::Cmyk, _) => jpeg::Layout::Cmyk,
                (jpeg::Layout::Gray, Color::Gray) => jpeg::Layout::Gray,
                _ => jpeg::Layout::Rgb,
            };
            Ok((layout, denominator(full.0, full.1, header.lossless)))
        });
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(err) => {
                recycle(data);
                return Err(err);
            }
        };
        let (width, height, layout) = (decoded.width, decoded.height, decoded.layout);
        if layout == jpeg::Layout::Cmyk {
            let mut rgb = spare_buffer();
            jpeg::cmyk_to_rgb(&data, &mut rgb);
            recycle(std::mem::replace(&mut data, rgb));
        }
        let channels = if layout == jpeg::Layout::Gray { 1 } else { 3 };
        if channels == 3 && color == Color::Gray {
            to_luma_in_place(&mut data);
        }
        let mut pixels = Pixels::new(width, height, color.channels(), data);
        if orientation != Orientation::NoTransforms {
            pixels = orient(pixels, orientation);
        }
        pixels.full = full;
        pixels.denominator = decoded.denominator;
        Ok(pixels)
    })
}

/// Rewrites packed RGB as luma, in the same buffer.
fn to_luma_in_place(data: &mut Vec<u8>) {
    let pixels = data.len() / 3;
    for i in 0..pixels {
        data[i] = luma(data[3 * i], data[3 * i + 1], data[3 * i + 2]);
    }
    data.truncate(pixels);
}

/// Applies an EXIF orientation (rotations need a new buffer; the old one is recycled).
fn orient(pixels: Pixels, orientation: Orientation) -> Pixels {
    let Pixels {
        width,
        height,
        channels,
        data,
        ..
    } = pixels;
    let mut image = if channels == 1 {
        ImageBuffer::from_raw(width, height, data).map(DynamicImage::ImageLuma8)
    } else {
        ImageBuffer::from_raw(width, height, data).map(DynamicImage::ImageRgb8)
    }
    .expect("decoded buffer matches its size"); // invariant: every decoder above sizes it so
    image.apply_orientation(orientation);
    let (width, height) = (image.width(), image.height());
    Pixels::new(width, height, channels, image.into_bytes())
}

/// Pillow's `convert("L")`: ITU-R 601-2 luma in 16-bit fixed point, rounded.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// Converts a decoded image to 8-bit RGB or gray as Pillow's `convert` does: alpha is dropped (not
/// composited), 16-bit samples are scaled, palettes expanded.
fn to_pixels(image: DynamicImage, color: Color) -> Pixels {
    let (width, height) = (image.width(), image.height());
    let data = match color {
        Color::Rgb | Color::Bgr => image.into_rgb8().into_raw(),
        Color::Gray => match image {
            DynamicImage::ImageLuma8(gray) => gray.into_raw(),
            image if !image.color().has_color() => image.into_luma8().into_raw(),
            image => image
                .into_rgb8()
                .pixels()
                .map(|p| luma(p[0], p[1], p[2]))
                .collect(),
        },
    };
    Pixels::new(width, height, color.channels(), data)
}

/// Converts an HxWxC uint8 array (C = 1, 3 or 4) to [`Pixels`] in the model's colour.
fn array_to_pixels(array: ArrayView3<'_, u8>, color: Color, max_pixels: u64) -> Result<Pixels> {
    let (height, width, channels) = array.dim();
    if !matches!(channels, 1 | 3 | 4) {
        return Err(Error::invalid_input(format!(
            "expected an image array of shape (height, width, channels) with 1, 3 or 4 channels, \
             got shape ({height}, {width}, {channels})"
        )));
    }
    let (w, h) = (
        u32::try_from(width).unwrap_or(u32::MAX),
        u32::try_from(height).unwrap_or(u32::MAX),
    );
    check_pixels(w, h, max_pixels).map_err(|err| match err {
        Error::InvalidImage(message) => Error::InvalidInput(message),
        other => other,
    })?;
    let out_channels = color.channels();
    let mut data = spare_buffer();
    data.clear();
    data.reserve(width * height * out_channels);
    for row in array.outer_iter() {
        for px in row.outer_iter() {
            let (r, g, b) = if channels == 1 {
                (px[0], px[0], px[0])
            } else {
                (px[0], px[1], px[2])
            };
            if out_channels == 1 {
                data.push(if channels == 1 { r } else { luma(r, g, b) });
            } else {
                data.extend_from_slice(&[r, g, b]);
            }
        }
    }
    Ok(Pixels::new(w, h, out_channels, data))
}

/// One axis of torchvision's `CenterCrop` after `Resize`: which resized rows (or columns) land
/// where in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    /// Length of the resized image along this axis.
    resized: u32,
    /// First resized index copied to the output.
    src_start: u32,
    /// First output index written (non-zero when the crop is larger than the image and pads).
    dst_start: u32,
    /// How many indices are copied.
    len: u32,
}

impl Span {
    /// torchvision's center crop of `crop` out of `resized`: offset `round((resized - crop) / 2)`
    /// with Python's round-half-to-even, or zero padding `(crop - resized) // 2` before.
    fn center(resized: u32, crop: u32) -> Span {
        if crop <= resized {
            let twice = resized - crop; // offset = round_half_even(twice / 2)
            let offset = twice / 2 + u32::from(twice % 2 == 1 && (twice / 2) % 2 == 1);
            Span {
                resized,
                src_start: offset,
                dst_start: 0,
                len: crop,
            }
        } else {
            Span {
                resized,
                src_start: 0,
                dst_start: (crop - resized) / 2,
                len: resized,
            }
        }
    }

    fn full(size: u32) -> Span {
        Span {
            resized: size,
            src_start: 0,
            dst_start: 0,
            len: size,
        }
    }
}

/// torchvision's `_compute_resized_output_size` for an int size: the shorter side becomes
/// `shorter`, the longer `int(shorter * long / short)`. Returns (height, width).
fn resized_size(height: u32, width: u32, shorter: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (f64::from(shorter) * f64::from(long) / f64::from(short)) as u32;
    let new_long = new_long.max(1);
    if width <= height {
        (new_long, shorter)
    } else {
        (shorter, new_long)
    }
}

/// PyTorch's legacy `nearest` source index (`interpolate(mode="nearest")`, which torchvision uses
/// for `NEAREST`): `min(floor(dst * in / out), in - 1)`, with the scale in float32 as ATen has it.
fn nearest_index(dst: u32, input: u32, output: u32) -> u32 {
    if input == output {
        return dst;
    }
    if output == 2 * input {
        return dst >> 1;
    }
    let scale = input as f32 / output as f32;
    ((dst as f32 * scale).floor() as u32).min(input - 1)
}

/// A model's image preprocessing, built once from its manifest and reused for every request.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    spec: ImageInput,
    /// `table[c][v]`: the normalized value of 8-bit level `v` in output channel `c`.
    table: Vec<[f32; 256]>,
    max_pixels: u64,
}

impl Preprocessor {
    /// Builds the preprocessing for `spec`; images over `max_pixels` are refused.
    pub fn new(spec: &ImageInput, max_pixels: u64) -> Preprocessor {
        let channels = spec.color.channels();
        let table = (0..channels)
            .map(|c| {
                let mean = spec.mean.as_ref().map_or(0.0, |m| m[c]);
                let std = spec.std.as_ref().map_or(1.0, |s| s[c]);
                let mut row = [0f32; 256];
                for (v, slot) in row.iter_mut().enumerate() {
                    *slot = (v as f32 / 255.0 - mean) / std;
                }
                row
            })
            .collect();
        Preprocessor {
            spec: spec.clone(),
            table,
            max_pixels,
        }
    }

    /// The tensor shape of one image: `[channels, height, width]`.
    pub fn chw(&self) -> [usize; 3] {
        let [h, w] = self.spec.size;
        [self.spec.color.channels(), h as usize, w as usize]
    }

    /// Elements of one image's tensor.
    pub fn tensor_len(&self) -> usize {
        self.chw().iter().product()
    }

    /// Decodes (or takes) the image and converts it to the model's colour layout. With
    /// `decode: "fast"`, JPEGs decode at the smallest DCT scale that still covers the resize.
    pub fn pixels(&self, source: ImageSource<'_>) -> Result<Pixels> {
        match source {
            ImageSource::Encoded(bytes) if jpeg::is_jpeg(bytes) => decode_jpeg(
                bytes,
                self.spec.color,
                self.max_pixels,
                |w, h, lossless| match self.spec.decode {
                    Decode::Fast if !lossless => self.fast_denominator(w, h),
                    _ => 1,
                },
            ),
            ImageSource::Encoded(bytes) => {
                let image = decode_other(bytes, self.max_pixels)?;
                Ok(to_pixels(image, self.spec.color))
            }
            ImageSource::Array(array) => array_to_pixels(array, self.spec.color, self.max_pixels),
        }
    }

    /// Decodes and preprocesses one image into `out` (CHW, `tensor_len()` floats): the whole
    /// path of one image on one thread, its buffers recycled for the next. Returns the
    /// milliseconds spent decoding and preprocessing.
    pub fn tensor_of(&self, source: ImageSource<'_>, out: &mut [f32]) -> Result<(f64, f64)> {
        let started = std::time::Instant::now();
        let pixels = self.pixels(source)?;
        let decoded = std::time::Instant::now();
        let result = self.tensorize(&pixels, out);
        recycle(pixels.data);
        result?;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        Ok((ms(decoded - started), ms(decoded.elapsed())))
    }

    /// The largest DCT scale 1/d (d = 8, 4, 2) at which an image of `width` x `height` still
    /// covers the resize without upsampling: the shorter side at least the resize target (center
    /// crop), or each side at least the output size (no crop), in whole pixels as Pillow's
    /// `draft()` counts them. 1 if none does.
    fn fast_denominator(&self, width: u32, height: u32) -> u32 {
        let [size_h, size_w] = self.spec.size;
        let covers = |d: u32| match self.spec.crop {
            Crop::Center => width.min(height) / d >= self.resize_shorter(),
            Crop::None => width / d >= size_w && height / d >= size_h,
        };
        [8, 4, 2].into_iter().find(|&d| covers(d)).unwrap_or(1)
    }

    /// torchvision's `Resize` target for the shorter side (the crop size when not given).
    fn resize_shorter(&self) -> u32 {
        let [size_h, size_w] = self.spec.size;
        self.spec
            .resize_shorter
            .unwrap_or_else(|| size_h.max(size_w))
    }

    /// Resizes, crops and normalizes `pixels` into `out` (CHW, `tensor_len()` floats).
    pub fn tensorize(&self, pixels: &Pixels, out: &mut [f32]) -> Result<()> {
        let [channels, out_h, out_w] = self.chw();
        if out.len() != self.tensor_len() {
            return Err(Error::internal(
                "tensorize",
                format!(
                    "tensor buffer of {} floats for {channels}x{out_h}x{out_w}",
                    out.len()
                ),
            ));
        }
        let [size_h, size_w] = self.spec.size;
        // The geometry comes from the full-resolution size, so a scaled decode lands on the
        // same output grid as the exact path.
        let (full_w, full_h) = pixels.full;
        let (rows, cols) = match self.spec.crop {
            Crop::None => (Span::full(size_h), Span::full(size_w)),
            Crop::Center => {
                let (rh, rw) = resized_size(full_h, full_w, self.resize_shorter());
                (Span::center(rh, size_h), Span::center(rw, size_w))
            }
        };
        // Padding (crop larger than the image) is black, as torchvision pads with zeros.
        if rows.len < size_h || cols.len < size_w {
            for (c, plane) in out.chunks_exact_mut(out_h * out_w).enumerate() {
                plane.fill(self.table[c][0]);
            }
        }
        if self.spec.interpolation == Interpolation::Nearest {
            let d = pixels.denominator;
            let sample = |y: u32, x: u32| {
                let sy = (nearest_index(y, full_h, rows.resized) / d).min(pixels.height - 1);
                let sx = (nearest_index(x, full_w, cols.resized) / d).min(pixels.width - 1);
                (sy as usize * pixels.width as usize + sx as usize) * pixels.channels
            };
            self.write(rows, cols, &pixels.data, sample, out);
            return Ok(());
        }
        let window = self.resize_window(pixels, rows, cols)?;
        let stride = cols.len as usize;
        let sample = |y: u32, x: u32| {
            let (y, x) = (y - rows.src_start, x - cols.src_start);
            (y as usize * stride + x as usize) * pixels.channels
        };
        self.write(rows, cols, &window, sample, out);
        recycle(window);
        Ok(())
    }

    /// Antialiased resampling of the image to `rows.resized` x `cols.resized`, computing only the
    /// window the crop keeps (`cols.len` x `rows.len` pixels, row-major).
    ///
    /// Each output pixel's filter is centred and clipped exactly as in a full resize: the source
    /// box handed to fast_image_resize starts at the crop offset times the scale, and the filter
    /// still clips at the real image borders. The horizontal pass only covers the source rows the
    /// vertical pass reads.
    fn resize_window(&self, pixels: &Pixels, rows: Span, cols: Span) -> Result<Vec<u8>> {
        let pixel_type = if pixels.channels == 1 {
            fir::PixelType::U8
        } else {
            fir::PixelType::U8x3
        };
        let (filter, support) = match self.spec.interpolation {
            Interpolation::Bicubic => (fir::FilterType::CatmullRom, 2.0),
            Interpolation::Lanczos3 => (fir::FilterType::Lanczos3, 3.0),
            Interpolation::Bilinear | Interpolation::Nearest => (fir::FilterType::Bilinear, 1.0),
        };
        let algorithm = fir::ResizeAlg::Convolution(filter);
        let internal = |err: String| Error::internal("resize", err);
        // One pass: `src` (`from` pixels, row-major) is resized into `dst` (`to` pixels), reading
        // the source box (left, top, width, height).
        let pass =
            |src: &[u8], from: (u32, u32), dst: &mut Vec<u8>, to: (u32, u32), b: [f64; 4]| {
                dst.clear();
                dst.resize(to.0 as usize * to.1 as usize * pixels.channels, 0);
                let image = fir::images::ImageRef::new(from.0, from.1, src, pixel_type)
                    .map_err(|err| internal(err.to_string()))?;
                let mut out = fir::images::Image::from_slice_u8(to.0, to.1, dst, pixel_type)
                    .map_err(|err| internal(err.to_string()))?;
                let options = fir::ResizeOptions::new()
                    .resize_alg(algorithm)
                    .crop(b[0], b[1], b[2], b[3]);
                RESIZER
                    .with_borrow_mut(|resizer| resizer.resize(&image, &mut out, &options))
                    .map_err(|err| internal(err.to_string()))
            };
        let (w0, h0) = (pixels.width, pixels.height);
        // Decoded pixels per resized pixel; a scaled decode (1/d) covers `full / d` of them.
        let d = f64::from(pixels.denominator);
        let scale_x = f64::from(pixels.full.0) / d / f64::from(cols.resized);
        let scale_y = f64::from(pixels.full.1) / d / f64::from(rows.resized);
        // Clamped to the image: `len * (size / resized)` can round one ulp past the border.
        let left = f64::from(cols.src_start) * scale_x;
        let width = (f64::from(cols.len) * scale_x).min(f64::from(w0) - left);
        let top = f64::from(rows.src_start) * scale_y;
        let height = (f64::from(rows.len) * scale_y).min(f64::from(h0) - top);
        // Source rows under the vertical filter: its support widens with the downscale factor;
        // one row of margin covers Pillow's rounding of the window bounds.
        let reach = support * scale_y.max(1.0) + 1.0;
        let first = ((top - reach).floor().max(0.0) as u32).min(h0 - 1);
        let last = ((top + height + reach).ceil() as u32).clamp(first + 1, h0);
        let stride = w0 as usize * pixels.channels;
        let band = &pixels.data[first as usize * stride..last as usize * stride];
        let band_h = last - first;
        // Horizontal pass first, then vertical, as Pillow and torchvision's uint8 path do: each pass
        // rounds and clips to 8 bits, so the order shows wherever a filter overshoots (edges).
        // fast_image_resize alone would run the vertical pass first for u8 images.
        let mut wide = spare_buffer();
        pass(
            band,
            (w0, band_h),
            &mut wide,
            (cols.len, band_h),
            [left, 0.0, width, f64::from(band_h)],
        )?;
        let mut window = spare_buffer();
        pass(
            &wide,
            (cols.len, band_h),
            &mut window,
            (cols.len, rows.len),
            [0.0, top - f64::from(first), f64::from(cols.len), height],
        )?;
        recycle(wide);
        Ok(window)
    }

    /// Scales, normalizes and transposes HWC pixels to CHW floats, in one pass over the crop.
    /// `offset(y, x)` gives the index of resized pixel (y, x) in `data`.
    fn write(
        &self,
        rows: Span,
        cols: Span,
        data: &[u8],
        offset: impl Fn(u32, u32) -> usize,
        out: &mut [f32],
    ) {
        let [channels, out_h, out_w] = self.chw();
        let plane = out_h * out_w;
        let bgr = self.spec.color == Color::Bgr;
        for y in 0..rows.len {
            let dst_row = (rows.dst_start + y) as usize * out_w + cols.dst_start as usize;
            for x in 0..cols.len {
                let src = offset(rows.src_start + y, cols.src_start + x);
                let dst = dst_row + x as usize;
                for c in 0..channels {
                    let from = if bgr { channels - 1 - c } else { c };
                    out[c * plane + dst] = self.table[c][data[src + from] as usize];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_matches_torchvision() {
        // torchvision: Resize(256) on (h, w) = (480, 640) -> (256, 341); on (640, 480) -> (341, 256)
        assert_eq!(resized_size(480, 640, 256), (256, 341));
        assert_eq!(resized_size(640, 480, 256), (341, 256));
        assert_eq!(resized_size(300, 451, 256), (256, 384));
        assert_eq!(resized_size(100, 100, 256), (256, 256));
    }

    #[test]
    fn center_crop_rounds_half_to_even() {
        // torchvision: int(round((h - c) / 2.0)) with Python's banker's rounding.
        assert_eq!(Span::center(257, 224).src_start, 16); // round(16.5) = 16
        assert_eq!(Span::center(259, 224).src_start, 18); // round(17.5) = 18
        assert_eq!(Span::center(256, 224).src_start, 16);
        assert_eq!(Span::center(226, 224).src_start, 1);
        let padded = Span::center(200, 224);
        assert_eq!((padded.dst_start, padded.len), (12, 200));
    }

    #[test]
    fn nearest_matches_aten() {
        let idx: Vec<u32> = (0..4).map(|d| nearest_index(d, 10, 4)).collect();
        assert_eq!(idx, vec![0, 2, 5, 7]);
    }

    #[test]
    fn fast_scale_is_the_largest_that_covers_the_resize() {
        let pre = |json: &str| {
            let spec: ImageInput = serde_json::from_str(json).unwrap();
            Preprocessor::new(&spec, DEFAULT_MAX_IMAGE_PIXELS)
        };
        let center = pre(r#"{"size": [224, 224], "resize_shorter": 256, "decode": "fast"}"#);
        assert_eq!(center.fast_denominator(4000, 3000), 8); // 375 >= 256
        assert_eq!(center.fast_denominator(1408, 950), 2); // 475; 1/4 would give 238
        assert_eq!(center.fast_denominator(2048, 1024), 4); // exactly 256
        assert_eq!(center.fast_denominator(2048, 1023), 2); // 255.75 < 256
        assert_eq!(center.fast_denominator(600, 400), 1);
        let stretch = pre(r#"{"size": [100, 300], "crop": "none", "decode": "fast"}"#);
        assert_eq!(stretch.fast_denominator(1200, 1600), 4); // width 300, height 400
    }

    #[test]
    fn luma_matches_pillow() {
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
    }

    #[test]
    fn empty_and_garbage_are_invalid_images() {
        assert!(matches!(
            decode_other(b"", 100),
            Err(Error::InvalidImage(_))
        ));
        assert!(matches!(
            decode_other(b"hello world", 100),
            Err(Error::InvalidImage(_))
        ));
    }
}
