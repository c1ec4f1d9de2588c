//! Grids of small images (reconstructions, filters) as PNG.

use crate::plots::write_png;
use crate::{invalid, Result};
use std::path::Path;

/// Gap in pixels between grid cells and around the grid in [`image_grid`].
pub const GRID_GAP: usize = 2;
/// Each image in [`image_grid`] is upscaled so that its shorter side is at least this many pixels.
pub const GRID_MIN_CELL: usize = 56;

/// Integer upscaling factor [`image_grid`] uses for images of `height` x `width`:
/// `ceil(GRID_MIN_CELL / min(height, width))`, at least 1.
pub fn grid_scale(height: usize, width: usize) -> usize {
    let side = height.min(width).max(1);
    GRID_MIN_CELL.div_ceil(side).max(1)
}

/// Writes a PNG grid of images. `rows` is a list of image rows, each a list of images in CHW
/// layout with values in [0, 1] (clamped; NaN drawn as 0), `channels` 1 (grey) or 3 (RGB), all
/// `height` x `width`. Each image is upscaled by [`grid_scale`] with nearest-neighbour pixels and
/// cells are separated (and surrounded) by a white gap of [`GRID_GAP`] pixels, so the PNG is
/// `cols * width * s + (cols + 1) * GRID_GAP` wide and `rows * height * s + (rows + 1) * GRID_GAP`
/// high, where `cols` is the longest row. Shorter rows leave their trailing cells blank.
pub fn image_grid(
    path: &Path,
    channels: usize,
    height: usize,
    width: usize,
    rows: &[Vec<&[f32]>],
) -> Result<()> {
    if channels != 1 && channels != 3 {
        return Err(invalid(
            path,
            format!("image grid needs 1 or 3 channels, got {channels}"),
        ));
    }
    if height == 0 || width == 0 {
        return Err(invalid(
            path,
            format!("image grid needs non-empty images, got {height}x{width}"),
        ));
    }
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    if cols == 0 {
        return Err(invalid(path, "image grid has no images"));
    }
    let expected = channels * height * width;
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            if img.len() != expected {
                return Err(invalid(
                    path,
                    format!(
                        "image at row {r}, column {c} has {} values, expected {channels}x{height}x{width} = {expected}",
                        img.len()
                    ),
                ));
            }
        }
    }
    let s = grid_scale(height, width);
    let (cell_w, cell_h) = (width * s, height * s);
    let out_w = cols * cell_w + (cols + 1) * GRID_GAP;
    let out_h = rows.len() * cell_h + (rows.len() + 1) * GRID_GAP;
    let (Ok(w32), Ok(h32)) = (u32::try_from(out_w), u32::try_from(out_h)) else {
        return Err(invalid(path, "image grid too large"));
    };
    let mut rgb = vec![255u8; out_w * out_h * 3];
    let to_byte = |v: f32| {
        if v.is_nan() {
            0
        } else {
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        }
    };
    let plane = height * width;
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let x0 = GRID_GAP + c * (cell_w + GRID_GAP);
            let y0 = GRID_GAP + r * (cell_h + GRID_GAP);
            for y in 0..cell_h {
                for x in 0..cell_w {
                    let src = (y / s) * width + x / s;
                    let px = if channels == 1 {
                        [to_byte(img[src]); 3]
                    } else {
                        [
                            to_byte(img[src]),
                            to_byte(img[plane + src]),
                            to_byte(img[2 * plane + src]),
                        ]
                    };
                    let dst = ((y0 + y) * out_w + x0 + x) * 3;
                    rgb[dst..dst + 3].copy_from_slice(&px);
                }
            }
        }
    }
    write_png(path, w32, h32, rgb)
}
