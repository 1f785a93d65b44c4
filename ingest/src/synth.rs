//! Synthetic model zoo, deterministic from a seed.
//!
//! Mirrors `shared/bench/gen_synthetic.py`: each model gets 3x3 conv layers whose
//! channel count doubles per stage (up to `max_channels`); every layer's filters are
//! low-rank Gaussian (a decaying variance spectrum over a basis shared by all models,
//! rotated per model, decay depending on task and depth), plus a small mean filter and a
//! He-like per-layer scale. About 3 % of layers are sparse (most filters scaled by 1e-4,
//! some exactly zero) and about 3 % are random-like (isotropic Gaussian). Tasks, visual
//! categories and architectures follow a mix dominated by natural-image classification.
//!
//! Each model `i` draws from its own ChaCha8 stream (`seed`, stream `i`), so models can be
//! generated in parallel and any one can be regenerated alone ([`generate_model`]).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::KernelLayout;
use crate::card::{ModelOverrides, io_error};
use crate::error::{IngestError, Result};

/// Sizes and mix of a synthetic zoo.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOptions {
    /// Number of models.
    pub models: usize,
    /// Seed; the same seed and options give the same bytes.
    pub seed: u64,
    /// Fewest 3x3 conv layers per model (>= 1).
    pub min_layers: usize,
    /// Most 3x3 conv layers per model (>= `min_layers`).
    pub max_layers: usize,
    /// Widest layer (output channels), >= 1; the first stage has 16..64 channels, capped.
    pub max_channels: usize,
    /// Share of sparse layers.
    pub sparse_share: f64,
    /// Share of random-like (isotropic) layers.
    pub random_share: f64,
    /// Also write non-3x3 tensors (biases, 1x1 downsampling convs, a linear classifier).
    pub extra_tensors: bool,
}

impl Default for GenOptions {
    /// The baseline generator's sizes: 10..=50 layers, up to 512 channels.
    fn default() -> Self {
        GenOptions {
            models: 10,
            seed: 20_220_607,
            min_layers: 10,
            max_layers: 50,
            max_channels: 512,
            sparse_share: 0.03,
            random_share: 0.03,
            extra_tensors: true,
        }
    }
}

impl GenOptions {
    /// Tiny models for tests: 2..=5 layers of at most 8 channels.
    pub fn tiny(models: usize, seed: u64) -> Self {
        GenOptions {
            models,
            seed,
            min_layers: 2,
            max_layers: 5,
            max_channels: 8,
            ..GenOptions::default()
        }
    }

    fn check(&self) -> Result<()> {
        if self.min_layers == 0 || self.min_layers > self.max_layers {
            return Err(IngestError::GenOption {
                option: "min_layers/max_layers",
                detail: format!(
                    "expected 1 <= min_layers <= max_layers, got {}..={}",
                    self.min_layers, self.max_layers
                ),
            });
        }
        if self.max_channels == 0 {
            return Err(IngestError::GenOption {
                option: "max_channels",
                detail: "expected at least 1".to_owned(),
            });
        }
        for (option, v) in [
            ("sparse_share", self.sparse_share),
            ("random_share", self.random_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(IngestError::GenOption {
                    option,
                    detail: format!("expected a share in 0..=1, got {v}"),
                });
            }
        }
        Ok(())
    }
}

/// One generated tensor: f32, little-endian, C order.
#[derive(Debug, Clone, PartialEq)]
pub struct GenTensor {
    /// Tensor name, e.g. `features.3.weight`.
    pub name: String,
    /// Shape (OIHW for conv weights).
    pub shape: Vec<usize>,
    /// `shape.product()` f32 values as little-endian bytes.
    pub data: Vec<u8>,
}

impl safetensors::View for &GenTensor {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// One generated model: its card fields and tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct GenModel {
    /// Card fields (name, architecture, task, visual category, dataset, layout, notes).
    pub card: ModelOverrides,
    /// Tensors, 3x3 conv weights first in layer order.
    pub tensors: Vec<GenTensor>,
    /// Number of 3x3 layers.
    pub n_layers: usize,
    /// Number of 3x3 filters.
    pub n_filters: u64,
    /// Indices (0-based, layer order) of the sparse layers.
    pub sparse_layers: Vec<usize>,
    /// Indices of the random-like layers.
    pub random_layers: Vec<usize>,
}

