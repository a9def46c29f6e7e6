//! Ground truth: every prediction gets an id, a label given later on the
//! device (the local API's feedback endpoint, or `Agent::feedback`) travels
//! with telemetry, and the fleet server reports measured accuracy per model
//! version, class, device and time window. Real agents serving digits on
//! loopback, a real fleet server and database, real telemetry batches.

use crate::common::*;
use crate::fleet::*;
use base64::Engine as _;
use edgeml_agent::{Agent, FeedbackError, PollOutcome};
use edgeml_client::wire::telemetry::Range;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

/// The true digit of each held-out PNG.
fn truth() -> HashMap<String, String> {
    let labels: serde_json::Value =
        serde_json::from_slice(&read(model_path("digits/holdout/labels.json"))).unwrap();
    labels
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap().to_string()))
        .collect()
}

/// An agent with telemetry to the fleet server, serving on loopback.
fn serving_with_telemetry(f: &Fleet, id: &str) -> (Agent, edgeml_runtime::Telemetry) {
    let (rt, t) = telemetry_runtime(f, id);
    let mut c = f.agent_config(id);
    c.identity_dir = Some(t.config().dir.clone());
    c.serve.listen = "127.0.0.1:0".into();
    c.poll_interval = Duration::from_secs(3600);
    (Agent::start(c, rt).expect("agent"), t)
}

fn png_request(i: usize, id: Option<&str>) -> serde_json::Value {
    let mut r = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
        "parameters": {"content_type": "image/png"},
        "data": [base64::engine::general_purpose::STANDARD.encode(png(i))]}]});
    if let Some(id) = id {
        r["id"] = json!(id);
    }
    r
}

