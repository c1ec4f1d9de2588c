//! Folders of image files and CSV lists of them, decoded in parallel into one pixel buffer.

use crate::hash_cache::digest_files;
use crate::image_cache::Cached;
use crate::pixels::to_byte;
use crate::{
    decode_images, image_cache, invalid, io_err, DataError, Dataset, ImageShape, Manifest,
    Preprocess, Result, Storage,
};
use image::imageops::{resize, FilterType};
use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageFormat, ImageReader, Luma, Rgb};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];

/// The shape every image is converted to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target {
    pub shape: ImageShape,
}

impl Target {
    /// Preprocess settings win; otherwise the source's own channels and size are kept.
    pub fn resolve(
        prep: &Preprocess,
        channels: usize,
        height: usize,
        width: usize,
    ) -> std::result::Result<Target, String> {
        let shape = ImageShape {
            channels: prep.channels.unwrap_or(channels),
            height: prep.height.unwrap_or(height),
            width: prep.width.unwrap_or(width),
        };
        if shape.height == 0 || shape.width == 0 {
            return Err(format!(
                "image size {}x{} is empty",
                shape.height, shape.width
            ));
        }
        if u32::try_from(shape.height).is_err() || u32::try_from(shape.width).is_err() {
            return Err(format!(
                "image size {}x{} is too large",
                shape.height, shape.width
            ));
        }
        Ok(Target { shape })
    }

    pub fn channels(&self) -> usize {
        self.shape.channels
    }

    fn dims(&self) -> (u32, u32) {
        // Both fit in u32: checked in `resolve`.
        (self.shape.width as u32, self.shape.height as u32)
    }
}

/// A decoded image brought to the target's channels and size, as bytes (CHW). Converted and
/// resized in `f32` (values `b / 255`) and kept as the nearest byte: exact for an image already
/// of the target's size and channels.
pub(crate) fn fit_image(img: &DynamicImage, target: &Target, out: &mut [u8]) {
    let mut values = vec![0.0f32; out.len()];
    if target.channels() == 1 {
        fit_grey(img.to_luma32f(), target, &mut values);
    } else {
        fit_rgb(img.to_rgb32f(), target, &mut values);
    }
    for (o, &v) in out.iter_mut().zip(&values) {
        *o = to_byte(v);
    }
}

/// Resizes a grey image to the target (Triangle filter) and writes it as 1 or 3 channels.
fn fit_grey(buf: ImageBuffer<Luma<f32>, Vec<f32>>, target: &Target, out: &mut [f32]) {
    let (w, h) = target.dims();
    let buf = if buf.dimensions() == (w, h) {
        buf
    } else {
        resize(&buf, w, h, FilterType::Triangle)
    };
    let plane = buf.as_raw();
    if plane.is_empty() {
        return;
    }
    for chunk in out.chunks_mut(plane.len()) {
        for (o, &v) in chunk.iter_mut().zip(plane) {
            *o = v.clamp(0.0, 1.0);
        }
    }
}

/// Resizes an RGB image to the target and writes it channel-major (CHW).
fn fit_rgb(buf: ImageBuffer<Rgb<f32>, Vec<f32>>, target: &Target, out: &mut [f32]) {
    let (w, h) = target.dims();
    let buf = if buf.dimensions() == (w, h) {
        buf
    } else {
        resize(&buf, w, h, FilterType::Triangle)
    };
    let plane = (w as usize) * (h as usize);
    for (p, px) in buf.as_raw().chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            if let Some(o) = out.get_mut(c * plane + p) {
                *o = v.clamp(0.0, 1.0);
            }
        }
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// One entry of a folder and what it is (a link, as what it points to).
struct Entry {
    path: PathBuf,
    is_file: bool,
    is_dir: bool,
}

