//! JPEG decoding through libjpeg-turbo, the decoder inside Pillow and OpenCV.
//!
//! Same decoder as Pillow means the same pixels as torchvision's pipeline, and its SIMD entropy
//! decoding and IDCT are the floor a CPU can reach. Its DCT-domain scaling decodes 1/2, 1/4 or 1/8
//! of the resolution for little more than the entropy-decoding cost (`decode: "fast"`).
//!
//! The TurboJPEG 3 API is called through `turbojpeg-sys` rather than the `turbojpeg` crate because
//! the crate hides the one distinction this service needs: a *warning* (damaged but complete
//! data, which Pillow decodes) from a fatal error. Truncation is refused before decoding (see
//! [`has_end_marker`]), as Pillow refuses it.

use std::ffi::{c_int, CStr};

use image::metadata::Orientation;
use turbojpeg_sys as tj;

use crate::error::{Error, Result};

/// Progressive scans allowed per image. Real encoders use at most a few dozen; a crafted file
/// with thousands of scans makes the decoder redo its whole-image work for each one.
pub const MAX_SCANS: c_int = 100;

/// Whether `bytes` starts with a JPEG start-of-image marker.
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Width in pixels, before any EXIF orientation.
    pub width: u32,
    /// Height in pixels, before any EXIF orientation.
    pub height: u32,
    /// The pixel layout decoded samples come in.
    pub layout: Layout,
    /// Lossless JPEGs cannot be scaled in the DCT domain (they have none).
    pub lossless: bool,
}

/// Decoded sample layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One luma sample per pixel (grayscale JPEGs only).
    Gray,
    /// Red, green, blue.
    Rgb,
    /// Adobe CMYK as stored (inverted), four samples per pixel.
    Cmyk,
}

impl Layout {
    /// Samples per pixel.
    pub fn channels(self) -> usize {
        match self {
            Layout::Gray => 1,
            Layout::Rgb => 3,
            Layout::Cmyk => 4,
        }
    }

    fn pixel_format(self) -> c_int {
        match self {
            Layout::Gray => tj::TJPF_TJPF_GRAY,
            Layout::Rgb => tj::TJPF_TJPF_RGB,
            Layout::Cmyk => tj::TJPF_TJPF_CMYK,
        }
    }
}

/// A TurboJPEG decompressor. One per thread: the handle is not thread-safe, and reusing it
/// avoids re-allocating libjpeg's state for every image.
pub struct Decoder {
    handle: tj::tjhandle,
}

