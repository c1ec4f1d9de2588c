//! The idx format used by MNIST: a big-endian magic number `0x0000_08_nd` (u8 data, `nd`
//! dimensions), `nd` big-endian u32 sizes, then the bytes. Checked strictly, because a truncated
//! download otherwise shows up only as a mysteriously bad model.

use crate::hash_cache::digest_files;
use crate::images::{fit_image, Target};
use crate::{
    decode_images, image_cache, invalid, io_err, Dataset, ImageShape, Manifest, Pixels, Preprocess,
    Result, Storage,
};
use image::{DynamicImage, GrayImage, RgbImage};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Grey images: count, height, width.
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Images of 1 or 3 channels: count, channels, height, width (CHW, as datasets hold them).
pub const IMAGES4_MAGIC: u32 = 0x0000_0804;
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// A parsed idx array borrowing its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray<'a> {
    pub dims: Vec<usize>,
    pub data: &'a [u8],
}

fn what(magic: u32) -> &'static str {
    match magic {
        IMAGES_MAGIC | IMAGES4_MAGIC => "image",
        LABELS_MAGIC => "labels",
        _ => "u8",
    }
}

/// Parses idx bytes (already decompressed) that must carry the `expected` magic number
/// ([`IDX_IMAGES_MAGIC`](crate::IDX_IMAGES_MAGIC) or
/// [`IDX_LABELS_MAGIC`](crate::IDX_LABELS_MAGIC)); `path` only names the file in errors.
/// The data length must match the header exactly: short means truncated, long means the file
/// is not what its header says.
pub fn parse_idx<'a>(path: &Path, bytes: &'a [u8], expected: u32) -> Result<IdxArray<'a>> {
    let (dims, header) = parse_header(path, bytes, bytes.len(), expected)?;
    Ok(IdxArray {
        dims,
        data: &bytes[header..],
    })
}

/// The dimensions and header length of an idx file of `total` bytes that starts with `bytes`
/// (its first 20 bytes are enough), checked as [`parse_idx`] checks them.
fn parse_header(
    path: &Path,
    bytes: &[u8],
    total: usize,
    expected: u32,
) -> Result<(Vec<usize>, usize)> {
    let kind = what(expected);
    let Some(head) = bytes.get(..4) else {
        return Err(invalid(
            path,
            format!("truncated idx file: {total} bytes, too short for the 4-byte magic number"),
        ));
    };
    let magic = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if magic != expected {
        let hint = match (expected, magic) {
            (IMAGES_MAGIC, LABELS_MAGIC) => "; this is a labels file, load the images-idx3 file",
            (LABELS_MAGIC, IMAGES_MAGIC) => "; this is an images file, not labels",
            _ => "",
        };
        return Err(invalid(
            path,
            format!(
                "not an idx {kind} file: magic 0x{magic:08x} (expected 0x{expected:08x}){hint}"
            ),
        ));
    }
    let nd = (expected & 0xff) as usize;
    let header = 4 + 4 * nd;
    let Some(dim_bytes) = bytes.get(4..header) else {
        return Err(invalid(
            path,
            format!("truncated idx file: header needs {header} bytes, found {total}"),
        ));
    };
    let dims: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let promised = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| invalid(path, format!("idx dimensions {dims:?} are too large")))?;
    let data = total.saturating_sub(header);
    let noun = if expected == LABELS_MAGIC {
        "labels"
    } else {
        "pixels"
    };
    if data < promised {
        return Err(invalid(
            path,
            format!("truncated idx file: header promises {promised} bytes of {noun}, found {data}"),
        ));
    }
    if data > promised {
        return Err(invalid(
            path,
            format!(
                "trailing bytes after idx data: header promises {promised} bytes of {noun}, found {data}"
            ),
        ));
    }
    Ok((dims, header))
}

/// An idx file: read into memory when stored raw and within the memory budget, left on disk
/// when larger (its images read when asked for), decompressed into memory once when gzipped
/// (whatever the name says, by the gzip magic).
enum IdxBytes {
    /// The open file, its first bytes (enough for any header) and its length.
    OnDisk {
        file: File,
        head: Vec<u8>,
        len: usize,
    },
    Owned(Vec<u8>),
}