/// Sorted entries of a directory, hidden ones (`.git`, editor droppings) left out. Their kind
/// comes with the listing (one more look only for links): a folder of 200,000 images is not
/// asked about each file twice.
fn entries(dir: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        if is_hidden(&path) {
            continue;
        }
        let kind = entry.file_type().map_err(io_err(&path))?;
        let (is_file, is_dir) = if kind.is_symlink() {
            std::fs::metadata(&path).map_or((false, false), |m| (m.is_file(), m.is_dir()))
        } else {
            (kind.is_file(), kind.is_dir())
        };
        out.push(Entry {
            path,
            is_file,
            is_dir,
        });
    }
    // All are the folder's path joined with a name, so their bytes order them as whole paths
    // would (and as their names would), without taking each path apart at every comparison.
    out.sort_unstable_by(|a, b| a.path.as_os_str().cmp(b.path.as_os_str()));
    Ok(out)
}

fn images_among(entries: &[Entry]) -> Vec<PathBuf> {
    entries
        .iter()
        .filter(|e| e.is_file && is_image(&e.path))
        .map(|e| e.path.clone())
        .collect()
}

fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(images_among(&entries(dir)?))
}

/// What a folder of images holds, read from the files' headers alone (nothing is decoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Survey {
    /// Class folders and their image counts, in name order; empty for a folder of loose images.
    pub classes: Vec<(String, usize)>,
    /// Every image's width and height, in no particular order.
    pub sizes: Vec<(u32, u32)>,
    /// Whether any image has colour.
    pub colour: bool,
}

impl Survey {
    pub fn images(&self) -> usize {
        self.sizes.len()
    }
}

/// Surveys `dir` as [`load_dir`] would read it: one sub-folder per class, or loose images.
pub fn survey_folder(dir: &Path) -> Result<Survey> {
    let all = entries(dir)?;
    let loose = images_among(&all);
    let mut classes = Vec::new();
    let mut paths = Vec::new();
    for sub in all.iter().filter(|e| e.is_dir).map(|e| &e.path) {
        let imgs = images_in(sub)?;
        if imgs.is_empty() {
            continue;
        }
        let name = sub
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        classes.push((name, imgs.len()));
        paths.extend(imgs);
    }
    if !classes.is_empty() && !loose.is_empty() {
        return Err(invalid(
            dir,
            format!(
                "has class sub-folders and also loose images such as {}; move every image into \
                 a class folder",
                loose[0].display()
            ),
        ));
    }
    if classes.is_empty() {
        paths = loose;
    }
    if paths.is_empty() {
        return Err(invalid(
            dir,
            "no images found (PNG, JPEG or BMP, directly inside or in one sub-folder per class)",
        ));
    }
    let headers: Vec<(u32, u32, bool)> =
        paths.par_iter().map(|p| header(p)).collect::<Result<_>>()?;
    Ok(Survey {
        classes,
        sizes: headers.iter().map(|&(w, h, _)| (w, h)).collect(),
        colour: headers.iter().any(|h| h.2),
    })
}

/// An image file's width, height and whether it has colour, from its header.
fn header(path: &Path) -> Result<(u32, u32, bool)> {
    let mut reader = ImageReader::open(path)
        .map_err(io_err(path))?
        .with_guessed_format()
        .map_err(io_err(path))?;
    reader.limits(decode_limits());
    let decoder = reader.into_decoder().map_err(decode_err(path))?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    Ok((w, h, image::ImageDecoder::color_type(&decoder).has_color()))
}

