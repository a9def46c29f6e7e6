//! The model card: who owns a model, what it is for, what it was trained
//! on, from which code, and how well it did on which data. It travels in
//! the signed manifest (`edgeml pack --card card.toml`), so a device, the
//! server and an auditor read the same provenance the publisher signed.
//!
//! [`cyclonedx`] writes it as a CycloneDX 1.6 BOM with a
//! `machine-learning-model` component and its `modelCard`.

use crate::manifest::Manifest;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// A model card (the `card` field of the manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// Who answers for the model.
    pub owner: Owner,
    /// What the model is for (and, by omission, not for).
    pub intended_use: String,
    /// The learning task (`classification`, `regression`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Known limitations: inputs, conditions or populations it fails on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limitations: Vec<String>,
    /// The data it was trained on.
    pub training_data: Dataset,
    /// The code that trained it.
    pub code: CodeRevision,
    /// Evaluation results, each with the data it was measured on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metric>,
}

/// The model's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// A person or team.
    pub name: String,
    /// Where to reach them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// A dataset, named by its content digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// What it is: source, period, size, how it was split.
    pub description: String,
    /// Hex SHA-256 of the data file as it was used.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The revision of the training code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeRevision {
    /// Commit id (or another immutable revision name).
    pub revision: String,
    /// Where the code lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
}

/// One evaluation result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    /// Metric name (`accuracy`, `f1_macro`, `mae`).
    pub name: String,
    /// Its value.
    pub value: f64,
    /// The data it was measured on.
    pub data: Dataset,
}

impl ModelCard {
    /// Check what the types do not: required text present, digests well
    /// formed, metric values finite.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Manifest(format!("model card: {m}")));
        for (field, value) in [
            ("owner.name", &self.owner.name),
            ("intended_use", &self.intended_use),
            ("training_data.description", &self.training_data.description),
            ("code.revision", &self.code.revision),
        ] {
            if value.trim().is_empty() {
                return bad(format!("`{field}` is empty"));
            }
        }
        check_sha256("training_data.sha256", &self.training_data.sha256)?;
        for m in &self.metrics {
            if m.name.trim().is_empty() {
                return bad("a metric has no name".into());
            }
            if !m.value.is_finite() {
                return bad(format!("metric `{}` is not a finite number", m.name));
            }
            if m.data.description.trim().is_empty() {
                return bad(format!(
                    "metric `{}`: describe the data it was measured on",
                    m.name
                ));
            }
            check_sha256(&format!("metric `{}` data.sha256", m.name), &m.data.sha256)?;
        }
        Ok(())
    }
}

fn dataset_ref(d: &Dataset) -> String {
    format!("dataset:sha256:{}", d.sha256)
}

fn check_sha256(field: &str, v: &str) -> Result<()> {
    if v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(Error::Manifest(format!(
            "model card: `{field}` must be 64 lowercase hex digits (a SHA-256), not `{v}`"
        )))
    }
}

/// The CycloneDX specification version [`cyclonedx`] writes.
pub const CYCLONEDX_SPEC_VERSION: &str = "1.6";