/// What [`generate_zoo`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct GenSummary {
    /// Number of models.
    pub models: usize,
    /// Number of 3x3 layers.
    pub layers: u64,
    /// Number of 3x3 filters.
    pub filters: u64,
    /// Bytes of safetensors written.
    pub bytes: u64,
    /// The `manifest.csv`.
    pub manifest: PathBuf,
    /// The weight files, in model order.
    pub files: Vec<PathBuf>,
}

const TASKS: [(&str, u32); 16] = [
    ("Classification", 40),
    ("Segmentation", 10),
    ("Object Detection", 8),
    ("GAN Generator", 7),
    ("GAN Discriminator", 5),
    ("Auto-Encoder", 5),
    ("Super Resolution", 4),
    ("Style Transfer", 3),
    ("Depth Estimation", 3),
    ("Face Detection", 3),
    ("Face Recognition", 3),
    ("Denoising", 3),
    ("Pose Estimation", 2),
    ("Optical Character Recognition", 2),
    ("Inpainting", 1),
    ("Text Detection", 1),
];

const VISUAL: [(&str, u32, &str); 18] = [
    ("Natural", 50, "ImageNet-1k"),
    ("Faces", 8, "CelebA"),
    ("Handwriting", 6, "MNIST"),
    ("Medical X-Ray", 4, "ChestX-ray14"),
    ("Medical CT", 3, "LIDC-IDRI"),
    ("Medical MRI", 3, "BraTS"),
    ("Art", 4, "WikiArt"),
    ("Textures", 3, "DTD"),
    ("Plants", 3, "PlantVillage"),
    ("Cars", 3, "Stanford Cars"),
    ("Text", 3, "ICDAR 2015"),
    ("Synthetic", 2, "SVHN-synthetic"),
    ("Depth", 2, "NYU Depth v2"),
    ("Seismic", 1, "F3 Netherlands"),
    ("Map", 1, "OpenStreetMap tiles"),
    ("Astronomy", 1, "Galaxy Zoo"),
    ("Fractals", 1, "FractalDB-1k"),
    ("Thermal", 1, "FLIR ADAS"),
];

const ARCHS: [&str; 8] = [
    "ResNet",
    "VGG",
    "DenseNet",
    "MobileNet",
    "EfficientNet",
    "UNet",
    "WideResNet",
    "RegNet",
];

fn pick_weighted<'a, T>(
    rng: &mut ChaCha8Rng,
    items: &'a [T],
    weight: impl Fn(&T) -> u32,
) -> (usize, &'a T) {
    let total: u32 = items.iter().map(&weight).sum();
    let mut x = rng.random_range(0..total.max(1));
    for (i, it) in items.iter().enumerate() {
        let w = weight(it);
        if x < w {
            return (i, it);
        }
        x -= w;
    }
    (0, &items[0])
}

type Mat9 = [[f64; 9]; 9];

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    rng.sample::<f64, _>(StandardNormal)
}