/// One sub-folder per class, or images directly inside for unlabeled data.
pub(crate) fn load_dir(dir: &Path, prep: &Preprocess, storage: &Storage) -> Result<Dataset> {
    let all = entries(dir)?;
    let loose = images_among(&all);
    let mut classes = Vec::new();
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    for sub in all.iter().filter(|e| e.is_dir).map(|e| &e.path) {
        let inside = entries(sub)?;
        let imgs = images_among(&inside);
        if imgs.is_empty() {
            // A class whose images sit one folder deeper would be dropped without a word.
            if let Some(deeper) = inside
                .iter()
                .find(|e| e.is_dir && images_in(&e.path).is_ok_and(|i| !i.is_empty()))
                .map(|e| &e.path)
            {
                return Err(invalid(
                    sub,
                    format!(
                        "holds no images itself but {} does; a class's images must sit directly \
                         in its folder",
                        deeper.display()
                    ),
                ));
            }
            continue;
        }
        let name = sub
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        labels.extend(std::iter::repeat_n(classes.len(), imgs.len()));
        classes.push(name);
        paths.extend(imgs);
    }
    if classes.is_empty() && loose.is_empty() {
        // a folder holding one idx image file (like data/digits) names that file
        let idx: Vec<&PathBuf> = all
            .iter()
            .filter(|e| {
                e.is_file
                    && e.path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.contains("images-idx3") || n.contains("images-idx4"))
            })
            .map(|e| &e.path)
            .collect();
        match idx[..] {
            [one] => return crate::idx::load_idx(one, dir, prep, storage),
            [] => {}
            _ => {
                let names: Vec<String> = idx
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect();
                return Err(invalid(
                    dir,
                    format!(
                        "holds several idx image files ({}); name the one to load",
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    let listed = Listing {
        origin: dir,
        root: dir,
        list: None,
    };
    if classes.is_empty() {
        return decode_dataset(&listed, loose, None, Vec::new(), prep, storage);
    }
    if let Some(stray) = loose.first() {
        return Err(invalid(
            dir,
            format!(
                "has class sub-folders and also loose images such as {}; \
                 move every image into a class folder",
                stray.display()
            ),
        ));
    }
    decode_dataset(&listed, paths, Some(labels), classes, prep, storage)
}

/// The columns of a `path,label` (or `file,label`) header row, in either order: `Some(true)`
/// when the label comes first; `None` for a data row.
fn header_order(rec: &csv::StringRecord) -> Option<bool> {
    let is_path = |f: &str| f.eq_ignore_ascii_case("path") || f.eq_ignore_ascii_case("file");
    let is_label = |f: &str| f.eq_ignore_ascii_case("label");
    match rec.len() {
        2 if is_path(&rec[0]) && is_label(&rec[1]) => Some(false),
        2 if is_label(&rec[0]) && is_path(&rec[1]) => Some(true),
        _ => None,
    }
}

/// `path,label` rows, paths relative to the CSV's folder.
pub(crate) fn load_csv(csv_path: &Path, prep: &Preprocess, storage: &Storage) -> Result<Dataset> {
    let raw = std::fs::read(csv_path).map_err(io_err(csv_path))?;
    let base = csv_path.parent().unwrap_or(Path::new(""));
    let shown = csv_path.display().to_string();
    let csv_err = |line: u64, msg: String| DataError::Csv {
        path: shown.clone(),
        line,
        msg,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(raw.as_slice());
    let mut paths = Vec::new();
    let mut names = Vec::new();
    let mut label_first = false;
    for (k, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            csv_err(line, e.to_string().replace('\n', " "))
        })?;
        let line = rec.position().map_or(k as u64 + 1, |p| p.line());
        if k == 0 {
            if let Some(order) = header_order(&rec) {
                label_first = order;
                continue;
            }
        }
        if rec.len() != 2 {
            return Err(csv_err(
                line,
                format!("expected 2 fields (path,label), found {}", rec.len()),
            ));
        }
        let (file, label) = if label_first {
            (&rec[1], &rec[0])
        } else {
            (&rec[0], &rec[1])
        };
        if file.is_empty() || label.is_empty() {
            return Err(csv_err(line, "empty path or label".into()));
        }
        let full = base.join(file);
        if full.is_dir() {
            return Err(csv_err(
                line,
                format!(
                    "{} is a folder; a list names one image file per row",
                    full.display()
                ),
            ));
        }
        if !full.is_file() {
            return Err(csv_err(
                line,
                format!("image file not found: {}", full.display()),
            ));
        }
        paths.push(full);
        names.push(label.to_string());
    }
    let classes = sorted_classes(&names);
    let index: std::collections::HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let labels = names
        .iter()
        .map(|n| index.get(n.as_str()).copied().unwrap_or(0))
        .collect();
    let listed = Listing {
        origin: csv_path,
        root: base,
        list: Some(csv_path),
    };
    decode_dataset(&listed, paths, Some(labels), classes, prep, storage)
}

/// Numeric order when every label is an integer (so "10" follows "9"), text order otherwise.
fn class_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        _ => a.cmp(b),
    }
}

fn sorted_classes(names: &[String]) -> Vec<String> {
    let mut classes = names.to_vec();
    let numeric = classes.iter().all(|c| c.parse::<i64>().is_ok());
    if numeric {
        classes.sort_by(|a, b| class_order(a, b));
    } else {
        classes.sort();
    }
    classes.dedup();
    classes
}

/// Images larger than this are refused before they are decoded: a 20000 x 20000 photo would
/// take 1.6 GB as RGBA, a corrupt header promises anything.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
const MAX_DECODE_BYTES: u64 = 512 << 20;

fn decode_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

/// The error for an image `path` that does not decode, on one line.
fn decode_err(path: &Path) -> impl Fn(image::ImageError) -> DataError + '_ {
    move |e| {
        let reason = e.to_string().replace('\n', " ");
        invalid(path, format!("cannot decode image: {reason}"))
    }
}

/// Whether an image file holds colour, read from its header alone.
fn has_colour(path: &Path) -> Result<bool> {
    let mut reader = ImageReader::open(path)
        .map_err(io_err(path))?
        .with_guessed_format()
        .map_err(io_err(path))?;
    reader.limits(decode_limits());
    let decoder = reader.into_decoder().map_err(decode_err(path))?;
    Ok(image::ImageDecoder::color_type(&decoder).has_color())
}

/// Bytes of images being decoded at once, kept within the memory budget: a folder of a few
/// huge photos among small ones decodes the huge ones a few at a time (one alone when it takes
/// more than the budget by itself), never every one at once on every core.
pub(crate) struct DecodeGate {
    budget: u64,
    in_flight: Mutex<u64>,
    freed: Condvar,
}

/// Room taken in a [`DecodeGate`], given back when dropped.
pub(crate) struct Room<'a> {
    gate: &'a DecodeGate,
    bytes: u64,
}

