//! Images to tensors: decode, orient, convert colour, resize, crop and normalize.
//!
//! The geometry (resized size, crop offsets, padding) and the arithmetic follow torchvision's
//! `PILToTensor → Resize(antialias=True) → CenterCrop → ToDtype(scale=True) → Normalize`, so a model
//! sees what it saw in training. Decoding uses the `image` crate (zune-jpeg, png, image-webp, gif);
//! resampling uses `fast_image_resize`, whose convolution filters are Pillow's, which torchvision's
//! antialiased resize reproduces. This module knows nothing of models, Python or Lambda.

use std::io::Cursor;

use fast_image_resize as fir;
use image::{DynamicImage, ImageDecoder, ImageReader};
use ndarray::ArrayView3;

use crate::error::{Error, Result};
use crate::manifest::{Color, Crop, ImageInput, Interpolation};

/// Default for `LAMBDATORCH_MAX_IMAGE_PIXELS`: 40 megapixels, above any phone camera.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 40_000_000;

/// An image as the caller gave it.
#[derive(Debug, Clone, Copy)]
pub enum ImageSource<'a> {
    /// Encoded bytes: JPEG, PNG, WebP, GIF (first frame) or BMP.
    Encoded(&'a [u8]),
    /// Decoded pixels, height x width x channels (1: gray, 3: RGB, 4: RGBA), uint8.
    Array(ArrayView3<'a, u8>),
}

/// Decoded 8-bit pixels in the channel layout the model wants (1 or 3 channels, RGB order).
#[derive(Debug, Clone)]
pub struct Pixels {
    width: u32,
    height: u32,
    channels: usize,
    data: Vec<u8>,
}

/// Reads the header, refuses images over `max_pixels` before any pixel buffer is allocated, then
/// decodes and applies the EXIF orientation.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage> {
    if bytes.is_empty() {
        return Err(Error::InvalidImage("the image is empty (0 bytes)".into()));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|err| Error::InvalidImage(format!("cannot read the image: {err}")))?;
    if reader.format().is_none() {
        return Err(Error::InvalidImage(format!(
            "unrecognized image format (starts with {}); send JPEG, PNG, WebP, GIF or BMP",
            hex_prefix(bytes)
        )));
    }
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_has_end(bytes) {
        return Err(Error::InvalidImage(
            "the JPEG is truncated (no end-of-image marker after its last scan)".into(),
        ));
    }
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

/// Whether a JPEG's last scan is followed by the end-of-image marker. Inside entropy-coded data a
/// 0xFF byte is always stuffed (`FF 00`) or a restart marker, so `FF D9` there can only be EOI.
/// Decoders fill a truncated scan with grey instead of failing; a cut-off upload must not pass.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let last_scan = bytes
        .windows(2)
        .rposition(|w| w == [0xFF, 0xDA])
        .unwrap_or(0);
    bytes[last_scan..].windows(2).any(|w| w == [0xFF, 0xD9])
}