/// Orthonormalises the columns of `m` (Gram-Schmidt) and returns Q.
#[allow(clippy::needless_range_loop)] // index loops read clearest for 9x9 matrices
fn orthonormal(m: Mat9) -> Mat9 {
    let mut q = [[0.0f64; 9]; 9];
    for j in 0..9 {
        let mut v: [f64; 9] = std::array::from_fn(|i| m[i][j]);
        for k in 0..j {
            let dot: f64 = (0..9).map(|i| q[i][k] * v[i]).sum();
            for i in 0..9 {
                v[i] -= dot * q[i][k];
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        for i in 0..9 {
            q[i][j] = v[i] / norm;
        }
    }
    q
}

fn matmul(a: &Mat9, b: &Mat9) -> Mat9 {
    let mut c = [[0.0f64; 9]; 9];
    for i in 0..9 {
        for k in 0..9 {
            for j in 0..9 {
                c[i][j] += a[i][k] * b[k][j];
            }
        }
    }
    c
}

fn base_dirs(seed: u64) -> Mat9 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(u64::MAX);
    let g: Mat9 = std::array::from_fn(|_| std::array::from_fn(|_| normal(&mut rng)));
    let q = orthonormal(g);
    // transpose, like the baseline's `qr(...)[0].T`
    std::array::from_fn(|i| std::array::from_fn(|j| q[j][i]))
}

fn push_f32(out: &mut Vec<u8>, x: f32) {
    out.extend_from_slice(&x.to_le_bytes());
}

fn random_tensor(rng: &mut ChaCha8Rng, name: String, shape: Vec<usize>, scale: f64) -> GenTensor {
    let n: usize = shape.iter().product();
    let mut data = Vec::with_capacity(n * 4);
    for _ in 0..n {
        push_f32(&mut data, (normal(rng) * scale) as f32);
    }
    GenTensor { name, shape, data }
}

/// Generates model `index` of the zoo described by `opts` (its own random stream, so the
/// result does not depend on the other models).
pub fn generate_model(opts: &GenOptions, index: usize) -> GenModel {
    let base = base_dirs(opts.seed);
    generate_with_base(opts, index, &base)
}

fn generate_with_base(opts: &GenOptions, index: usize, base: &Mat9) -> GenModel {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    rng.set_stream(index as u64);

    let (task_idx, (task, _)) = pick_weighted(&mut rng, &TASKS, |t| t.1);
    let (_, (visual, _, dataset)) = pick_weighted(&mut rng, &VISUAL, |v| v.1);
    let arch = ARCHS[rng.random_range(0..ARCHS.len())];
    let name = format!("{}_{index:05}", arch.to_ascii_lowercase());

    // layer plan, as model_layers() of the baseline
    let depth = rng.random_range(opts.min_layers..=opts.max_layers);
    let base_width = [16usize, 32, 64, 64, 64][rng.random_range(0..5)].min(opts.max_channels);
    let n_stages = rng.random_range(4..=5usize).min(depth);
    let mut plan: Vec<(usize, usize, usize)> = Vec::with_capacity(depth); // (in, out, stage)
    let mut in_ch = 3usize;
    let mut width = base_width;
    for s in 0..n_stages {
        let per = depth / n_stages + usize::from(s < depth % n_stages);
        for _ in 0..per {
            plan.push((in_ch, width, s));
            in_ch = width;
        }
        width = (width * 2).min(opts.max_channels);
    }

    // per-model rotation: orthonormal factor of I + A - A^T
    let a: Mat9 = std::array::from_fn(|_| std::array::from_fn(|_| 0.35 * normal(&mut rng)));
    let skew: Mat9 = std::array::from_fn(|i| {
        std::array::from_fn(|j| f64::from(u8::from(i == j)) + a[i][j] - a[j][i])
    });
    let rot = orthonormal(skew);
    let dirs = matmul(base, &rot);

    let mut tensors = Vec::new();
    let mut extras = Vec::new();
    let mut sparse_layers = Vec::new();
    let mut random_layers = Vec::new();
    let mut n_filters = 0u64;
    let mut prev_stage = 0usize;
    for (li, &(ci, co, stage)) in plan.iter().enumerate() {
        let n = ci * co;
        n_filters += n as u64;
        let is_sparse = rng.random::<f64>() < opts.sparse_share;
        let is_random = !is_sparse && rng.random::<f64>() < opts.random_share;
        let alpha =
            0.25 + 0.12 * (task_idx % 6) as f64 + 0.02 * li as f64 + 0.1 * rng.random::<f64>();
        let mix: Mat9 = if is_random {
            std::array::from_fn(|i| std::array::from_fn(|j| f64::from(u8::from(i == j))))
        } else {
            std::array::from_fn(|k| {
                let s = (-alpha * k as f64).exp().sqrt();
                std::array::from_fn(|j| s * dirs[k][j])
            })
        };
        let mean: [f64; 9] = if is_random {
            [0.0; 9]
        } else {
            std::array::from_fn(|_| 0.15 * normal(&mut rng))
        };
        let scale = (2.0 / (9.0 * ci as f64)).sqrt() * (0.5 + rng.random::<f64>());
        let mut w = vec![0.0f32; n * 9];
        for f in 0..n {
            let z: [f64; 9] = std::array::from_fn(|_| normal(&mut rng));
            for j in 0..9 {
                let v: f64 = (0..9).map(|k| z[k] * mix[k][j]).sum::<f64>() + mean[j];
                w[f * 9 + j] = (v * scale) as f32;
            }
        }
        if is_sparse {
            sparse_layers.push(li);
            let frac = 0.3 + 0.65 * rng.random::<f64>();
            let k = ((n as f64) * frac) as usize;
            let idx = rand::seq::index::sample(&mut rng, n, k);
            for (m, f) in idx.iter().enumerate() {
                let zero = m < (k / 100).max(1);
                for x in &mut w[f * 9..f * 9 + 9] {
                    *x = if zero { 0.0 } else { *x * 1e-4 };
                }
            }
        }
        if is_random {
            random_layers.push(li);
        }
        let mut data = Vec::with_capacity(n * 36);
        for x in w {
            push_f32(&mut data, x);
        }
        tensors.push(GenTensor {
            name: format!("features.{li}.weight"),
            shape: vec![co, ci, 3, 3],
            data,
        });
        if opts.extra_tensors {
            extras.push(random_tensor(
                &mut rng,
                format!("features.{li}.bias"),
                vec![co],
                0.01,
            ));
            if stage != prev_stage {
                extras.push(random_tensor(
                    &mut rng,
                    format!("downsample.{stage}.weight"),
                    vec![co, ci, 1, 1],
                    (1.0 / ci as f64).sqrt(),
                ));
            }
        }
        prev_stage = stage;
    }
    if opts.extra_tensors {
        let last = plan.last().map_or(3, |p| p.1);
        extras.push(random_tensor(
            &mut rng,
            "classifier.weight".to_owned(),
            vec![10, last],
            0.05,
        ));
        extras.push(random_tensor(
            &mut rng,
            "classifier.bias".to_owned(),
            vec![10],
            0.01,
        ));
    }
    tensors.extend(extras);

    GenModel {
        card: ModelOverrides {
            name: Some(name),
            architecture: Some(arch.to_owned()),
            task: Some((*task).to_owned()),
            training_dataset: Some((*dataset).to_owned()),
            visual_category: Some((*visual).to_owned()),
            layout: Some(KernelLayout::Oihw),
            notes: Some(format!("synthetic model {index} of seed {}", opts.seed)),
            ..ModelOverrides::default()
        },
        tensors,
        n_layers: plan.len(),
        n_filters,
        sparse_layers,
        random_layers,
    }
}

/// The TOML card text of a generated model.
pub fn card_toml(card: &ModelOverrides) -> String {
    let mut out = String::new();
    let fields = [
        ("name", &card.name),
        ("architecture", &card.architecture),
        ("task", &card.task),
        ("training_dataset", &card.training_dataset),
        ("visual_category", &card.visual_category),
        ("notes", &card.notes),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            // a JSON string literal is a valid TOML basic string
            let quoted = serde_json::Value::String(v.clone()).to_string();
            out.push_str(&format!("{k} = {quoted}\n"));
        }
    }
    out.push_str("layout = \"oihw\"\n");
    out
}