impl IdxBytes {
    fn read(path: &Path, budget: u64) -> Result<IdxBytes> {
        let mut file = imprint_fs::open_regular(path)?;
        let len = file.metadata().map_err(io_err(path))?.len();
        let len = usize::try_from(len).map_err(|_| invalid(path, "too large to read"))?;
        let mut head = Vec::with_capacity(20);
        (&mut file)
            .take(20)
            .read_to_end(&mut head)
            .map_err(io_err(path))?;
        let raw = !head.starts_with(&[0x1f, 0x8b]);
        if raw && len as u64 > budget {
            return Ok(IdxBytes::OnDisk { file, head, len });
        }
        if raw {
            return IdxBytes::OnDisk { file, head, len }
                .all(path)
                .map(IdxBytes::Owned);
        }
        let mut compressed = head;
        file.read_to_end(&mut compressed).map_err(io_err(path))?;
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(compressed.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| invalid(path, format!("corrupt gzip data: {e}")))?;
        Ok(IdxBytes::Owned(out))
    }

    /// The bytes the header is read from, and the file's length.
    fn head(&self) -> (&[u8], usize) {
        match self {
            IdxBytes::OnDisk { head, len, .. } => (head, *len),
            IdxBytes::Owned(v) => (v, v.len()),
        }
    }

    /// Every byte, for a file small enough to hold (a labels file).
    fn all(self, path: &Path) -> Result<Vec<u8>> {
        match self {
            IdxBytes::Owned(v) => Ok(v),
            IdxBytes::OnDisk { mut file, head, .. } => {
                let mut out = head;
                file.read_to_end(&mut out).map_err(io_err(path))?;
                Ok(out)
            }
        }
    }
}

/// The standard labels file next to an images file (`*-images-idx3-ubyte[.gz]` or
/// `*-images-idx4-ubyte[.gz]` -> `*-labels-idx1-ubyte[.gz]`), trying the same compression first.
fn labels_path(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    let kind = ["images-idx3", "images-idx4"]
        .into_iter()
        .find(|k| name.contains(k))?;
    let same = name.replacen(kind, "labels-idx1", 1);
    let other = match same.strip_suffix(".gz") {
        Some(raw) => raw.to_string(),
        None => format!("{same}.gz"),
    };
    [same, other]
        .into_iter()
        .map(|n| images.with_file_name(n))
        .find(|p| p.is_file())
}

/// The header length, image count and stored shape (channels, height, width) of an idx image
/// file of `total` bytes starting with `bytes`, with either image magic.
fn parse_images(path: &Path, bytes: &[u8], total: usize) -> Result<(usize, usize, ImageShape)> {
    let magic = bytes
        .get(..4)
        .map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
    let expected = if magic == Some(IMAGES4_MAGIC) {
        IMAGES4_MAGIC
    } else {
        IMAGES_MAGIC
    };
    let (dims, header) = parse_header(path, bytes, total, expected)?;
    let (n, c, h, w) = match dims[..] {
        [n, h, w] => (n, 1, h, w),
        [n, c, h, w] if c == 1 || c == 3 => (n, c, h, w),
        [_, c, _, _] => {
            return Err(invalid(
                path,
                format!("idx4 images must have 1 or 3 channels, found {c}"),
            ))
        }
        _ => return Err(invalid(path, "idx image file must have 3 dimensions")),
    };
    if n == 0 {
        return Err(invalid(path, "idx file holds no images"));
    }
    if h == 0 || w == 0 {
        return Err(invalid(path, format!("idx images have zero size {h}x{w}")));
    }
    let shape = ImageShape {
        channels: c,
        height: h,
        width: w,
    };
    Ok((header, n, shape))
}