/// Predict held-out image `i` over the local API: (prediction id, top label).
fn infer(f: &Fleet, a: &Agent, i: usize) -> (String, String) {
    let resp: serde_json::Value = f
        .http
        .post(format!(
            "http://{}/v2/models/digits/infer",
            a.serve_addr().unwrap()
        ))
        .json(&png_request(i, None))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = resp["parameters"]["prediction_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Without a request id, the response's `id` is the prediction id.
    assert_eq!(resp["id"], id.as_str());
    let top = resp["parameters"]["labels"][0]["label"]
        .as_str()
        .unwrap()
        .to_string();
    (id, top)
}

/// Held-out digit `i` through the agent's library API.
fn predict_png(a: &Agent, i: usize) -> edgeml_runtime::Prediction {
    a.predict(edgeml_runtime::Input::Media {
        media_type: "image/png".into(),
        bytes: png(i),
    })
    .unwrap()
}

/// `edgeml collector ARGS` against the fleet server with the admin token,
/// in `cwd`: its standard output, once it succeeded.
fn collector_cli(f: &Fleet, args: &[&str], cwd: &std::path::Path) -> String {
    let out = edgeml()
        .arg("collector")
        .args(args)
        .args(["--url", &f.url()])
        .env("EDGEML_ADMIN_TOKEN", ADMIN)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "edgeml collector {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn give_label(f: &Fleet, a: &Agent, body: serde_json::Value) -> reqwest::blocking::Response {
    f.http
        .post(format!(
            "http://{}/v2/models/digits/feedback",
            a.serve_addr().unwrap()
        ))
        .json(&body)
        .send()
        .unwrap()
}

#[test]
fn labels_from_devices_give_accuracy_per_version() {
    let f = Fleet::new();
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    let truth = truth();
    let (http_agent, t1) = serving_with_telemetry(&f, "gt-http");
    let (lib_agent, t2) = serving_with_telemetry(&f, "gt-lib");
    for a in [&http_agent, &lib_agent] {
        // Each installs it on its first poll, as it starts.
        wait_for("1.0.0 installed", 60, || {
            version_of(a).as_deref() == Some("1.0.0")
        });
    }
    // (version, device, right?) of every label given.
    let mut expected: Vec<(&str, &str, bool)> = Vec::new();

    // Over HTTP: 12 held-out digits, each labelled with its true digit.
    for i in 0..12 {
        let (id, top) = infer(&f, &http_agent, i);
        let label = &truth[&format!("{i:03}.png")];
        let r = give_label(
            &f,
            &http_agent,
            json!({"prediction_id": id, "label": label}),
        );
        assert_eq!(r.status(), 202, "{}", r.text().unwrap());
        expected.push(("1.0.0", "gt-http", top == *label));
    }
    // A request id is echoed as the protocol says; the prediction id is apart.
    let resp: serde_json::Value = f
        .http
        .post(format!(
            "http://{}/v2/models/digits/infer",
            http_agent.serve_addr().unwrap()
        ))
        .json(&png_request(0, Some("req-7")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(resp["id"], "req-7");
    let pid = resp["parameters"]["prediction_id"].as_str().unwrap();
    assert_eq!(pid.len(), 32);
    // Refusals: an unknown prediction, a label the model does not have, a
    // body that is not JSON.
    let r = give_label(
        &f,
        &http_agent,
        json!({"prediction_id": "0".repeat(32), "label": "7"}),
    );
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("is unknown here"));
    let r = give_label(
        &f,
        &http_agent,
        json!({"prediction_id": pid, "label": "banana"}),
    );
    assert_eq!(r.status(), 422);
    assert!(r
        .text()
        .unwrap()
        .contains("`banana` is not a label of digits 1.0.0"));
    let r = f
        .http
        .post(format!(
            "http://{}/v2/models/digits/feedback",
            http_agent.serve_addr().unwrap()
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("prediction_id=x&label=7")
        .send()
        .unwrap();
    assert_eq!(r.status(), 415);

    // Through the library: 6 digits, every other one labelled wrongly on
    // purpose (a downstream system that disagrees with the model).
    for i in 20..26 {
        let p = predict_png(&lib_agent, i);
        let top = p.scores.as_ref().unwrap()[0].label.clone();
        let label = if i % 2 == 0 {
            top.clone()
        } else {
            format!("{}", (top.parse::<u32>().unwrap() + 1) % 10)
        };
        lib_agent.feedback(&p.id, &label).unwrap();
        expected.push(("1.0.0", "gt-lib", i % 2 == 0));
    }
    assert!(matches!(
        lib_agent.feedback("nope", "7"),
        Err(FeedbackError::UnknownPrediction(id)) if id == "nope"
    ));

    // Version 1.1.0: every label right.
    f.push(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    assert!(matches!(http_agent.poll(), Ok(PollOutcome::Installed(_))));
    for i in 30..35 {
        let (id, top) = infer(&f, &http_agent, i);
        let r = give_label(&f, &http_agent, json!({"prediction_id": id, "label": top}));
        assert_eq!(r.status(), 202);
        expected.push(("1.1.0", "gt-http", true));
    }
    for t in [&t1, &t2] {
        t.flush(Duration::from_secs(20));
    }
    // Both gateways are in Berlin; the library one is a Jetson.
    let tags = |pairs: &[(&str, &str)]| -> edgeml_fleet::Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    f.client
        .set_device_tags("gt-http", &tags(&[("site", "berlin")]))
        .unwrap();
    f.client
        .set_device_tags("gt-lib", &tags(&[("site", "berlin"), ("hw", "jetson")]))
        .unwrap();

    let acc = f
        .client
        .accuracy("digits", None, &Range::default(), Some(3_600_000))
        .unwrap();
    assert_eq!(
        acc.versions
            .iter()
            .map(|v| v.version.as_str())
            .collect::<Vec<_>>(),
        ["1.0.0", "1.1.0"]
    );
    for v in &acc.versions {
        let mine: Vec<_> = expected.iter().filter(|e| e.0 == v.version).collect();
        assert_eq!(v.labelled, mine.len() as u64, "{}", v.version);
        assert_eq!(
            v.correct,
            mine.iter().filter(|e| e.2).count() as u64,
            "{}",
            v.version
        );
        assert_eq!(v.accuracy, Some(v.correct as f64 / v.labelled as f64));
        assert_eq!(v.classes.iter().map(|c| c.support).sum::<u64>(), v.labelled);
        assert_eq!(
            v.windows.iter().map(|w| w.labelled).sum::<u64>(),
            v.labelled
        );
        for d in &v.devices {
            let n = mine.iter().filter(|e| e.1 == d.name).count() as u64;
            assert_eq!(d.labelled, n, "{} {}", v.version, d.name);
        }
    }
    let v1 = &acc.versions[0];
    assert_eq!(v1.devices.len(), 2);
    let lib = v1.devices.iter().find(|d| d.name == "gt-lib").unwrap();
    assert_eq!((lib.labelled, lib.correct), (6, 3));
    // Per tag: over the devices carrying it.
    let tag = |name: &str| {
        v1.tags
            .iter()
            .find(|t| t.name == name)
            .map(|t| (t.labelled, t.correct))
    };
    assert_eq!(tag("hw=jetson"), Some((6, 3)));
    let http_v1 = v1.devices.iter().find(|d| d.name == "gt-http").unwrap();
    assert_eq!(
        tag("site=berlin"),
        Some((6 + http_v1.labelled, 3 + http_v1.correct))
    );
    assert_eq!(acc.versions[1].accuracy, Some(1.0));
    // Estimated from the scores next to it: digits' MLP gives probabilities;
    // a dozen labels are too few to check their calibration.
    for v in &acc.versions {
        let e = v.estimated.as_ref().expect("windows carry the top scores");
        assert!(e.accuracy > 0.5 && e.accuracy <= 1.0, "{e:?}");
        assert_eq!(
            e.validity,
            edgeml_client::wire::telemetry::EstimateValidity::Unverified,
            "{}",
            e.reason
        );
    }

    // The operator's view.
    let text = collector_cli(
        &f,
        &["accuracy", "--model", "digits", "--classes"],
        f.dir.path(),
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("1.1.0") && l.contains(" 5 ") && l.contains("1.0000")),
        "{text}"
    );
    assert!(text.contains("device gt-lib"), "{text}");
    assert!(text.contains("tag hw=jetson"), "{text}");
}

#[test]
fn feedback_needs_telemetry() {
    let (_f, a) = on_v1();
    let p = predict_png(&a, 0);
    assert!(matches!(
        a.feedback(&p.id, "7"),
        Err(FeedbackError::TelemetryOff)
    ));
}

#[test]
fn uploaded_labels_join_samples_and_export_with_them() {
    let f = Fleet::new();
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    // A device that keeps every input as a sample (up to 16 per window).
    let id = "gt-samples";
    let (rt, t) = telemetry_runtime_with(&f, id, |tc| {
        tc.window = Duration::from_secs(60);
        tc.samples = Some(edgeml_runtime::telemetry::SampleConfig {
            per_window: 16,
            ..Default::default()
        });
    });
    let mut ac = f.agent_config(id);
    ac.identity_dir = Some(t.config().dir.clone());
    let a = Agent::open(ac, rt).unwrap();
    assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    let mut ids = Vec::new();
    for i in 0..8 {
        let p = predict_png(&a, i);
        ids.push((p.id.clone(), p.scores.unwrap()[0].label.clone()));
    }
    t.flush(Duration::from_secs(20));
    let samples = f
        .store()
        .samples(&edgeml_collector::store::Query::default())
        .unwrap();
    assert_eq!(samples.len(), 8);
    for s in &samples {
        let pid = s
            .prediction_id
            .as_deref()
            .expect("samples keep their prediction id");
        assert!(ids.iter().any(|(id, _)| id == pid));
        assert_eq!(s.label, None);
    }

    // Labels for all eight, the first one disagreeing with the model, and
    // one for a prediction the server has no sample of.
    let tmp = tempfile::tempdir().unwrap();
    let mut csv = String::from("prediction_id,label,note\n");
    for (n, (pid, top)) in ids.iter().enumerate() {
        let label = if n == 0 {
            format!("{}", (top.parse::<u32>().unwrap() + 1) % 10)
        } else {
            top.clone()
        };
        csv += &format!("{pid},{label},checked by hand\n");
    }
    csv += &format!("{},3,\n", "f".repeat(32));
    std::fs::write(tmp.path().join("labels.csv"), csv).unwrap();
    let text = collector_cli(&f, &["labels", "labels.csv"], tmp.path());
    assert!(
        text.contains("9 labels: 8 matched a stored sample, 1 did not"),
        "{text}"
    );
    assert!(text.contains(&"f".repeat(32)), "{text}");

    let acc = f
        .client
        .accuracy("digits", None, &Range::default(), None)
        .unwrap();
    assert_eq!((acc.versions[0].labelled, acc.versions[0].correct), (8, 7));
    // A correction in JSON: now the first one agrees too.
    let fix = json!([{"prediction_id": ids[0].0, "label": ids[0].1}]);
    let r = f
        .client
        .upload_labels(serde_json::to_vec(&fix).unwrap(), "application/json")
        .unwrap();
    assert_eq!((r.received, r.matched, r.unmatched), (1, 1, 0));
    let acc = f
        .client
        .accuracy("digits", None, &Range::default(), None)
        .unwrap();
    assert_eq!((acc.versions[0].labelled, acc.versions[0].correct), (8, 8));

    // The export carries each sample's prediction id and true label.
    let samples = f
        .store()
        .samples(&edgeml_collector::store::Query::default())
        .unwrap();
    for s in &samples {
        let (_, top) = ids
            .iter()
            .find(|(id, _)| Some(id) == s.prediction_id.as_ref())
            .unwrap();
        assert_eq!(s.label.as_ref(), Some(top));
    }
    let file = tmp.path().join("samples.parquet");
    std::fs::write(&file, edgeml_collector::export::parquet(&samples).unwrap()).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&file).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batch = reader.map(Result::unwrap).next().unwrap();
    use arrow_array::cast::AsArray;
    let labels = batch.column_by_name("label").unwrap().as_string::<i32>();
    assert_eq!(labels.iter().flatten().count(), 8);

    // Refusals: not a label format, a CSV without a label column.
    let r = f
        .http
        .post(format!("{}/v1/labels", f.url()))
        .bearer_auth(ADMIN)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 415);
    let err = f
        .client
        .upload_labels(b"prediction_id,truth\nabc,1\n".to_vec(), "text/csv")
        .unwrap_err();
    assert!(
        matches!(&err, edgeml_client::Error::Refused { status: 422, message, .. } if message.contains("`label` column")),
        "{err}"
    );
    // The uploads are in the audit log.
    let (entries, _) = f.client.audit_log().unwrap();
    let uploads: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "labels.upload")
        .collect();
    assert_eq!(uploads.len(), 2);
    assert_eq!(uploads[0].details["matched"], "8");
}

/// Three devices with telemetry on digits 1.0.0, each labelling 6
/// predictions right; then 1.1.0, whose labels from the devices in
/// `wrong` disagree with every prediction.
fn labelled_rollout(
    f: &Fleet,
    prefix: &str,
    wrong: &[usize],
) -> Vec<(Agent, edgeml_runtime::Telemetry)> {
    let agents = telemetry_agents(f, prefix, 3);
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    let label_all = |agents: &[(Agent, edgeml_runtime::Telemetry)], wrong: &[usize]| {
        for (n, (a, t)) in agents.iter().enumerate() {
            for i in 0..6 {
                let p = predict_png(&a, n * 6 + i);
                let top = p.scores.unwrap()[0].label.clone();
                let label = if wrong.contains(&n) {
                    format!("{}", (top.parse::<u32>().unwrap() + 1) % 10)
                } else {
                    top
                };
                a.feedback(&p.id, &label).unwrap();
            }
            t.flush(Duration::from_secs(20));
        }
    };
    for (a, _) in &agents {
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    label_all(&agents, &[]);
    f.push(&f.signed(&DIGITS_IMAGE, "1.1.0"), "1.1.0", 100.0);
    for (a, _) in &agents {
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    label_all(&agents, wrong);
    agents
}

/// The gate judges accuracy once every device's labels are in (18), so
/// the verdict does not depend on which device's telemetry lands first.
fn labelled_canary(f: &mut edgeml_collector::CanaryPolicy) {
    f.min_predictions = 10;
    f.min_labels = 18;
}

#[test]
fn canary_halts_on_measured_accuracy_drop() {
    let f = Fleet::with_canary(labelled_canary);
    let agents = labelled_rollout(&f, "acc", &[0, 1]);
    wait_for("the accuracy gate to halt", 30, || {
        f.channel_state().0 == edgeml_client::wire::fleet::RolloutState::Halted
    });
    let reason = f.channel_state().1.unwrap();
    assert!(
        reason.starts_with("canary: measured accuracy 33.3% on digits 1.1.0 (18 labelled predictions from 3 devices"),
        "{reason}"
    );
    assert!(
        reason.contains("vs 100.0% on 1.0.0 (18 labelled)"),
        "{reason}"
    );
    assert!(
        reason.contains("acc-0 0.0% of 6") && reason.contains("acc-1 0.0% of 6"),
        "{reason}"
    );
    // The evidence is kept with the decision and in the audit log.
    let halt = crate::fleet::last_audit(&f, "rollout.halt");
    assert_eq!(halt.details["reason"], reason);
    assert_eq!(halt.details["source"], "canary");
    for (a, _) in &agents {
        assert!(matches!(a.poll(), Ok(PollOutcome::RolledBack(_))));
        assert_eq!(version_of(a).as_deref(), Some("1.0.0"));
    }
}

#[test]
fn one_device_with_false_labels_cannot_halt_rollout() {
    let f = Fleet::with_canary(labelled_canary);
    let _agents = labelled_rollout(&f, "liar", &[2]);
    // Overall 66.7% against 100%, far below the margin, but on one device.
    let acc = f
        .client
        .accuracy("digits", Some("1.1.0"), &Range::default(), None)
        .unwrap();
    assert_eq!(
        acc.versions[0].accuracy.map(|a| (a * 1000.0).round()),
        Some(667.0)
    );
    std::thread::sleep(Duration::from_secs(2)); // several canary rounds
    assert_eq!(
        f.channel_state().0,
        edgeml_client::wire::fleet::RolloutState::Active
    );
}

#[test]
fn canary_halts_on_estimated_accuracy_drop_without_labels() {
    // Judged once all three devices' windows are in (3 x 40 predictions).
    let f = Fleet::with_canary(|c| c.min_predictions = 120);
    let agents = telemetry_agents(&f, "cbpe", 3);
    let (shape, live) = npy_f32("digits/live.npy");
    let rows: Vec<Vec<f32>> = live
        .chunks_exact(shape[1] as usize)
        .map(<[f32]>::to_vec)
        .collect();
    // A scanner out of alignment: each 8x8 scan two pixels to the right.
    let misaligned = |r: &[f32]| -> Vec<f32> {
        (0..64)
            .map(|i| if i % 8 >= 2 { r[i - 2] } else { 0.0 })
            .collect()
    };
    let feed = |shifted: bool| {
        for (n, (a, t)) in agents.iter().enumerate() {
            for r in rows.iter().skip(n * 40).take(40) {
                let x = if shifted { misaligned(r) } else { r.clone() };
                a.predict(edgeml_runtime::Input::Tensors(vec![
                    edgeml_runtime::Tensor::from_f32("X", vec![1, 64], &x),
                ]))
                .unwrap();
            }
            t.flush(Duration::from_secs(20));
        }
    };
    f.push(&f.signed(&DIGITS_GENERIC, "1.0.0"), "1.0.0", 100.0);
    for (a, _) in &agents {
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    feed(false);
    // 1.1.0 meets misaligned scans: no label arrives, but the model is far
    // less sure of itself. (Scans with ink and paper swapped would not
    // show: the model is as confident on them, and wrong. CBPE sees only
    // what the scores say.)
    f.push(&f.signed(&DIGITS_GENERIC, "1.1.0"), "1.1.0", 100.0);
    for (a, _) in &agents {
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    feed(true);
    let acc = f
        .client
        .accuracy("digits", None, &Range::default(), None)
        .unwrap();
    let est: Vec<f64> = acc
        .versions
        .iter()
        .map(|v| v.estimated.as_ref().unwrap().accuracy)
        .collect();
    assert!(est[1] < est[0] - 0.05, "estimates {est:?}");
    assert!(acc.versions.iter().all(|v| v.labelled == 0));
    wait_for("the accuracy gate to halt", 30, || {
        f.channel_state().0 == edgeml_client::wire::fleet::RolloutState::Halted
    });
    let reason = f.channel_state().1.unwrap();
    assert!(
        reason.starts_with(
            "canary: estimated accuracy (CBPE, mean top score; fewer than 50 labelled predictions"
        ),
        "{reason}"
    );
    assert!(
        reason.contains("on digits 1.1.0 (120 predictions;"),
        "{reason}"
    );
}

/// y = x + 1 on four values, with no labels: a regression.
const TRIVIAL: Spec = Spec {
    name: "trivial",
    onnx: "trivial/add.onnx",
    guest: "edgeml_generic",
    labels: None,
    preprocess: None,
};

/// An agent serving the trivial regression (`x + 1`, no labels) with
/// telemetry to `f`, its telemetry edited by `edit`.
fn regression_agent(
    f: &Fleet,
    id: &str,
    edit: impl FnOnce(&mut edgeml_runtime::TelemetryConfig),
) -> (Agent, edgeml_runtime::Telemetry) {
    let (rt, t) = telemetry_runtime_with(f, id, edit);
    let mut c = f.agent_config(id);
    c.identity_dir = Some(t.config().dir.clone());
    let a = Agent::open(c, rt).unwrap();
    let mut r = f.release_for(&f.signed(&TRIVIAL, "1.0.0"), "1.0.0", 100.0);
    r.model = "trivial".into();
    let env = edgeml_fleet::Envelope::sign(&r, &[&f.release[0], &f.release[1]]).unwrap();
    f.publish_release(env.to_vec()).unwrap();
    assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    (a, t)
}

/// The trivial regression's prediction for `x` (its first output is `x[0] + 1`).
fn regress(a: &Agent, x: [f32; 4]) -> edgeml_runtime::Prediction {
    a.predict(edgeml_runtime::Input::Tensors(vec![
        edgeml_runtime::Tensor::from_f32("x", vec![1, 4], &x),
    ]))
    .unwrap()
}

#[test]
fn regression_labels_give_mean_absolute_error() {
    let f = Fleet::new();
    let (a, t) = regression_agent(&f, "reg-1", |_| {});
    let predict = |x: [f32; 4]| regress(&a, x);
    // First output values 2 and 1, true values 2.5 and 0: errors 0.5 and 1.
    let p1 = predict([1.0, 2.0, 3.0, 4.0]);
    let p2 = predict([0.0; 4]);
    a.feedback(&p1.id, "2.5").unwrap();
    a.feedback(&p2.id, " 0 ").unwrap();
    assert!(matches!(
        a.feedback(&p1.id, "high"),
        Err(FeedbackError::NotANumber { label, .. }) if label == "high"
    ));
    t.flush(Duration::from_secs(20));
    let acc = f
        .client
        .accuracy("trivial", None, &Range::default(), None)
        .unwrap();
    let v = &acc.versions[0];
    let reg = v.regression.as_ref().expect("a regression error");
    assert_eq!(reg.labelled, 2);
    assert!((reg.mae - 0.75).abs() < 1e-9, "{reg:?}");
    assert!((reg.rmse - (0.625f64).sqrt()).abs() < 1e-9, "{reg:?}");
    // No classes for a regression.
    assert_eq!((v.labelled, v.accuracy, v.classes.len()), (0, None, 0));
}

#[test]
fn batch_labels_give_regression_error_from_sampled_outputs() {
    // Samples keep a regression's first output value, so true values
    // uploaded later (not given on the device) give its error too.
    let f = Fleet::new();
    let (a, t) = regression_agent(&f, "reg-batch", |tc| {
        tc.window = Duration::from_secs(60);
        tc.samples = Some(edgeml_runtime::telemetry::SampleConfig {
            per_window: 16,
            ..Default::default()
        });
    });
    let predict = |x: [f32; 4]| regress(&a, x);
    // First output values 2 and 1; true values 3 and 1: errors 1 and 0.
    let (p1, p2, p3) = (
        predict([1.0, 2.0, 3.0, 4.0]),
        predict([0.0; 4]),
        predict([0.0; 4]),
    );
    t.flush(Duration::from_secs(20));
    let labels = json!([
        {"prediction_id": p1.id, "label": "3"},
        {"prediction_id": p2.id, "label": "1.0"},
        {"prediction_id": p3.id, "label": "high"},
    ]);
    let got = f
        .client
        .upload_labels(serde_json::to_vec(&labels).unwrap(), "application/json")
        .unwrap();
    // A regression's sample takes only a number as its truth.
    assert_eq!((got.received, got.matched, got.unmatched), (3, 2, 1));
    assert_eq!(got.unmatched_ids, [p3.id.clone()]);
    let acc = f
        .client
        .accuracy("trivial", None, &Range::default(), None)
        .unwrap();
    let reg = acc.versions[0]
        .regression
        .as_ref()
        .expect("a regression error");
    assert_eq!(reg.labelled, 2);
    assert!((reg.mae - 0.5).abs() < 1e-9, "{reg:?}");
    assert!((reg.rmse - 0.5f64.sqrt()).abs() < 1e-9, "{reg:?}");
}