impl Decoder {
    /// A new decompressor, with the scan limit set.
    pub fn new() -> Result<Decoder> {
        // SAFETY: tj3Init has no preconditions; a null handle is checked below.
        let handle = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as c_int) };
        if handle.is_null() {
            return Err(Error::internal("jpeg", "cannot initialize libjpeg-turbo"));
        }
        let decoder = Decoder { handle };
        decoder.set(tj::TJPARAM_TJPARAM_SCANLIMIT, MAX_SCANS)?;
        Ok(decoder)
    }

    fn set(&self, param: tj::TJPARAM, value: c_int) -> Result<()> {
        // SAFETY: the handle is valid for the lifetime of `self`.
        if unsafe { tj::tj3Set(self.handle, param as c_int, value) } != 0 {
            return Err(Error::internal("jpeg", self.message()));
        }
        Ok(())
    }

    fn get(&self, param: tj::TJPARAM) -> c_int {
        // SAFETY: the handle is valid for the lifetime of `self`.
        unsafe { tj::tj3Get(self.handle, param as c_int) }
    }

    fn message(&self) -> String {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle.
        unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.handle)) }
            .to_string_lossy()
            .into_owned()
    }

    /// Reads the header without decoding any pixel. Private: [`Decoder::decode`] reads the
    /// header of the very bytes it decodes, so the output buffer is always sized for them.
    fn header(&mut self, bytes: &[u8]) -> Result<Header> {
        // SAFETY: the pointer and length describe `bytes`, which outlives the call.
        let status = unsafe {
            tj::tj3DecompressHeader(self.handle, bytes.as_ptr(), bytes.len() as tj::size_t)
        };
        if status != 0 {
            return Err(Error::InvalidImage(format!(
                "cannot decode the JPEG: {}",
                self.message()
            )));
        }
        let dimension = |param| u32::try_from(self.get(param)).unwrap_or(0);
        let layout = match self.get(tj::TJPARAM_TJPARAM_COLORSPACE) as tj::TJCS {
            tj::TJCS_TJCS_GRAY => Layout::Gray,
            tj::TJCS_TJCS_CMYK | tj::TJCS_TJCS_YCCK => Layout::Cmyk,
            _ => Layout::Rgb,
        };
        Ok(Header {
            width: dimension(tj::TJPARAM_TJPARAM_JPEGWIDTH),
            height: dimension(tj::TJPARAM_TJPARAM_JPEGHEIGHT),
            layout,
            lossless: self.get(tj::TJPARAM_TJPARAM_LOSSLESS) != 0,
        })
    }

    /// Decodes `bytes` into `out`, replacing its contents. `plan` sees the header first (to
    /// refuse the image, or to choose the output layout and the scale 1/d, d = 1, 2, 4 or 8)
    /// before any pixel is decoded.
    pub fn decode(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        plan: impl FnOnce(&Header) -> Result<(Layout, u32)>,
    ) -> Result<Decoded> {
        let header = self.header(bytes)?;
        let (layout, denominator) = plan(&header)?;
        if !matches!(denominator, 1 | 2 | 4 | 8) {
            return Err(Error::internal(
                "jpeg",
                format!("unsupported scale 1/{denominator}"),
            ));
        }
        let factor = tj::tjscalingfactor {
            num: 1,
            denom: denominator as c_int,
        };
        // SAFETY: the handle is valid; the factor is one TurboJPEG supports (checked above).
        if unsafe { tj::tj3SetScalingFactor(self.handle, factor) } != 0 {
            return Err(Error::internal(
                "jpeg",
                format!("libjpeg-turbo scaling 1/{denominator}: {}", self.message()),
            ));
        }
        // TurboJPEG's TJSCALED: ceil(size / denominator).
        let width = header.width.div_ceil(denominator);
        let height = header.height.div_ceil(denominator);
        let pitch = width as usize * layout.channels();
        // Sized without clearing: a reused buffer is not zeroed again, TurboJPEG overwrites it.
        out.resize(pitch * height as usize, 0);
        // SAFETY: `header` is of these `bytes` (read above), so TurboJPEG writes `height` rows of
        // `pitch` bytes (`width` pixels of `layout`, at the scale set above): `out` holds that
        // many; the input pointer and length describe `bytes`, which outlives the call.
        let status = unsafe {
            tj::tj3Decompress8(
                self.handle,
                bytes.as_ptr(),
                bytes.len() as tj::size_t,
                out.as_mut_ptr(),
                pitch as c_int,
                layout.pixel_format(),
            )
        };
        // SAFETY: the handle is valid.
        let code = unsafe { tj::tj3GetErrorCode(self.handle) };
        if status != 0 && code != tj::TJERR_TJERR_WARNING as c_int {
            return Err(Error::InvalidImage(format!(
                "cannot decode the JPEG: {}",
                self.message()
            )));
        }
        Ok(Decoded {
            width,
            height,
            layout,
            denominator,
        })
    }
}

/// What [`Decoder::decode`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Width in decoded pixels (before any EXIF orientation).
    pub width: u32,
    /// Height in decoded pixels.
    pub height: u32,
    /// Sample layout.
    pub layout: Layout,
    /// The scale was 1/denominator.
    pub denominator: u32,
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { tj::tj3Destroy(self.handle) }
    }
}

/// Whether the image data is closed by an end-of-image marker. libjpeg fills a truncated scan
/// with grey and only warns; a cut-off upload must not pass.
///
/// Nearly every file ends with EOI. Otherwise (data appended after the image, as in phones'
/// motion photos) the segments and scans are walked to the first EOI: inside entropy-coded data
/// a 0xFF byte is always stuffed (`FF 00`) or starts a restart marker, so any other marker ends
/// the scan.
pub fn has_end_marker(bytes: &[u8]) -> bool {
    if bytes.ends_with(&[0xFF, 0xD9]) {
        return true;
    }
    let mut at = 2; // after SOI
    while let Some(&[0xFF, marker]) = bytes.get(at..at + 2) {
        match marker {
            0xD9 => return true,
            0xFF => at += 1,
            0x01 | 0xD0..=0xD7 => at += 2,
            _ => {
                let Some(&[high, low]) = bytes.get(at + 2..at + 4) else {
                    return false;
                };
                at += 2 + usize::from(u16::from_be_bytes([high, low]));
                if marker == 0xDA {
                    match next_marker(bytes, at) {
                        Some(next) => at = next,
                        None => return false,
                    }
                }
            }
        }
    }
    false
}