impl DecodeGate {
    pub(crate) fn new(budget: u64) -> DecodeGate {
        DecodeGate {
            budget,
            in_flight: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Waits until `bytes` fit beside what is in flight (or nothing is), then takes them.
    fn admit(&self, bytes: u64) -> Room<'_> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        while *in_flight > 0 && in_flight.saturating_add(bytes) > self.budget {
            in_flight = self
                .freed
                .wait(in_flight)
                .unwrap_or_else(|e| e.into_inner());
        }
        *in_flight += bytes;
        Room { gate: self, bytes }
    }
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        let mut in_flight = self
            .gate
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *in_flight -= self.bytes;
        self.gate.freed.notify_all();
    }
}

/// Reads and decodes one image and brings it to `target` into `out`, taking room in `gate` for
/// what its decoding holds at once (the file, the decoded image and its values as `f32`), known
/// from its header before anything is decoded.
fn decode_into(path: &Path, target: &Target, gate: &DecodeGate, out: &mut [u8]) -> Result<()> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes.as_slice()));
    if let Ok(format) = ImageFormat::from_path(path) {
        reader.set_format(format);
    }
    let mut reader = reader.with_guessed_format().map_err(io_err(path))?;
    reader.limits(decode_limits());
    let decoder = reader.into_decoder().map_err(decode_err(path))?;
    decoder_limits_allow(&decoder).map_err(decode_err(path))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(invalid(path, "image has zero size"));
    }
    let values = u64::from(w) * u64::from(h) * 4 * target.channels() as u64;
    let _room = gate.admit(bytes.len() as u64 + decoder.total_bytes() + values);
    let img = DynamicImage::from_decoder(decoder).map_err(decode_err(path))?;
    drop(bytes);
    fit_image(&img, target, out);
    Ok(())
}