/// The models of one zoo, one at a time: what [`generate_zoo`] writes to files and
/// `filterdb gen --store` ingests straight into a store, with the same bytes.
#[derive(Debug, Clone)]
pub struct Generator {
    opts: GenOptions,
    base: Mat9,
}

impl Generator {
    /// The zoo `opts` describes.
    ///
    /// # Errors
    /// [`IngestError::GenOption`] for bad options.
    pub fn new(opts: &GenOptions) -> Result<Generator> {
        opts.check()?;
        Ok(Generator {
            opts: opts.clone(),
            base: base_dirs(opts.seed),
        })
    }

    /// The options.
    pub fn options(&self) -> &GenOptions {
        &self.opts
    }

    /// Model `index`'s name (from its card; `model_<index>` if it had none).
    pub fn name(&self, m: &GenModel, index: usize) -> String {
        m.card
            .name
            .clone()
            .unwrap_or_else(|| format!("model_{index:05}"))
    }

    /// Model `index` as the bytes of a safetensors file (its tensors freed; the card
    /// and counts kept).
    ///
    /// # Errors
    /// [`IngestError::Safetensors`] if serialising fails.
    pub fn safetensors(&self, index: usize) -> Result<(GenModel, Vec<u8>)> {
        let mut m = generate_with_base(&self.opts, index, &self.base);
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_owned(), "pt".to_owned());
        let bytes =
            safetensors::serialize(m.tensors.iter().map(|t| (t.name.as_str(), t)), Some(meta))
                .map_err(|source| IngestError::Safetensors {
                    path: PathBuf::from(format!("{}.safetensors", self.name(&m, index))),
                    source,
                })?;
        m.tensors = Vec::new();
        Ok((m, bytes))
    }
}