/// One stored image (CHW bytes of `stored`) as a decoded image the resizer takes.
fn as_image(path: &Path, src: &[u8], stored: ImageShape) -> Result<DynamicImage> {
    let too_large = || invalid(path, "idx images too large");
    let w = u32::try_from(stored.width).map_err(|_| too_large())?;
    let h = u32::try_from(stored.height).map_err(|_| too_large())?;
    let mismatch = || invalid(path, "idx image buffer size mismatch");
    if stored.channels == 1 {
        let img = GrayImage::from_raw(w, h, src.to_vec()).ok_or_else(mismatch)?;
        return Ok(DynamicImage::ImageLuma8(img));
    }
    let plane = stored.height * stored.width;
    let rgb = (0..plane)
        .flat_map(|p| (0..3).map(move |c| src[c * plane + p]))
        .collect();
    let img = RgbImage::from_raw(w, h, rgb).ok_or_else(mismatch)?;
    Ok(DynamicImage::ImageRgb8(img))
}

/// Loads the idx images at `path` (and the labels beside them), `source` being the path the
/// caller named (the file, or the folder holding it). Pixels are read from the file itself when
/// stored raw in the shape asked for; otherwise converted once, in memory or into the cache.
pub(crate) fn load_idx(
    path: &Path,
    source: &Path,
    prep: &Preprocess,
    storage: &Storage,
) -> Result<Dataset> {
    let image_bytes = IdxBytes::read(path, storage.memory_budget)?;
    let (head, total) = image_bytes.head();
    let (header, n, stored) = parse_images(path, head, total)?;
    let mut files = vec![path.to_path_buf()];

    let (labels, classes) = match labels_path(path) {
        None => (None, Vec::new()),
        Some(lp) => {
            let lbytes = IdxBytes::read(&lp, u64::MAX)?.all(&lp)?;
            files.push(lp.clone());
            let larr = parse_idx(&lp, &lbytes, LABELS_MAGIC)?;
            if larr.data.len() != n {
                return Err(invalid(
                    &lp,
                    format!(
                        "labels file has {} labels but {} has {n} images",
                        larr.data.len(),
                        path.display()
                    ),
                ));
            }
            let max = larr.data.iter().copied().max().unwrap_or(0) as usize;
            let labels: Vec<usize> = larr.data.iter().map(|&l| l as usize).collect();
            let classes = (0..=max).map(|c| c.to_string()).collect();
            (Some(labels), classes)
        }
    };
    let root = path.parent().unwrap_or(Path::new(""));
    let entries = digest_files(root, &files, storage)?;
    let manifest = Manifest::new(source, root, entries);

    let target = Target::resolve(prep, stored.channels, stored.height, stored.width)
        .map_err(|m| invalid(path, m))?;
    let shape = target.shape;
    let stored_pixels = match image_bytes {
        IdxBytes::OnDisk { file, .. } => {
            Pixels::on_disk(file, path, header, (n, stored.len()), None)
        }
        IdxBytes::Owned(bytes) => Pixels::from_bytes_at(bytes, header, stored.len()),
    };
    let pixels = if shape != stored {
        let cache = image_cache::cache_file(storage, source, prep);
        let digest = &manifest.summary().sha256;
        decode_images(
            path,
            n,
            shape,
            storage,
            cache.as_deref().map(|c| (c, digest.as_str())),
            |i, out| {
                let img = as_image(path, &stored_pixels.bytes(i), stored)?;
                fit_image(&img, &target, out);
                Ok(())
            },
        )?
    } else {
        stored_pixels
    };
    let name = path.display().to_string();
    Ok(Dataset {
        shape,
        pixels,
        labels,
        classes,
        items: (0..n).map(|i| format!("{name}#{i}")).collect(),
        source: Arc::new(manifest),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{file_in_tempdir, idx_in_tempdir, load_err, shape};
    use crate::testutil::*;
    use crate::{load, Preprocess};
    use proptest::prelude::*;

    #[test]
    fn idx_round_trip_with_labels() {
        let pixels = [0, 51, 102, 255, 1, 2, 3, 4, 9, 8, 7, 6];
        let (dir, img) = idx_in_tempdir("toy-images-idx3-ubyte", (3, 2, 2), &pixels);
        write_idx_labels(&dir.path().join("toy-labels-idx1-ubyte"), &[7, 0, 2]);
        let ds = load(&img, &Preprocess::default()).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.shape, shape(1, 2, 2));
        assert_eq!(ds.image(0), &[0.0, 0.2, 0.4, 1.0]);
        assert_eq!(ds.image(2)[0], 9.0 / 255.0);
        assert_eq!(ds.labels, Some(vec![7, 0, 2]));
        assert_eq!(ds.classes.len(), 8);
        assert_eq!(ds.classes[7], "7");
        assert_eq!(ds.items[1], format!("{}#1", img.display()));
        let files = ds.source.entries();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].path, "toy-images-idx3-ubyte");
        assert_eq!(files[0].bytes, 16 + 12);
        assert_eq!(files[0].sha256.len(), 64);
    }

    #[test]
    fn gz_idx_with_raw_labels_and_resize() {
        let (dir, img) = idx_in_tempdir("toy-images-idx3-ubyte.gz", (2, 2, 2), &[255; 8]);
        // labels stored uncompressed beside gzipped images are still found
        write_idx_labels(&dir.path().join("toy-labels-idx1-ubyte"), &[1, 0]);
        let ds = load(&img, &Preprocess::default()).unwrap();
        assert_eq!(ds.pixels.to_vec(), vec![1.0; 8]);
        assert_eq!(ds.labels, Some(vec![1, 0]));
        let prep = Preprocess {
            channels: Some(3),
            height: Some(4),
            width: Some(3),
            ..Default::default()
        };
        let ds = load(&img, &prep).unwrap();
        assert_eq!(ds.shape.len(), 36);
        assert_eq!(ds.pixels.to_vec(), vec![1.0; 72]);
    }

    #[test]
    fn resize_keeps_a_horizontal_ramp_horizontal() {
        // two rows, three columns, dark on the left and bright on the right
        let ramp = [0, 128, 255, 0, 128, 255];
        let (_dir, img) = idx_in_tempdir("ramp-images-idx3-ubyte", (1, 2, 3), &ramp);
        let prep = Preprocess {
            height: Some(4),
            width: Some(6),
            ..Default::default()
        };
        let ds = load(&img, &prep).unwrap();
        assert_eq!((ds.shape.height, ds.shape.width), (4, 6));
        let image = ds.image(0);
        let rows: Vec<&[f32]> = image.chunks(6).collect();
        for row in &rows {
            assert_eq!(row, &rows[0], "every row alike: {rows:?}");
            assert!(row.windows(2).all(|p| p[0] <= p[1]), "{rows:?}");
        }
        assert!(rows[0][0] < 0.1 && rows[0][5] > 0.9, "{rows:?}");
    }

    #[test]
    fn unlabeled_when_no_labels_file() {
        let (_dir, img) = idx_in_tempdir("x-images-idx3-ubyte", (1, 1, 1), &[0]);
        let ds = load(&img, &Preprocess::default()).unwrap();
        assert!(ds.labels.is_none());
        assert!(ds.classes.is_empty());
        assert_eq!(ds.describe(), "1 images 1x1x1, unlabeled");
    }

    #[test]
    fn truncated_idx_is_error() {
        let (_dir, img) = idx_in_tempdir("t-images-idx3-ubyte", (60000, 28, 28), &[0; 1000]);
        assert_eq!(
            load_err(&img),
            format!(
                "{}: truncated idx file: header promises 47040000 bytes of pixels, found 1000",
                img.display()
            )
        );
        let bytes = std::fs::read(&img).unwrap();
        std::fs::write(&img, &bytes[..10]).unwrap();
        let err = load_err(&img);
        assert!(err.contains("header needs 16 bytes, found 10"), "{err}");
    }

    #[test]
    fn trailing_bytes_are_error() {
        let (_dir, img) = idx_in_tempdir("t-images-idx3-ubyte", (1, 1, 2), &[1, 2, 3]);
        let err = load_err(&img);
        assert!(err.contains("trailing bytes"), "{err}");
        assert!(err.contains("promises 2 bytes of pixels, found 3"), "{err}");
    }

    #[test]
    fn wrong_magic_is_error() {
        let wrong = [0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0];
        let (dir, img) = file_in_tempdir("w-images-idx3-ubyte", &wrong);
        assert_eq!(
            load_err(&img),
            format!(
                "{}: not an idx image file: magic 0x12345678 (expected 0x00000803)",
                img.display()
            )
        );
        let lab = dir.path().join("w-labels-idx1-ubyte");
        write_idx_labels(&lab, &[1, 2]);
        let err = load_err(&lab);
        assert!(err.contains("this is a labels file"), "{err}");
    }

    #[test]
    fn label_count_mismatch_names_labels_file() {
        let (dir, img) = idx_in_tempdir("m-images-idx3-ubyte.gz", (3, 1, 1), &[1, 2, 3]);
        let lab = dir.path().join("m-labels-idx1-ubyte.gz");
        write_idx_labels(&lab, &[1, 2]);
        let err = load_err(&img);
        assert!(err.starts_with(&lab.display().to_string()), "{err}");
        assert!(err.contains("has 2 labels but"), "{err}");
        assert!(err.contains("has 3 images"), "{err}");
    }

    #[test]
    fn corrupt_gzip_is_error() {
        let corrupt = [0x1f, 0x8b, 8, 0, 1, 2, 3];
        let (_dir, img) = file_in_tempdir("c-images-idx3-ubyte.gz", &corrupt);
        let err = load_err(&img);
        assert!(err.contains("corrupt gzip"), "{err}");
    }

    #[test]
    fn folder_with_one_idx_loads_it_and_with_two_asks_which() {
        let dir = tempfile::tempdir().unwrap();
        write_idx_images(
            &dir.path().join("t10k-images-idx3-ubyte"),
            2,
            1,
            2,
            &[0, 255, 51, 102],
        );
        write_idx_labels(&dir.path().join("t10k-labels-idx1-ubyte"), &[3, 1]);
        let ds = load(dir.path(), &Preprocess::default()).unwrap();
        assert_eq!((ds.len(), ds.shape.len()), (2, 2));
        assert_eq!(ds.labels, Some(vec![3, 1]));
        assert_eq!(ds.classes, ["0", "1", "2", "3"]);
        write_idx_images(
            &dir.path().join("train-images-idx3-ubyte"),
            1,
            1,
            2,
            &[0, 0],
        );
        let err = load_err(dir.path());
        assert!(err.starts_with(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("several idx image files"), "{err}");
        assert!(err.contains("t10k-images-idx3-ubyte"), "{err}");
    }

    proptest! {
        #[test]
        fn parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..64),
                               images in any::<bool>(), with_magic in any::<bool>()) {
            let magic = if images { IMAGES_MAGIC } else { LABELS_MAGIC };
            let mut bytes = Vec::new();
            if with_magic {
                bytes.extend_from_slice(&magic.to_be_bytes());
            }
            bytes.extend_from_slice(&body);
            if let Ok(arr) = parse_idx(Path::new("fuzz"), &bytes, magic) {
                let promised: usize = arr.dims.iter().product();
                prop_assert_eq!(arr.data.len(), promised);
            }
        }

        #[test]
        fn loader_never_panics(body in proptest::collection::vec(any::<u8>(), 0..40),
                               n in 0u32..4, h in 0u32..4, w in 0u32..4) {
            let (_dir, img) = idx_in_tempdir("f-images-idx3-ubyte", (n, h, w), &body);
            let res = load(&img, &Preprocess { height: Some(3), ..Default::default() });
            if let Ok(ds) = res {
                prop_assert_eq!(ds.pixels.len(), ds.len());
                prop_assert_eq!(ds.pixels.to_vec().len(), ds.len() * ds.shape.len());
            }
        }
    }
}