/// The allocation limit [`ImageReader::decode`] checks before decoding, checked here too.
fn decoder_limits_allow(decoder: &impl ImageDecoder) -> image::ImageResult<()> {
    decode_limits().reserve(decoder.total_bytes())
}

/// Where a list of image files came from: the source as named, the folder its manifest's
/// paths are relative to, and the CSV list itself when there is one (a file of the source too).
struct Listing<'a> {
    origin: &'a Path,
    root: &'a Path,
    list: Option<&'a Path>,
}

/// The height and width of the images of a folder or list unless `data.preprocess` sets them:
/// CIFAR-10's size, which the ResNets of the CIFAR layout take, small enough to train on a CPU;
/// a size of its own, never that of whichever file comes first (a 6000x6000 photo would make
/// every image 108 MB).
pub const DEFAULT_SIDE: usize = 32;

/// The shape images are brought to: preprocess settings, else [`DEFAULT_SIDE`] a side, and
/// colour when any image has it (so no photo loses its colour to a grey first file).
fn resolve_target(origin: &Path, paths: &[PathBuf], prep: &Preprocess) -> Result<Target> {
    if paths.is_empty() {
        return Err(invalid(origin, "no images found"));
    }
    let channels = match prep.channels {
        Some(c) => c,
        None => {
            let colour: Result<Vec<bool>> = paths.par_iter().map(|p| has_colour(p)).collect();
            if colour?.into_iter().any(|c| c) {
                3
            } else {
                1
            }
        }
    };
    Target::resolve(prep, channels, DEFAULT_SIDE, DEFAULT_SIDE).map_err(|m| invalid(origin, m))
}

/// Hashes the files (through the digest cache), then decodes the images: from the image cache
/// when it holds this very content, else afresh (into memory, or the cache when over budget).
fn decode_dataset(
    listed: &Listing,
    paths: Vec<PathBuf>,
    labels: Option<Vec<usize>>,
    classes: Vec<String>,
    prep: &Preprocess,
    storage: &Storage,
) -> Result<Dataset> {
    if paths.is_empty() {
        return Err(invalid(listed.origin, "no images found"));
    }
    let files: Vec<PathBuf> = listed
        .list
        .map(Path::to_path_buf)
        .into_iter()
        .chain(paths.iter().cloned())
        .collect();
    let entries = digest_files(listed.root, &files, storage)?;
    let manifest = Manifest::new(listed.origin, listed.root, entries);
    let digest = manifest.summary().sha256.as_str();
    let cache = image_cache::cache_file(storage, listed.origin, prep);
    let budget = usize::try_from(storage.memory_budget).unwrap_or(usize::MAX);
    // A cache of this content serves a source over the budget (without reading every file's
    // header for its colour); within it, the images are decoded into memory as the budget
    // allows. A damaged cache is left to `decode_images`, which says so and rebuilds it.
    let cached = match &cache {
        Some(file) => match image_cache::open(file, paths.len(), digest)? {
            Cached::Usable(shape, pixels) if paths.len().saturating_mul(shape.len()) > budget => {
                Some((shape, pixels))
            }
            _ => None,
        },
        None => None,
    };
    let (shape, pixels) = match cached {
        Some(found) => found,
        None => {
            let target = resolve_target(listed.origin, &paths, prep)?;
            let gate = DecodeGate::new(storage.memory_budget);
            let pixels = decode_images(
                listed.origin,
                paths.len(),
                target.shape,
                storage,
                cache.as_deref().map(|c| (c, digest)),
                |i, out| decode_into(&paths[i], &target, &gate, out),
            )?;
            (target.shape, pixels)
        }
    };
    Ok(Dataset {
        shape,
        pixels,
        labels,
        classes,
        items: paths.iter().map(|p| p.display().to_string()).collect(),
        source: Arc::new(manifest),
    })
}