/// Writes a zoo into `out_dir` (created if missing): `<name>.safetensors`, `<name>.toml`
/// and `manifest.csv` (columns `path,card` and the card fields). Models are generated and
/// written in parallel on the current rayon pool; the bytes depend only on `opts`.
///
/// # Errors
/// [`IngestError::GenOption`] for bad options, [`IngestError::Io`] /
/// [`IngestError::Safetensors`] when writing fails.
pub fn generate_zoo(out_dir: &Path, opts: &GenOptions) -> Result<GenSummary> {
    let generator = Generator::new(opts)?;
    std::fs::create_dir_all(out_dir).map_err(|e| io_error(out_dir, "creating folder", e))?;
    let written: Vec<(PathBuf, GenModel, u64)> = (0..opts.models)
        .into_par_iter()
        .map(|i| -> Result<(PathBuf, GenModel, u64)> {
            let (m, bytes) = generator.safetensors(i)?;
            let name = generator.name(&m, i);
            let file = out_dir.join(format!("{name}.safetensors"));
            std::fs::write(&file, &bytes).map_err(|e| io_error(&file, "writing", e))?;
            let card_path = out_dir.join(format!("{name}.toml"));
            std::fs::write(&card_path, card_toml(&m.card))
                .map_err(|e| io_error(&card_path, "writing", e))?;
            Ok((file, m, bytes.len() as u64))
        })
        .collect::<Result<_>>()?;

    let manifest = out_dir.join("manifest.csv");
    let mut w = csv::Writer::from_path(&manifest).map_err(|e| csv_io(&manifest, e))?;
    w.write_record([
        "path",
        "card",
        "name",
        "architecture",
        "task",
        "training_dataset",
        "visual_category",
        "layout",
    ])
    .map_err(|e| csv_io(&manifest, e))?;
    let mut summary = GenSummary {
        models: written.len(),
        layers: 0,
        filters: 0,
        bytes: 0,
        manifest: manifest.clone(),
        files: Vec::with_capacity(written.len()),
    };
    for (file, m, bytes) in written {
        let fname = file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cname = fname.replace(".safetensors", ".toml");
        let c = &m.card;
        let s = |o: &Option<String>| o.clone().unwrap_or_default();
        w.write_record([
            fname,
            cname,
            s(&c.name),
            s(&c.architecture),
            s(&c.task),
            s(&c.training_dataset),
            s(&c.visual_category),
            "oihw".to_owned(),
        ])
        .map_err(|e| csv_io(&manifest, e))?;
        summary.layers += m.n_layers as u64;
        summary.filters += m.n_filters;
        summary.bytes += bytes;
        summary.files.push(file);
    }
    w.flush().map_err(|e| io_error(&manifest, "writing", e))?;
    Ok(summary)
}

