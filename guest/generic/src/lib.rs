//! The generic model component: named tensors in, named tensors out, for any
//! ONNX model with no code (the bring-your-own-ONNX path).
//!
//! Accepts `Input::Tensors`, or `application/json` media: an object mapping
//! each input name to a nested array of numbers, e.g. `{"X": [[0.0, 0.5, ...]]}`
//! (the dtype comes from the manifest, the shape from the nesting).
//!
//! Preprocessing parameters (all optional): `scores_output` (name of the
//! output holding class scores), `top_k` (default 5), `softmax` (default false),
//! `columns` (names of the last dimension of the first input, e.g. sensor
//! channels: each becomes a monitoring feature, its mean over the rows).
//! Monitoring features: the columns, then mean, std, min and max of each of
//! the first four inputs.

use edgeml_guest::{tensor, Error, Guest, Input, Metadata, Prediction, Tensor};
use serde_json::Value;

struct Generic;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Params {
    scores_output: Option<String>,
    top_k: Option<usize>,
    softmax: bool,
    columns: Vec<String>,
}

fn params() -> Result<Params, Error> {
    let m = edgeml_guest::manifest()?;
    if m.preprocessing.is_null() {
        Ok(Params::default())
    } else {
        m.preprocessing()
    }
}

const MAX_MONITORED_INPUTS: usize = 4;

fn monitoring_names() -> Result<Vec<String>, Error> {
    let m = edgeml_guest::manifest()?;
    let mut names = params()?.columns;
    names.extend(
        m.inputs
            .iter()
            .take(MAX_MONITORED_INPUTS)
            .flat_map(|s| ["mean", "std", "min", "max"].map(|k| format!("{}.{k}", s.name))),
    );
    Ok(names)
}

/// Mean of each column of `v` (rows of `n` values).
fn column_means(v: &[f32], n: usize) -> Result<Vec<f32>, Error> {
    if n == 0 || v.is_empty() || v.len() % n != 0 {
        return Err(Error::InvalidInput(format!(
            "the first input has {} values, not rows of the {n} configured columns",
            v.len()
        )));
    }
    let rows = (v.len() / n) as f32;
    let mut sums = vec![0f32; n];
    for row in v.chunks_exact(n) {
        for (s, x) in sums.iter_mut().zip(row) {
            *s += x;
        }
    }
    Ok(sums.into_iter().map(|s| s / rows).collect())
}

impl Guest for Generic {
    fn metadata() -> Result<Metadata, Error> {
        let names = monitoring_names()?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        edgeml_guest::metadata(
            concat!("edgeml-generic@", env!("CARGO_PKG_VERSION")),
            &["application/json"],
            &names,
        )
    }

    fn predict(input: Input) -> Result<Prediction, Error> {
        let m = edgeml_guest::manifest()?;
        let params = params()?;
        let inputs = match input {
            Input::Tensors(t) => t,
            Input::Media(media) if media.media_type == "application/json" => {
                from_json(&media.bytes)?
            }
            Input::Media(media) => {
                return Err(Error::UnsupportedMedia(format!(
                    "the generic component takes tensors or application/json, not {}",
                    media.media_type
                )))
            }
        };
        let mut monitoring = Vec::new();
        if !params.columns.is_empty() {
            let first = m
                .inputs
                .first()
                .and_then(|s| inputs.iter().find(|t| t.name == s.name));
            let v = match first {
                Some(t) => tensor::to_f32(t)?,
                None => Vec::new(),
            };
            monitoring.extend(column_means(&v, params.columns.len())?);
        }
        for spec in m.inputs.iter().take(MAX_MONITORED_INPUTS) {
            monitoring.extend(match inputs.iter().find(|t| t.name == spec.name) {
                Some(t) => tensor::stats(t)?,
                None => edgeml_guest::stats(&[]),
            });
        }
        let outputs = edgeml_guest::compute(inputs)?;
        let scores = edgeml_guest::label_scores(
            &outputs,
            params.scores_output.as_deref(),
            params.top_k.unwrap_or(5),
            params.softmax,
        )?
        .map(|(top, _)| top);
        Ok(Prediction {
            outputs,
            scores,
            monitoring,
        })
    }
}

/// `{"name": nested array}` -> tensors, dtype from the manifest.
fn from_json(bytes: &[u8]) -> Result<Vec<Tensor>, Error> {
    let m = edgeml_guest::manifest()?;
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| Error::Decode(format!("JSON input: {e}")))?;
    let obj = doc.as_object().ok_or_else(|| {
        Error::Decode("JSON input must be an object mapping input names to arrays".into())
    })?;
    let mut out = Vec::new();
    for (name, value) in obj {
        let spec = m.inputs.iter().find(|s| &s.name == name).ok_or_else(|| {
            let known: Vec<&str> = m.inputs.iter().map(|s| s.name.as_str()).collect();
            Error::InvalidInput(format!(
                "unknown input `{name}`; the model's inputs are {known:?}"
            ))
        })?;
        let dtype = spec.dtype().ok_or_else(|| {
            Error::Config(format!(
                "input `{name}` has unsupported dtype {}",
                spec.dtype
            ))
        })?;
        let mut shape = Vec::new();
        let mut values = Vec::new();
        flatten(value, 0, &mut shape, &mut values)
            .map_err(|e| Error::Decode(format!("JSON input `{name}`: {e}")))?;
        out.push(tensor::from_f64_as(name, dtype, shape, &values));
    }
    Ok(out)
}

fn flatten(
    v: &Value,
    depth: usize,
    shape: &mut Vec<u64>,
    out: &mut Vec<f64>,
) -> Result<(), String> {
    match v {
        Value::Number(n) => {
            if depth != shape.len() {
                return Err("ragged array".into());
            }
            out.push(n.as_f64().ok_or("number out of range")?);
            Ok(())
        }
        Value::Array(items) => {
            if depth == shape.len() {
                shape.push(items.len() as u64);
            } else if shape.get(depth) != Some(&(items.len() as u64)) {
                return Err("ragged array".into());
            }
            items
                .iter()
                .try_for_each(|i| flatten(i, depth + 1, shape, out))
        }
        _ => Err("expected numbers or arrays of numbers".into()),
    }
}

edgeml_guest::export!(Generic);