#[cfg(test)]
mod tests {
    use crate::{load, ImageShape, Preprocess};
    use image::{ImageBuffer, Luma, Rgb, Rgba};
    use std::path::Path;

    fn grey(path: &Path, w: u32, h: u32, v: u8) {
        ImageBuffer::from_pixel(w, h, Luma([v])).save(path).unwrap();
    }

    /// Images brought to `height` x `width`.
    fn size(height: usize, width: usize) -> Preprocess {
        Preprocess {
            height: Some(height),
            width: Some(width),
            ..Default::default()
        }
    }

    /// Unless set, a folder's images take the default size, whatever size its first file has:
    /// a large photo sorting first no longer makes every image its size.
    #[test]
    fn a_folder_takes_the_default_size_not_its_first_files() {
        let dir = tempfile::tempdir().unwrap();
        grey(&dir.path().join("0.png"), 1500, 1500, 200);
        for i in 1..4 {
            grey(&dir.path().join(format!("{i}.png")), 8, 8, 10 * i as u8);
        }
        let ds = load(dir.path(), &Preprocess::default()).unwrap();
        assert_eq!(
            ds.shape,
            ImageShape {
                channels: 1,
                height: 32,
                width: 32
            }
        );
        assert!(ds.image(0).iter().all(|&v| v == 200.0 / 255.0));
        assert!(ds.image(2).iter().all(|&v| v == 20.0 / 255.0));
        // Set, the size is the setting's.
        assert_eq!(load(dir.path(), &size(8, 8)).unwrap().shape.len(), 64);
    }

