//! `edgeml pack --card card.toml` and the card in `edgeml inspect`.
//!
//! The card file names datasets by path (pack hashes them) or by digest;
//! the manifest keeps only the digest, size and description.

use anyhow::{bail, Context, Result};
use edgeml_bundle::card::{CodeRevision, Dataset, Metric, ModelCard, Owner};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CardFile {
    owner: Owner,
    intended_use: String,
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    limitations: Vec<String>,
    training_data: DatasetFile,
    code: CodeRevision,
    #[serde(default)]
    metrics: Vec<MetricFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetFile {
    description: String,
    /// The data file, relative to the card; pack hashes it.
    #[serde(default)]
    path: Option<PathBuf>,
    /// Or its digest and size, for data that is not at hand.
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricFile {
    name: String,
    value: f64,
    data: DatasetFile,
}

/// Read a card file, hash the datasets it names by path, and check it.
pub fn read_card(path: &Path) -> Result<ModelCard> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: CardFile =
        toml::from_str(&text).with_context(|| format!("{} is not a model card", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let card = ModelCard {
        owner: file.owner,
        intended_use: file.intended_use,
        task: file.task,
        limitations: file.limitations,
        training_data: dataset(base, file.training_data)
            .with_context(|| format!("{}: training_data", path.display()))?,
        code: file.code,
        metrics: file
            .metrics
            .into_iter()
            .map(|m| {
                let name = m.name.clone();
                Ok(Metric {
                    name: m.name,
                    value: m.value,
                    data: dataset(base, m.data)
                        .with_context(|| format!("{}: metric `{name}`", path.display()))?,
                })
            })
            .collect::<Result<_>>()?,
    };
    card.validate()
        .with_context(|| format!("{} is not a valid model card", path.display()))?;
    Ok(card)
}

fn dataset(base: &Path, d: DatasetFile) -> Result<Dataset> {
    let (sha256, size) = match (&d.path, d.sha256, d.size) {
        (Some(p), given, given_size) => {
            let p = base.join(p);
            let (sha, size) = hash_file(&p)?;
            if let Some(g) = given.filter(|g| *g != sha) {
                bail!("{} has SHA-256 {sha}, the card says {g}", p.display());
            }
            if let Some(g) = given_size.filter(|g| *g != size) {
                bail!("{} is {size} bytes, the card says {g}", p.display());
            }
            (sha, size)
        }
        (None, Some(sha), Some(size)) => (sha, size),
        (None, _, _) => bail!("give the data's `path`, or its `sha256` and `size`"),
    };
    Ok(Dataset {
        description: d.description,
        sha256,
        size,
    })
}

fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

/// The card's lines in `edgeml inspect`.
pub fn print(card: &ModelCard) {
    let owner = match &card.owner.email {
        Some(e) => format!("{} <{e}>", card.owner.name),
        None => card.owner.name.clone(),
    };
    println!("owner:    {owner}");
    println!("use:      {}", card.intended_use);
    if let Some(t) = &card.task {
        println!("task:     {t}");
    }
    for l in &card.limitations {
        println!("limit:    {l}");
    }
    let d = &card.training_data;
    println!(
        "trained:  {} ({} bytes, sha256 {})",
        d.description, d.size, d.sha256
    );
    match &card.code.repository {
        Some(r) => println!("code:     {r} at {}", card.code.revision),
        None => println!("code:     revision {}", card.code.revision),
    }
    for m in &card.metrics {
        println!(
            "metric:   {} = {} on {} (sha256 {})",
            m.name, m.value, m.data.description, m.data.sha256
        );
    }
}