fn invalid_image(err: image::ImageError) -> Error {
    match err {
        image::ImageError::Limits(limit) => Error::TooLarge {
            what: "image decoding memory",
            actual: limit.to_string(),
            limit: 0,
            hint: "",
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
        return Err(Error::TooLarge {
            what: "the image size",
            actual: format!("{width}x{height} = {pixels} pixels"),
            limit: max_pixels,
            hint: " pixels (LAMBDATORCH_MAX_IMAGE_PIXELS)",
        });
    }
    Ok(())
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
    Pixels {
        width,
        height,
        channels: color.channels(),
        data,
    }
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
    let mut data = Vec::with_capacity(width * height * out_channels);
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
    Ok(Pixels {
        width: w,
        height: h,
        channels: out_channels,
        data,
    })
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

    /// Decodes (or takes) the image and converts it to the model's colour layout.
    pub fn pixels(&self, source: ImageSource<'_>) -> Result<Pixels> {
        match source {
            ImageSource::Encoded(bytes) => {
                let image = decode(bytes, self.max_pixels)?;
                Ok(to_pixels(image, self.spec.color))
            }
            ImageSource::Array(array) => array_to_pixels(array, self.spec.color, self.max_pixels),
        }
    }

    /// Resizes, crops and normalizes `pixels` into `out` (CHW, `tensor_len()` floats).
    pub fn tensorize(&self, pixels: &Pixels, out: &mut [f32]) -> Result<()> {
        let [channels, out_h, out_w] = self.chw();
        if out.len() != self.tensor_len() {
            return Err(Error::Inference(format!(
                "internal: tensor buffer of {} floats for {channels}x{out_h}x{out_w}",
                out.len()
            )));
        }
        let [size_h, size_w] = self.spec.size;
        let (rows, cols) = match self.spec.crop {
            Crop::None => (Span::full(size_h), Span::full(size_w)),
            Crop::Center => {
                let shorter = self
                    .spec
                    .resize_shorter
                    .unwrap_or_else(|| size_h.max(size_w));
                let (rh, rw) = resized_size(pixels.height, pixels.width, shorter);
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
            let sample = |y: u32, x: u32| {
                let sy = nearest_index(y, pixels.height, rows.resized) as usize;
                let sx = nearest_index(x, pixels.width, cols.resized) as usize;
                (sy * pixels.width as usize + sx) * pixels.channels
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
        Ok(())
    }

    /// Antialiased resampling of the image to `rows.resized` x `cols.resized`, computing only the
    /// window the crop keeps (`cols.len` x `rows.len` pixels, row-major).
    ///
    /// Each output pixel's filter is centred and clipped exactly as in a full resize: the source
    /// window handed to fast_image_resize starts at the crop offset times the scale, and the
    /// filter still clips at the real image borders.
    fn resize_window(&self, pixels: &Pixels, rows: Span, cols: Span) -> Result<Vec<u8>> {
        let pixel_type = if pixels.channels == 1 {
            fir::PixelType::U8
        } else {
            fir::PixelType::U8x3
        };
        let filter = match self.spec.interpolation {
            Interpolation::Bicubic => fir::FilterType::CatmullRom,
            Interpolation::Lanczos3 => fir::FilterType::Lanczos3,
            Interpolation::Bilinear | Interpolation::Nearest => fir::FilterType::Bilinear,
        };
        let algorithm = fir::ResizeAlg::Convolution(filter);
        let mut resizer = fir::Resizer::new();
        // One pass: `from` is resized to `to`, reading the source box (left, top, width, height).
        let mut pass = |data: &[u8], from: (u32, u32), to: (u32, u32), src: [f64; 4]| {
            let internal = |err: String| Error::Inference(format!("internal: resize: {err}"));
            let image = fir::images::ImageRef::new(from.0, from.1, data, pixel_type)
                .map_err(|err| internal(err.to_string()))?;
            let mut dst = fir::images::Image::new(to.0, to.1, pixel_type);
            let options = fir::ResizeOptions::new()
                .resize_alg(algorithm)
                .crop(src[0], src[1], src[2], src[3]);
            resizer
                .resize(&image, &mut dst, &options)
                .map_err(|err| internal(err.to_string()))?;
            Ok::<_, Error>(dst.into_vec())
        };
        let (w0, h0) = (pixels.width, pixels.height);
        let scale_x = f64::from(w0) / f64::from(cols.resized);
        let scale_y = f64::from(h0) / f64::from(rows.resized);
        let (left, width) = (
            f64::from(cols.src_start) * scale_x,
            f64::from(cols.len) * scale_x,
        );
        let (top, height) = (
            f64::from(rows.src_start) * scale_y,
            f64::from(rows.len) * scale_y,
        );
        // Horizontal pass first, then vertical, as Pillow and torchvision's uint8 path do: each pass
        // rounds and clips to 8 bits, so the order shows wherever a filter overshoots (edges).
        // fast_image_resize alone would run the vertical pass first for u8 images.
        let wide = pass(
            &pixels.data,
            (w0, h0),
            (cols.len, h0),
            [left, 0.0, width, f64::from(h0)],
        )?;
        pass(
            &wide,
            (cols.len, h0),
            (cols.len, rows.len),
            [0.0, top, f64::from(cols.len), height],
        )
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
    fn luma_matches_pillow() {
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
    }

    #[test]
    fn empty_and_garbage_are_invalid_images() {
        assert!(matches!(decode(b"", 100), Err(Error::InvalidImage(_))));
        assert!(matches!(
            decode(b"hello world", 100),
            Err(Error::InvalidImage(_))
        ));
    }
}