    /// Decoding takes room in the gate before it starts: past the budget, a second image waits
    /// for the first to be done; one image larger than the budget goes alone.
    #[test]
    fn decoding_waits_for_room_within_the_budget() {
        let gate = super::DecodeGate::new(100);
        let first = gate.admit(60);
        let order = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            s.spawn(|| {
                let _second = gate.admit(60);
                order.lock().unwrap().push("second admitted");
            });
            std::thread::sleep(std::time::Duration::from_millis(100));
            order.lock().unwrap().push("first done");
            drop(first);
        });
        assert_eq!(*order.lock().unwrap(), ["first done", "second admitted"]);
        let _alone = gate.admit(1000);
    }

    #[test]
    fn folder_per_class_mixed_formats_and_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for c in ["b_cat", "a_dog", "empty"] {
            std::fs::create_dir(root.join(c)).unwrap();
        }
        grey(&root.join("a_dog/1.png"), 4, 3, 255);
        // RGBA: alpha dropped, colour kept as luma
        ImageBuffer::from_pixel(4, 3, Rgba([0u8, 0, 0, 10]))
            .save(root.join("a_dog/2.PNG"))
            .unwrap();
        // 16-bit grey of another size: resized to 4x3
        ImageBuffer::from_pixel(8, 6, Luma([65535u16]))
            .save(root.join("b_cat/x.png"))
            .unwrap();
        std::fs::write(root.join("b_cat/notes.txt"), "not an image").unwrap();
        std::fs::write(root.join(".hidden.png"), "ignored").unwrap();

        // One file has colour channels (RGBA), so all are read as RGB, whichever comes first.
        let sized = Preprocess {
            height: Some(3),
            width: Some(4),
            ..Default::default()
        };
        let ds = load(root, &sized).unwrap();
        assert_eq!(ds.classes, vec!["a_dog", "b_cat"]);
        assert_eq!(ds.labels, Some(vec![0, 0, 1]));
        assert_eq!(
            ds.shape,
            ImageShape {
                channels: 3,
                height: 3,
                width: 4
            }
        );
        assert!(ds.image(0).iter().all(|&v| v == 1.0));
        assert!(ds.image(1).iter().all(|&v| v == 0.0));
        assert!(ds.image(2).iter().all(|&v| (v - 1.0).abs() < 1e-5));
        assert_eq!(ds.source.entries().len(), 3);
        assert_eq!(ds.source.entries()[0].path, "a_dog/1.png");
        assert!(ds.items[1].ends_with("2.PNG"));
        assert_eq!(ds.describe(), "3 images 3x3x4, 2 classes: a_dog:2 b_cat:1");
        // Asked for grey, every file is read as grey: alpha dropped, colour kept as luma.
        let grey_prep = Preprocess {
            channels: Some(1),
            ..sized.clone()
        };
        let ds = load(root, &grey_prep).unwrap();
        assert_eq!(ds.describe(), "3 images 1x3x4, 2 classes: a_dog:2 b_cat:1");
        assert!(ds.image(1).iter().all(|&v| v == 0.0));

        // forced RGB at another size
        let prep = Preprocess {
            channels: Some(3),
            height: Some(2),
            width: Some(2),
            ..Default::default()
        };
        let ds = load(root, &prep).unwrap();
        assert_eq!(ds.shape.len(), 12);
        assert!(ds.image(0).iter().all(|&v| (v - 1.0).abs() < 1e-5));
    }

    #[test]
    fn rgb_is_stored_channel_major() {
        let dir = tempfile::tempdir().unwrap();
        let mut img = ImageBuffer::from_pixel(2, 1, Rgb([255u8, 0, 0]));
        img.put_pixel(1, 0, Rgb([0, 0, 255]));
        img.save(dir.path().join("a.bmp")).unwrap();
        let ds = load(dir.path(), &size(1, 2)).unwrap();
        assert!(ds.labels.is_none());
        assert_eq!(ds.shape.channels, 3);
        assert_eq!(ds.image(0), &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn unlabeled_folder() {
        let dir = tempfile::tempdir().unwrap();
        for (i, v) in [10u8, 20, 30].iter().enumerate() {
            grey(&dir.path().join(format!("{i}.png")), 2, 2, *v);
        }
        let ds = load(dir.path(), &Preprocess::default()).unwrap();
        assert_eq!(ds.len(), 3);
        assert!(ds.labels.is_none());
        assert!(ds.class_counts().is_empty());
        assert_eq!(ds.image(2)[0], 30.0 / 255.0);
    }

    #[test]
    fn loose_images_beside_class_folders_are_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        grey(&dir.path().join("a/1.png"), 2, 2, 0);
        grey(&dir.path().join("stray.png"), 2, 2, 0);
        let err = load(dir.path(), &Preprocess::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("stray.png"), "{err}");
    }

    #[test]
    fn corrupt_png_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        grey(&dir.path().join("a.png"), 2, 2, 0);
        let bad = dir.path().join("b.png");
        std::fs::write(&bad, b"\x89PNG\r\n\x1a\nthis is not really a png").unwrap();
        let err = load(dir.path(), &Preprocess::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{}: cannot decode image", bad.display())),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }

    #[test]
    fn csv_with_header_and_numeric_classes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("img")).unwrap();
        for (i, v) in [0u8, 100, 200].iter().enumerate() {
            grey(&dir.path().join(format!("img/{i}.png")), 2, 2, *v);
        }
        let csv = dir.path().join("list.csv");
        std::fs::write(
            &csv,
            "path,label\nimg/0.png,10\nimg/1.png, 9\nimg/2.png,10\n",
        )
        .unwrap();
        let ds = load(&csv, &Preprocess::default()).unwrap();
        assert_eq!(ds.classes, vec!["9", "10"]);
        assert_eq!(ds.labels, Some(vec![1, 0, 1]));
        assert_eq!(ds.image(1)[0], 100.0 / 255.0);
        let files: Vec<&str> = ds
            .source
            .entries()
            .iter()
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(files, ["img/0.png", "img/1.png", "img/2.png", "list.csv"]);
        assert_eq!(ds.source.summary().path, csv.display().to_string());

        // no header, text labels
        std::fs::write(&csv, "img/0.png,zebra\nimg/1.png,ant\n").unwrap();
        let ds = load(&csv, &Preprocess::default()).unwrap();
        assert_eq!(ds.classes, vec!["ant", "zebra"]);
        assert_eq!(ds.labels, Some(vec![1, 0]));
    }

    #[test]
    fn csv_header_may_name_the_label_first() {
        let dir = tempfile::tempdir().unwrap();
        grey(&dir.path().join("0.png"), 2, 2, 0);
        grey(&dir.path().join("1.png"), 2, 2, 51);
        let csv = dir.path().join("list.csv");
        std::fs::write(&csv, "label,path\nb,0.png\na,1.png\n").unwrap();
        let ds = load(&csv, &Preprocess::default()).unwrap();
        assert_eq!(ds.classes, vec!["a", "b"]);
        assert_eq!(ds.labels, Some(vec![1, 0]));
        assert_eq!(ds.image(1)[0], 0.2);
    }

    #[test]
    fn grey_first_then_colour_reads_as_colour() {
        let dir = tempfile::tempdir().unwrap();
        // "0.png" sorts first and is grey; the colour image decides the channel count.
        grey(&dir.path().join("0.png"), 2, 2, 51);
        ImageBuffer::from_pixel(2, 2, Rgb([255u8, 0, 102]))
            .save(dir.path().join("1.png"))
            .unwrap();
        let ds = load(dir.path(), &size(2, 2)).unwrap();
        assert_eq!(ds.shape.channels, 3);
        let near = |got: &[f32], want: f32| got.iter().all(|v| (v - want).abs() < 1e-6);
        assert!(
            near(&ds.image(0), 0.2),
            "grey on every channel: {:?}",
            ds.image(0)
        );
        let colour = ds.image(1);
        assert!(near(&colour[..4], 1.0) && near(&colour[4..8], 0.0) && near(&colour[8..], 0.4));
    }

    #[test]
    fn csv_missing_file_names_csv_line_and_path() {
        let dir = tempfile::tempdir().unwrap();
        grey(&dir.path().join("0.png"), 2, 2, 0);
        let csv = dir.path().join("list.csv");
        std::fs::write(&csv, "file,label\n0.png,a\nmissing.png,b\n").unwrap();
        let err = load(&csv, &Preprocess::default()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: line 3: image file not found: {}",
                csv.display(),
                dir.path().join("missing.png").display()
            )
        );
        std::fs::write(&csv, "0.png,a,extra\n").unwrap();
        let err = load(&csv, &Preprocess::default()).unwrap_err().to_string();
        assert!(err.contains("line 1: expected 2 fields"), "{err}");
    }

    proptest::proptest! {
        /// A label list of any content (beside one real image) loads or gives an error naming
        /// the list, never a panic (`PROPTEST_CASES` raises the count for longer fuzzing runs).
        #[test]
        fn csv_list_never_panics(text in "(a\\.png|b\\.png|,|\n|\"|x|7|path|label| ){0,60}") {
            let dir = tempfile::tempdir().unwrap();
            ImageBuffer::from_pixel(3, 2, Luma([200u8])).save(dir.path().join("a.png")).unwrap();
            let list = dir.path().join("list.csv");
            std::fs::write(&list, &text).unwrap();
            if let Err(e) = crate::load(&list, &crate::Preprocess::default()) {
                proptest::prop_assert!(e.to_string().contains("list.csv"), "{e}");
            }
        }
    }
}