fn csv_io(path: &Path, e: csv::Error) -> IngestError {
    IngestError::Io {
        path: path.to_owned(),
        action: "writing manifest",
        source: std::io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalise::{VocabExtra, normalise};
    use crate::safetensors::read_safetensors;

    #[test]
    fn same_seed_same_bytes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let opts = GenOptions::tiny(4, 7);
        let sa = generate_zoo(a.path(), &opts).unwrap();
        let sb = generate_zoo(b.path(), &opts).unwrap();
        assert_eq!(sa.filters, sb.filters);
        for (fa, fb) in sa.files.iter().zip(&sb.files) {
            assert_eq!(std::fs::read(fa).unwrap(), std::fs::read(fb).unwrap());
        }
        assert_eq!(
            std::fs::read(&sa.manifest).unwrap(),
            std::fs::read(&sb.manifest).unwrap()
        );
        let c = tempfile::tempdir().unwrap();
        let sc = generate_zoo(c.path(), &GenOptions::tiny(4, 8)).unwrap();
        assert_ne!(
            std::fs::read(&sa.files[0]).unwrap(),
            std::fs::read(&sc.files[0]).unwrap()
        );
    }

    #[test]
    fn generated_files_normalise() {
        let dir = tempfile::tempdir().unwrap();
        let s = generate_zoo(dir.path(), &GenOptions::tiny(3, 1)).unwrap();
        assert_eq!(s.models, 3);
        let mut filters = 0u64;
        for f in &s.files {
            let raw = read_safetensors(f).unwrap();
            let card = crate::card::read_card(&f.with_extension("toml")).unwrap();
            let m = normalise(
                &raw,
                Some(&card),
                &ModelOverrides::default(),
                &VocabExtra::default(),
            )
            .unwrap();
            filters += m.n_filters() as u64;
            assert!(m.meta.task.is_some() && m.meta.visual_category.is_some());
            let d: Vec<i64> = m.layers.iter().map(|l| l.conv_depth).collect();
            assert!(d.windows(2).all(|w| w[0] < w[1]), "{d:?}");
            for (i, l) in m.layers.iter().enumerate() {
                assert_eq!(l.layer_name, format!("features.{i}.weight"));
            }
            assert!(m.meta.kernel_shape_counts.contains_key("(3, 3)"));
        }
        assert_eq!(filters, s.filters);
        let manifest = crate::manifest::read_manifest(&s.manifest).unwrap();
        assert_eq!(manifest.rows.len(), 3);
        assert!(manifest.errors.is_empty(), "{:?}", manifest.errors);
    }

    #[test]
    fn layer_statistics() {
        let opts = GenOptions {
            models: 1,
            min_layers: 10,
            max_layers: 10,
            max_channels: 32,
            sparse_share: 0.5,
            random_share: 0.0,
            ..GenOptions::default()
        };
        let m = generate_model(&opts, 0);
        assert_eq!(m.n_layers, 10);
        // channels double with depth, capped
        let outs: Vec<usize> = m.tensors[..10].iter().map(|t| t.shape[0]).collect();
        assert!(outs.windows(2).all(|w| w[1] >= w[0]), "{outs:?}");
        assert!(outs.iter().all(|&o| o <= 32));
        assert_eq!(m.tensors[0].shape[1], 3);
        assert!(!m.sparse_layers.is_empty());
        let li = m.sparse_layers[0];
        let vals: Vec<f32> = m.tensors[li]
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let zero_filters = vals
            .chunks(9)
            .filter(|f| f.iter().all(|&x| x == 0.0))
            .count();
        assert!(zero_filters >= 1);
        assert!(vals.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn bad_options() {
        let dir = tempfile::tempdir().unwrap();
        let opts = GenOptions {
            min_layers: 5,
            max_layers: 2,
            ..GenOptions::tiny(1, 1)
        };
        assert!(
            generate_zoo(dir.path(), &opts)
                .unwrap_err()
                .to_string()
                .contains("min_layers")
        );
    }
}