/// The position of the first marker at or after `from` in entropy-coded data.
fn next_marker(bytes: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = from + memchr::memchr(0xFF, bytes.get(from..)?)?;
        match *bytes.get(at + 1)? {
            0xFF => from = at + 1,
            0x00 | 0xD0..=0xD7 => from = at + 2,
            _ => return Some(at),
        }
    }
}

/// The EXIF orientation from the first `APP1 Exif` segment, read by walking the marker segments
/// that precede the first scan. Missing or unreadable EXIF means no transform, as in Pillow.
pub fn orientation(bytes: &[u8]) -> Orientation {
    let mut at = 2; // after SOI
    while let Some(&[0xFF, marker, high, low]) = bytes.get(at..at + 4) {
        match marker {
            0xFF => at += 1, // fill byte
            0xDA | 0xD9 => break,
            0x01 | 0xD0..=0xD7 => at += 2, // markers without a length
            _ => {
                let end = at + 2 + usize::from(u16::from_be_bytes([high, low]));
                let Some(segment) = bytes.get(at + 4..end) else {
                    break;
                };
                if marker == 0xE1 {
                    if let Some(tiff) = segment.strip_prefix(b"Exif\0\0") {
                        return Orientation::from_exif_chunk(tiff)
                            .unwrap_or(Orientation::NoTransforms);
                    }
                }
                at = end;
            }
        }
    }
    Orientation::NoTransforms
}

/// Pillow's CMYK to RGB: Adobe JPEGs store inverted CMYK (Pillow's `CMYK;I` raw mode), which
/// `convert("RGB")` turns into `(255 - k) * (1 - c)` per channel, rounded as its `MULDIV255`.
pub fn cmyk_to_rgb(cmyk: &[u8], rgb: &mut Vec<u8>) {
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    rgb.clear();
    rgb.reserve(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let nk = u32::from(px[3]); // 255 - K
        for &stored in &px[..3] {
            let c = 255 - u32::from(stored);
            rgb.push(nk.saturating_sub(muldiv255(c, nk)) as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_marker_must_follow_the_last_scan() {
        // SOI, SOS (length 2), entropy data with a stuffed FF and a restart marker.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xDA, 0, 2, 1, 0xFF, 0, 2, 0xFF, 0xD3, 3];
        assert!(!has_end_marker(&jpeg));
        let mut closed = [&jpeg[..], &[0xFF, 0xD9]].concat();
        assert!(has_end_marker(&closed));
        // Data appended after EOI (motion photos) holds no EOI of its own.
        closed.extend_from_slice(b"ftypmp42\xFF\xDA\x00\x02");
        assert!(has_end_marker(&closed));
        // EOI bytes inside a segment (an EXIF thumbnail) do not count.
        jpeg.splice(2..2, [0xFF, 0xE1, 0, 4, 0xFF, 0xD9]);
        jpeg.push(0);
        assert!(!has_end_marker(&jpeg));
    }

    #[test]
    fn orientation_walks_segments_and_stops_at_scan() {
        // APP0 (JFIF-like, 4 bytes of payload), then APP1 Exif with a big-endian TIFF whose one
        // IFD entry is orientation (0x0112) = 6.
        let mut tiff = vec![0x4D, 0x4D, 0, 42, 0, 0, 0, 8, 0, 1];
        tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0]);
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 6, 1, 2, 3, 4, 0xFF, 0xE1];
        jpeg.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        jpeg.extend_from_slice(&app1);
        assert_eq!(orientation(&jpeg), Orientation::Rotate90);
        let late = [&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2][..], &jpeg[2..]].concat();
        assert_eq!(orientation(&late), Orientation::NoTransforms);
        assert_eq!(orientation(&jpeg[..20]), Orientation::NoTransforms);
    }

    #[test]
    fn cmyk_matches_pillow() {
        // Stored (inverted) samples: white paper, pure black ink, full cyan.
        let mut rgb = Vec::new();
        cmyk_to_rgb(
            &[255, 255, 255, 255, 255, 255, 255, 0, 0, 255, 255, 255],
            &mut rgb,
        );
        assert_eq!(rgb, vec![255, 255, 255, 0, 0, 0, 0, 255, 255]);
    }
}
