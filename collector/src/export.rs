//! Drift samples for retraining: Parquet (one row per sample tensor or
//! media item) and `.npy` (tensor samples stacked) with a metadata JSON.

use crate::store::StoredSample;
use arrow_array::builder::{BinaryBuilder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use base64::Engine as _;
use edgeml_bundle::Dtype;
pub use edgeml_client::wire::telemetry::{NpyMetadata, NpyRow};
use edgeml_telemetry::wire::SampleInput;
use std::sync::Arc;

/// Why samples could not be exported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The selected samples cannot share one array.
    #[error("{0}")]
    Mixed(String),
    /// A stored sample does not decode.
    #[error("stored sample {id} is damaged: {reason}")]
    Damaged {
        /// Record id.
        id: String,
        /// Why.
        reason: String,
    },
    /// Parquet or Arrow failed.
    #[error("parquet: {0}")]
    Parquet(String),
}

fn b64(s: &str, id: &str) -> Result<Vec<u8>, ExportError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| ExportError::Damaged {
            id: id.into(),
            reason: e.to_string(),
        })
}

/// Parquet columns, in order.
pub const PARQUET_COLUMNS: &[&str] = &[
    "sample_id",
    "device_id",
    "model",
    "version",
    "digest",
    "at_ms",
    "reason",
    "prediction",
    "prediction_id",
    "label",
    "input_name",
    "media_type",
    "dtype",
    "shape",
    "data",
];

/// Samples as a Parquet file (snappy). Tensor samples give one row per
/// tensor (`input_name`, `dtype`, `shape` as JSON, `data` little-endian);
/// media samples one row with `media_type` and the bytes.
pub fn parquet(samples: &[StoredSample]) -> Result<Vec<u8>, ExportError> {
    let mut s = [(); 10].map(|_| StringBuilder::new());
    let [id, device, model, version, digest, reason, prediction, prediction_id, label, input_name] =
        &mut s;
    let mut media_type = StringBuilder::new();
    let mut dtype = StringBuilder::new();
    let mut shape = StringBuilder::new();
    let mut at = Int64Builder::new();
    let mut data = BinaryBuilder::new();
    for smp in samples {
        let mut row = |name: Option<&str>,
                       mt: Option<&str>,
                       dt: Option<String>,
                       sh: Option<String>,
                       bytes: &[u8]| {
            id.append_value(&smp.id);
            device.append_value(&smp.device_id);
            model.append_value(&smp.model.name);
            version.append_value(&smp.model.version);
            digest.append_value(&smp.model.digest);
            at.append_value(smp.at_ms as i64);
            reason.append_value(smp.reason.as_str());
            prediction.append_option(smp.prediction.as_deref());
            prediction_id.append_option(smp.prediction_id.as_deref());
            label.append_option(smp.label.as_deref());
            input_name.append_option(name);
            media_type.append_option(mt);
            dtype.append_option(dt);
            shape.append_option(sh);
            data.append_value(bytes);
        };
        match &smp.input {
            SampleInput::Tensors { tensors } => {
                for t in tensors {
                    let bytes = t.bytes().map_err(|reason| ExportError::Damaged {
                        id: smp.id.clone(),
                        reason,
                    })?;
                    let shape_json = serde_json::to_string(&t.shape).unwrap_or_default();
                    row(
                        Some(&t.name),
                        None,
                        Some(t.dtype.to_string()),
                        Some(shape_json),
                        &bytes,
                    );
                }
            }
            SampleInput::Media {
                media_type: mt,
                data: d,
            } => {
                let bytes = b64(d, &smp.id)?;
                row(None, Some(mt), None, None, &bytes);
            }
        }
    }
    let [id, device, model, version, digest, reason, prediction, prediction_id, label, input_name] =
        s;
    let utf8 = |n: &str, nullable: bool| Field::new(n, DataType::Utf8, nullable);
    let schema = Arc::new(Schema::new(vec![
        utf8("sample_id", false),
        utf8("device_id", false),
        utf8("model", false),
        utf8("version", false),
        utf8("digest", false),
        Field::new("at_ms", DataType::Int64, false),
        utf8("reason", false),
        utf8("prediction", true),
        utf8("prediction_id", true),
        utf8("label", true),
        utf8("input_name", true),
        utf8("media_type", true),
        utf8("dtype", true),
        utf8("shape", true),
        Field::new("data", DataType::Binary, false),
    ]));
    let mut cols: Vec<ArrayRef> = Vec::new();
    for mut b in [id, device, model, version, digest] {
        cols.push(Arc::new(b.finish()));
    }
    cols.push(Arc::new(at.finish()));
    for mut b in [
        reason,
        prediction,
        prediction_id,
        label,
        input_name,
        media_type,
        dtype,
        shape,
    ] {
        cols.push(Arc::new(b.finish()));
    }
    cols.push(Arc::new(data.finish()));
    let batch = RecordBatch::try_new(schema.clone(), cols)
        .map_err(|e| ExportError::Parquet(e.to_string()))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props))
        .map_err(|e| ExportError::Parquet(e.to_string()))?;
    w.write(&batch)
        .map_err(|e| ExportError::Parquet(e.to_string()))?;
    w.close().map_err(|e| ExportError::Parquet(e.to_string()))?;
    Ok(out)
}

/// Tensor samples stacked into one array (first input of each sample),
/// plus per-row metadata. All must share name, dtype and shape.
pub fn npy(samples: &[StoredSample]) -> Result<(Vec<u8>, NpyMetadata), ExportError> {
    let mut data = Vec::new();
    let mut rows = Vec::new();
    let mut skipped_media = 0;
    let mut first: Option<(String, Dtype, Vec<u64>)> = None;
    for s in samples {
        let t = match &s.input {
            SampleInput::Tensors { tensors } => match tensors.first() {
                Some(t) => t,
                None => continue,
            },
            SampleInput::Media { .. } => {
                skipped_media += 1;
                continue;
            }
        };
        let key = (t.name.clone(), t.dtype, t.shape.clone());
        match &first {
            None => first = Some(key),
            Some(f) if *f != key => {
                return Err(ExportError::Mixed(format!(
                    "samples differ: `{}` {} {:?} and `{}` {} {:?}; narrow the export to one model version",
                    f.0, f.1, f.2, key.0, key.1, key.2
                )))
            }
            Some(_) => {}
        }
        data.extend(t.bytes().map_err(|reason| ExportError::Damaged {
            id: s.id.clone(),
            reason,
        })?);
        rows.push(NpyRow {
            row: rows.len(),
            sample_id: s.id.clone(),
            device_id: s.device_id.clone(),
            version: s.model.version.clone(),
            digest: s.model.digest.clone(),
            at_ms: s.at_ms,
            reason: s.reason.as_str().into(),
            prediction: s.prediction.clone(),
            prediction_id: s.prediction_id.clone(),
            label: s.label.clone(),
        });
    }
    let (input_name, dtype, sample_shape) =
        first.unwrap_or_else(|| (String::new(), Dtype::F32, Vec::new()));
    let mut shape = vec![rows.len() as u64];
    shape.extend(&sample_shape);
    if rows.is_empty() {
        shape.truncate(1);
    }
    let bytes = edgeml_telemetry::npy::encode(dtype, &shape, &data).map_err(ExportError::Mixed)?;
    Ok((
        bytes,
        NpyMetadata {
            input_name,
            dtype,
            shape,
            rows,
            skipped_media,
        },
    ))
}
