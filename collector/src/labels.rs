//! `POST /v1/labels`: true labels that arrive late, in bulk, by prediction
//! id, as CSV, JSON or Parquet. Each label that names a stored sample's
//! prediction becomes that prediction's outcome and counts in the model
//! version's accuracy; the rest are reported back.

use crate::api::{admin, blocking, err, ApiResult, AppState};
use crate::audit;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use edgeml_client::wire::telemetry::{LabelRow, LabelsReceived};
use edgeml_client::wire::ErrorBody;

/// Most labels in one upload.
pub const MAX_LABELS: usize = 100_000;

fn bad(msg: impl Into<String>) -> crate::api::ApiError {
    err(StatusCode::UNPROCESSABLE_ENTITY, msg)
}

/// The labels in `body`, by its content type.
fn parse(content_type: &str, body: &Bytes) -> ApiResult<Vec<(String, String)>> {
    let kind = content_type.split(';').next().unwrap_or("").trim();
    let rows = match kind {
        "text/csv" => csv_rows(body)?,
        "application/json" => serde_json::from_slice::<Vec<LabelRow>>(body)
            .map_err(|e| bad(format!("labels JSON must be [{{\"prediction_id\": ..., \"label\": ...}}, ...]: {e}")))?
            .into_iter()
            .map(|r| (r.prediction_id, r.label))
            .collect(),
        "application/vnd.apache.parquet" => parquet_rows(body)?,
        other => {
            return Err(err(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("labels come as text/csv, application/json or application/vnd.apache.parquet, not `{other}`"),
            ))
        }
    };
    if rows.len() > MAX_LABELS {
        return Err(err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} labels; at most {MAX_LABELS} per upload", rows.len()),
        ));
    }
    for (n, (pid, label)) in rows.iter().enumerate() {
        if pid.is_empty() || pid.len() > 128 || label.is_empty() || label.len() > 256 {
            return Err(bad(format!(
                "label {}: the prediction id must be 1-128 characters and the label 1-256",
                n + 1
            )));
        }
    }
    Ok(rows)
}

/// CSV with a header naming `prediction_id` and `label` (other columns are
/// ignored).
fn csv_rows(body: &[u8]) -> ApiResult<Vec<(String, String)>> {
    let mut r = csv::Reader::from_reader(body);
    let headers = r
        .headers()
        .map_err(|e| bad(format!("labels CSV: {e}")))?
        .clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                bad(format!(
                    "labels CSV needs a `{name}` column in its header line"
                ))
            })
    };
    let (p, l) = (col("prediction_id")?, col("label")?);
    r.records()
        .map(|rec| {
            let rec = rec.map_err(|e| bad(format!("labels CSV: {e}")))?;
            Ok((
                rec.get(p).unwrap_or("").trim().to_string(),
                rec.get(l).unwrap_or("").trim().to_string(),
            ))
        })
        .collect()
}

/// Parquet with string columns `prediction_id` and `label`.
fn parquet_rows(body: &Bytes) -> ApiResult<Vec<(String, String)>> {
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(body.clone())
            .and_then(|b| b.build())
            .map_err(|e| bad(format!("labels Parquet: {e}")))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(format!("labels Parquet: {e}")))?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| bad(format!("labels Parquet needs a `{name}` column")))?
                .as_string_opt::<i32>()
                .ok_or_else(|| bad(format!("labels Parquet: `{name}` must be a string column")))
        };
        let (p, l) = (column("prediction_id")?, column("label")?);
        for i in 0..batch.num_rows() {
            if p.is_null(i) || l.is_null(i) {
                return Err(bad(format!(
                    "labels Parquet: row {} has a null",
                    out.len() + 1
                )));
            }
            out.push((p.value(i).to_string(), l.value(i).to_string()));
        }
    }
    Ok(out)
}

/// Upload true labels by prediction id. Each one that names a stored
/// sample's prediction becomes its outcome (a later label for the same
/// prediction replaces an earlier one); the answer counts the rest.
#[utoipa::path(
    post,
    path = "/v1/labels",
    tag = "telemetry",
    security(("admin" = [])),
    request_body(
        content = Vec<LabelRow>,
        description = "JSON rows; or CSV (text/csv) or Parquet (application/vnd.apache.parquet) with `prediction_id` and `label` columns",
    ),
    responses(
        (status = 200, description = "How many labels matched a stored sample", body = LabelsReceived),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 413, description = "More than 100 000 labels", body = ErrorBody),
        (status = 415, description = "Not CSV, JSON or Parquet", body = ErrorBody),
        (status = 422, description = "Malformed rows; the reason says which", body = ErrorBody),
    )
)]
pub(crate) async fn upload(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    admin(&st, &headers)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let labels = parse(content_type, &body)?;
    let received = labels.len() as u64;
    let store = st.store.clone();
    let unmatched = blocking(move || store.label_samples(&labels, crate::fleet::now_ms())).await?;
    let answer = LabelsReceived {
        received,
        matched: received - unmatched.len() as u64,
        unmatched: unmatched.len() as u64,
        unmatched_ids: unmatched.into_iter().take(100).collect(),
    };
    let mut entry = audit::by_admin(&headers, "labels.upload", "samples");
    entry.details = audit::details([
        ("received", answer.received.to_string()),
        ("matched", answer.matched.to_string()),
        ("unmatched", answer.unmatched.to_string()),
    ]);
    audit::record(&st, entry).await?;
    Ok(Json(answer).into_response())
}
