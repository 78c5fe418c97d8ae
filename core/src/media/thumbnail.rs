//! Thumbnail rendering with the `image` crate: pure functions, no I/O.
//!
//! Requested sizes snap to the spec's recommended presets, so a client cannot fill the
//! cache with one thumbnail per pixel size. Decoding is bounded (dimensions and memory)
//! so a small "decompression bomb" cannot exhaust the device.

use std::io::Cursor;

use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};

use crate::error::Error;

/// How a thumbnail is fitted into the requested box.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Exactly the box: scale to cover it, then crop the centre.
    Crop,
    /// Fit inside the box, keeping the aspect ratio; never upscale.
    Scale,
}

impl Method {
    /// Parse the `method` query parameter (default: scale).
    pub fn parse(s: Option<&str>) -> Result<Method, Error> {
        match s {
            None | Some("scale") => Ok(Method::Scale),
            Some("crop") => Ok(Method::Crop),
            Some(other) => Err(Error::InvalidParam(format!(
                "unknown thumbnail method {other:?} (crop or scale)"
            ))),
        }
    }

    /// The name stored in the cache key.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Scale => "scale",
        }
    }
}

/// The spec's recommended thumbnail sizes.
const PRESETS: &[(u32, u32, Method)] = &[
    (32, 32, Method::Crop),
    (96, 96, Method::Crop),
    (320, 240, Method::Scale),
    (640, 480, Method::Scale),
    (800, 600, Method::Scale),
];

/// Largest width or height we decode.
const MAX_DIMENSION: u32 = 8192;
/// Most memory a decoder may allocate.
const MAX_DECODE_ALLOC: u64 = 256 * 1024 * 1024;

/// The preset to render for a request: the smallest of the method's presets at least as
/// large as asked for, else the largest one.
pub fn snap(width: u32, height: u32, method: Method) -> (u32, u32) {
    let mut sizes = PRESETS.iter().filter(|p| p.2 == method);
    sizes
        .clone()
        .find(|p| p.0 >= width && p.1 >= height)
        .or_else(|| sizes.next_back())
        .map_or((width, height), |p| (p.0, p.1))
}

/// A rendered thumbnail.
#[derive(Debug)]
pub struct Rendered {
    /// Encoded bytes.
    pub bytes: Vec<u8>,
    /// `image/png` or `image/jpeg`.
    pub content_type: &'static str,
}

fn decode(source: &[u8]) -> Result<(DynamicImage, ImageFormat), Error> {
    let mut reader = ImageReader::new(Cursor::new(source))
        .with_guessed_format()
        .map_err(|e| Error::BadContent(format!("cannot read the content: {e}")))?;
    let format = reader
        .format()
        .filter(|f| {
            matches!(
                f,
                ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP
            )
        })
        .ok_or_else(|| {
            Error::BadContent("the content is not an image that can be thumbnailed".into())
        })?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => {
            Error::TooLarge(format!("the image is too large to thumbnail: {e}"))
        }
        other => Error::BadContent(format!("cannot decode the image: {other}")),
    })?;
    Ok((image, format))
}

/// Render a thumbnail of `source` (image bytes) into a `width`×`height` box.
pub fn render(source: &[u8], width: u32, height: u32, method: Method) -> Result<Rendered, Error> {
    let (image, format) = decode(source)?;
    let thumb = match method {
        Method::Crop => image.resize_to_fill(width, height, FilterType::Triangle),
        Method::Scale if image.width() <= width && image.height() <= height => image,
        Method::Scale => image.resize(width, height, FilterType::Triangle),
    };
    // Photos stay JPEG (much smaller); everything else becomes PNG, which keeps alpha.
    let mut out = Cursor::new(Vec::new());
    let content_type = if format == ImageFormat::Jpeg {
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
        DynamicImage::ImageRgb8(thumb.to_rgb8())
            .write_with_encoder(encoder)
            .map_err(Error::internal)?;
        "image/jpeg"
    } else {
        thumb
            .write_to(&mut out, ImageFormat::Png)
            .map_err(Error::internal)?;
        "image/png"
    };
    Ok(Rendered {
        bytes: out.into_inner(),
        content_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_fn(width, height, |x, y| {
            image::Rgba([(x % 256) as u8, (y % 256) as u8, 128, 255])
        });
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(img)
            .write_to(&mut out, ImageFormat::Png)
            .expect("encode");
        out.into_inner()
    }

    fn dimensions(bytes: &[u8]) -> (u32, u32) {
        let img = image::load_from_memory(bytes).expect("decode thumbnail");
        (img.width(), img.height())
    }

    #[test]
    fn sizes_snap_to_presets() {
        assert_eq!(snap(10, 10, Method::Crop), (32, 32));
        assert_eq!(snap(64, 40, Method::Crop), (96, 96));
        assert_eq!(snap(500, 500, Method::Crop), (96, 96));
        assert_eq!(snap(1, 1, Method::Scale), (320, 240));
        assert_eq!(snap(641, 10, Method::Scale), (800, 600));
        assert_eq!(snap(5000, 5000, Method::Scale), (800, 600));
    }

    #[test]
    fn crop_is_exact_and_scale_keeps_aspect() {
        let source = png(1000, 500);
        let crop = render(&source, 96, 96, Method::Crop).expect("crop");
        assert_eq!(crop.content_type, "image/png");
        assert_eq!(dimensions(&crop.bytes), (96, 96));
        let scale = render(&source, 320, 240, Method::Scale).expect("scale");
        assert_eq!(dimensions(&scale.bytes), (320, 160));
        let small = render(&png(100, 50), 320, 240, Method::Scale).expect("no upscale");
        assert_eq!(dimensions(&small.bytes), (100, 50));
    }

    #[test]
    fn garbage_and_truncated_images_are_clean_errors() {
        let err = render(b"just some text", 32, 32, Method::Crop).expect_err("not an image");
        assert!(matches!(err, Error::BadContent(_)), "{err:?}");
        let source = png(64, 64);
        let err = render(&source[..source.len() / 2], 32, 32, Method::Crop).expect_err("cut");
        assert!(matches!(err, Error::BadContent(_)), "{err:?}");
    }

    #[test]
    fn decompression_bombs_are_refused() {
        // A valid PNG header claiming 100000×100000 pixels.
        let mut bomb = png(1, 1);
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let err = render(&bomb, 32, 32, Method::Crop).expect_err("bomb");
        assert!(
            matches!(err, Error::TooLarge(_) | Error::BadContent(_)),
            "{err:?}"
        );
    }
}