/// A CycloneDX 1.6 BOM (JSON) describing the bundle's model: one
/// `machine-learning-model` component (name, version, the ONNX model's
/// SHA-256, owner, code revision and its `modelCard`) and one `data`
/// component per distinct dataset the card names, with its digest.
/// `bundle_sha256` is the bundle's content digest (`edgeml inspect`),
/// recorded as a property. A manifest without a card still gives a BOM,
/// with the model's interface and no `considerations`.
pub fn cyclonedx(manifest: &Manifest, bundle_sha256: &str) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let model_ref = format!("model:{}@{}", manifest.name, manifest.version);
    let mut datasets: Vec<(&Dataset, String)> = Vec::new();
    let card = manifest.card.as_ref();
    if let Some(c) = card {
        datasets.push((&c.training_data, "training".into()));
        for m in &c.metrics {
            if !datasets.iter().any(|(d, _)| d.sha256 == m.data.sha256) {
                datasets.push((&m.data, "evaluation".into()));
            }
        }
    }
    let io = |specs: &[crate::TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| json!({"format": format!("tensor {} {} {}", s.name, s.dtype, s.shape_string())}))
            .collect()
    };
    let mut parameters = Map::new();
    if let Some(task) = card.and_then(|c| c.task.as_ref()) {
        parameters.insert("task".into(), json!(task));
    }
    parameters.insert("modelArchitecture".into(), json!("onnx"));
    if !datasets.is_empty() {
        parameters.insert(
            "datasets".into(),
            Value::Array(
                datasets
                    .iter()
                    .map(|(d, _)| json!({"ref": dataset_ref(d)}))
                    .collect(),
            ),
        );
    }
    parameters.insert("inputs".into(), Value::Array(io(&manifest.inputs)));
    parameters.insert("outputs".into(), Value::Array(io(&manifest.outputs)));
    let mut model_card = Map::new();
    model_card.insert("bom-ref".into(), json!(format!("{model_ref}#card")));
    model_card.insert("modelParameters".into(), Value::Object(parameters));
    if let Some(c) = card {
        if !c.metrics.is_empty() {
            let metrics: Vec<Value> = c
                .metrics
                .iter()
                .map(|m| {
                    json!({
                        "type": m.name,
                        "value": m.value.to_string(),
                        "slice": format!("{} (sha256 {})", m.data.description, m.data.sha256),
                    })
                })
                .collect();
            model_card.insert(
                "quantitativeAnalysis".into(),
                json!({"performanceMetrics": metrics}),
            );
        }
        let mut considerations = Map::new();
        considerations.insert("useCases".into(), json!([c.intended_use]));
        if !c.limitations.is_empty() {
            considerations.insert("technicalLimitations".into(), json!(c.limitations));
        }
        model_card.insert("considerations".into(), Value::Object(considerations));
    }
    let mut model = Map::new();
    model.insert("type".into(), json!("machine-learning-model"));
    model.insert("bom-ref".into(), json!(&model_ref));
    model.insert("name".into(), json!(manifest.name));
    model.insert("version".into(), json!(manifest.version.to_string()));
    model.insert(
        "hashes".into(),
        json!([{"alg": "SHA-256", "content": manifest.model.digest.sha256}]),
    );
    if let Some(c) = card {
        let mut author = Map::new();
        author.insert("name".into(), json!(c.owner.name));
        if let Some(e) = &c.owner.email {
            author.insert("email".into(), json!(e));
        }
        model.insert("authors".into(), json!([Value::Object(author)]));
        if let Some(repo) = &c.code.repository {
            model.insert(
                "externalReferences".into(),
                json!([{"type": "vcs", "url": repo, "comment": format!("training code at revision {}", c.code.revision)}]),
            );
        }
    }
    model.insert("modelCard".into(), Value::Object(model_card));
    let mut properties = vec![
        json!({"name": "edgeml:bundle-content-sha256", "value": bundle_sha256}),
        json!({"name": "edgeml:component-sha256", "value": manifest.component.sha256}),
    ];
    if let Some(c) = card {
        properties.push(json!({"name": "edgeml:code-revision", "value": c.code.revision}));
    }
    model.insert("properties".into(), Value::Array(properties));
    let mut components = vec![Value::Object(model)];
    for (d, role) in &datasets {
        components.push(json!({
            "type": "data",
            "bom-ref": dataset_ref(d),
            "name": format!("{} {role} data", manifest.name),
            "hashes": [{"alg": "SHA-256", "content": d.sha256}],
            "properties": [{"name": "edgeml:size", "value": d.size.to_string()}],
            "data": [{"type": "dataset", "name": format!("{role} data"), "description": d.description}],
        }));
    }
    let dependencies: Vec<Value> = if datasets.is_empty() {
        Vec::new()
    } else {
        vec![json!({
            "ref": model_ref,
            "dependsOn": datasets.iter().map(|(d, _)| dataset_ref(d)).collect::<Vec<_>>(),
        })]
    };
    let mut bom = json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": CYCLONEDX_SPEC_VERSION,
        "version": 1,
        "metadata": {
            "timestamp": manifest.created,
            "tools": {"components": [{"type": "application", "name": "edgeml", "version": env!("CARGO_PKG_VERSION")}]},
        },
        "components": components,
    });
    if !dependencies.is_empty() {
        bom["dependencies"] = Value::Array(dependencies);
    }
    bom
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> ModelCard {
        let data = Dataset {
            description: "held-out split".into(),
            sha256: "ab".repeat(32),
            size: 10,
        };
        ModelCard {
            owner: Owner {
                name: "team".into(),
                email: None,
            },
            intended_use: "tests".into(),
            task: None,
            limitations: vec![],
            training_data: data.clone(),
            code: CodeRevision {
                revision: "abc".into(),
                repository: None,
            },
            metrics: vec![Metric {
                name: "accuracy".into(),
                value: 0.9,
                data,
            }],
        }
    }

    #[test]
    fn valid_card_passes() {
        assert!(card().validate().is_ok());
    }

    #[test]
    fn rejects_malformed_dataset_digest() {
        let mut c = card();
        c.training_data.sha256 = "AB".repeat(32);
        let e = c.validate().unwrap_err();
        assert!(
            matches!(&e, Error::Manifest(m) if m.contains("training_data.sha256")),
            "{e}"
        );
    }

    #[test]
    fn rejects_non_finite_metric_and_empty_owner() {
        let mut c = card();
        c.metrics[0].value = f64::NAN;
        assert!(
            matches!(c.validate(), Err(Error::Manifest(m)) if m.contains("`accuracy` is not a finite number"))
        );
        let mut c = card();
        c.owner.name = " ".into();
        assert!(
            matches!(c.validate(), Err(Error::Manifest(m)) if m.contains("`owner.name` is empty"))
        );
    }
}
