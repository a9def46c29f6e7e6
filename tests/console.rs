//! The web console (`/ui`) in a real browser: headless Chromium driven
//! through chromedriver (WebDriver, fantoccini) against a real fleet server
//! on 127.0.0.1 with real agents shipping telemetry. The browser logs in,
//! sees the devices, watches a bad release halt, reads why, resumes it,
//! finds the audit entry, and opens the charts, the drift heatmap and the
//! samples. Each page's screenshot goes to `target/tmp/console/`, and to
//! `docs/console/` (the README's images) with `EDGEML_UPDATE_SCREENSHOTS=1`.
//!
//! The session and CSRF rules are tested over plain HTTP too: a form post
//! without the session's token, from another origin, or by a viewer is
//! refused, and changes nothing.

use crate::common::*;
use crate::fleet::*;
use edgeml_agent::{Agent, PollOutcome};
use edgeml_client::wire::fleet::RolloutState;
use edgeml_runtime::telemetry::SampleConfig;
use fantoccini::{Client, Locator};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VIEWER: &str = "console-viewer-token";

/// A fleet whose server has the console on plain HTTP (loopback), a viewer
/// token, and a canary gate that judges after 20 predictions.
fn console_fleet() -> Fleet {
    Fleet::with_settings(|s| {
        s.console.viewer_token = Some(VIEWER.into());
        s.console.insecure_http = true;
        s.fleet.canary.min_predictions = 20;
        s.drift.min_samples = 20;
    })
}

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Option<Driver> {
    let exe = ["chromedriver", "/usr/bin/chromedriver"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(exe) = exe else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromedriver is missing (apt-get install chromium chromium-driver); .ci/run installs it"
        );
        eprintln!(
            "skipping the browser test: no chromedriver (apt-get install chromium chromium-driver)"
        );
        return None;
    };
    let port = free_port();
    let child = Command::new(exe)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let d = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    wait_for("chromedriver to listen", 20, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Some(d)
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1360,1000", "--lang=en-GB"],
        }),
    );
    fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// The text of the first `css` element, waiting up to 10 s for it (a
/// click returns before the page it loads is there).
async fn text(c: &Client, css: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.find(Locator::Css(css)).await {
            Ok(e) => return e.text().await.unwrap(),
            Err(e) if Instant::now() > deadline => {
                let url = c.current_url().await.map(|u| u.to_string());
                panic!("no `{css}` on {url:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Wait until the browser is at `path` (after a click or a redirect).
async fn at(c: &Client, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = c.current_url().await.unwrap();
        if now.path() == path
            && c.execute("return document.readyState", vec![])
                .await
                .unwrap()
                == "complete"
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the browser is at {now}, not {path}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(c: &Client, what: Locator<'_>) {
    c.find(what).await.unwrap().click().await.unwrap();
}

async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.unwrap().len()
}

/// Save the page as `name.png` (see the module documentation for where).
async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    let mut dirs = vec![PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console")];
    if std::env::var_os("EDGEML_UPDATE_SCREENSHOTS").is_some() {
        dirs.push(repo().join("docs/console"));
    }
    for d in dirs {
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("{name}.png")), &png).unwrap();
    }
}

/// Log in on the login page (the one the browser is on, which may carry
/// where to go next, or a fresh one).
async fn login(c: &Client, base: &str, token: &str, name: &str) {
    if c.current_url().await.unwrap().path() != "/ui/login" {
        c.goto(&format!("{base}/ui/login")).await.unwrap();
    }
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    c.find(Locator::Id("operator"))
        .await
        .unwrap()
        .send_keys(name)
        .await
        .unwrap();
    click(&c, Locator::Css("form.login button[type=submit]")).await;
}

/// Digits 1.0.0 packed with a drift baseline from the 360 held-out digits.
fn digits_with_baseline(f: &Fleet) -> Vec<u8> {
    let (_, model) = load(&DIGITS_IMAGE, &crate::fleet::runtime());
    let baseline = model
        .baseline((0..360).map(|i| media("image/png", png(i))))
        .unwrap();
    f.sign(pack_custom(
        &DIGITS_IMAGE,
        "1.0.0",
        Some(baseline),
        Vec::new(),
        |_| {},
    ))
}

/// Two gateways with tags, telemetry and drift samples.
fn gateways(f: &Fleet) -> Vec<(Agent, edgeml_runtime::Telemetry)> {
    ["gw-north", "gw-south"]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (rt, t) = telemetry_runtime_with(f, id, |tc| {
                tc.samples = Some(SampleConfig {
                    per_window: 3,
                    ..SampleConfig::default()
                })
            });
            let mut c = f.agent_config(id);
            c.identity_dir = Some(t.config().dir.clone());
            c.tags.insert("site".into(), ["north", "south"][i].into());
            c.tags.insert("role".into(), "gateway".into());
            (Agent::open(c, rt).unwrap(), t)
        })
        .collect()
}

fn flush(agents: &[(Agent, edgeml_runtime::Telemetry)]) {
    std::thread::sleep(Duration::from_millis(600));
    for (_, t) in agents {
        t.flush(Duration::from_secs(10));
    }
}

#[test]
fn console_shows_the_fleet_and_steers_a_halted_rollout_in_a_browser() {
    let Some(driver) = chromedriver() else { return };
    let f = console_fleet();
    let base = f.url();
    let agents = gateways(&f);
    f.push(&digits_with_baseline(&f), "1.0.0", 100.0);
    for (a, _) in &agents {
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }
    // Ordinary traffic for two seconds, then one digit over and over: the
    // heatmap's later columns drift.
    let rounds: [Vec<usize>; 4] = [
        (200..280).collect(),
        (280..360).collect(),
        vec![0; 120],
        vec![0; 120],
    ];
    for round in &rounds {
        for (n, (a, _)) in agents.iter().enumerate() {
            for (_, &i) in round.iter().enumerate().filter(|(k, _)| k % 2 == n) {
                a.predict(media("image/png", png(i))).unwrap();
            }
        }
        flush(&agents);
        std::thread::sleep(Duration::from_millis(500));
    }
    // A microphone gateway running voice activity detection: its samples
    // are WAV recordings.
    let (mic_runtime, mic) = telemetry_runtime_with(&f, "mic-1", |tc| {
        tc.samples = Some(SampleConfig {
            per_window: 2,
            ..SampleConfig::default()
        })
    });
    let (_, vad) = load(&VAD, &mic_runtime);
    let wav = read(model_path("vad/speech.wav"));
    for _ in 0..2 {
        vad.predict(media("audio/wav", wav.clone())).unwrap();
    }
    std::thread::sleep(Duration::from_millis(600));
    mic.flush(Duration::from_secs(10));
    // Two samples get their true labels: one right, one wrong.
    let samples = f.store().samples(&Default::default()).unwrap();
    let labelled: Vec<_> = samples
        .iter()
        .filter_map(|s| Some((s.prediction_id.clone()?, s.prediction.clone()?)))
        .take(2)
        .collect();
    assert_eq!(
        labelled.len(),
        2,
        "the gateways sent no samples with predictions"
    );
    let rows: Vec<_> = labelled
        .iter()
        .enumerate()
        .map(|(i, (id, p))| serde_json::json!({"prediction_id": id, "label": if i == 0 { p.clone() } else { format!("not-{p}") }}))
        .collect();
    f.client
        .upload_labels(serde_json::to_vec(&rows).unwrap(), "application/json")
        .unwrap();
    // 1.1.0 takes tensors only: the gateways' PNG clients will fail on it.
    f.push(&f.signed(&DIGITS_GENERIC, "1.1.0"), "1.1.0", 100.0);
    for (a, _) in &agents {
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = rt.block_on(browser(&driver));
    rt.block_on(async {
        // Not logged in: every page sends the browser to the login form.
        c.goto(&format!("{base}/ui/rollouts")).await.unwrap();
        at(&c, "/ui/login").await;
        login(&c, &base, "not-the-token", "alice").await;
        assert!(text(&c, ".notice.bad")
            .await
            .contains("neither the admin token nor the viewer token"));
        screenshot(&c, "login").await;
        login(&c, &base, ADMIN, "alice").await;
        // The login's `next` brings the operator back to the rollouts.
        at(&c, "/ui/rollouts").await;
        assert!(text(&c, "header .who").await.contains("alice · admin"));

        c.goto(&format!("{base}/ui/fleet")).await.unwrap();
        // The two gateways, and the microphone that only sends telemetry.
        assert_eq!(text(&c, "#fleet-count").await, "3 of 3 devices");
        assert!(text(&c, "tr[data-device=mic-1]")
            .await
            .contains("telemetry only"));
        let row = text(&c, "tr[data-device=gw-north]").await;
        for want in [
            "gw-north",
            "digits",
            "1.1.0",
            "site=north",
            "role=gateway",
            "healthy",
        ] {
            assert!(
                row.contains(want),
                "`{want}` missing from the fleet row: {row}"
            );
        }
        screenshot(&c, "fleet").await;
        // Filter by tag selector.
        c.goto(&format!("{base}/ui/fleet?tag=site%3Dsouth"))
            .await
            .unwrap();
        assert_eq!(text(&c, "#fleet-count").await, "1 of 3 devices");
        assert_eq!(count(&c, "tr[data-device=gw-south]").await, 1);

        c.goto(&format!("{base}/ui/rollouts")).await.unwrap();
        assert_eq!(text(&c, "#channel-stable dd.state").await, "▶ active");
    });

    // The bad release: every prediction fails, and the gate halts it.
    for (a, _) in &agents {
        for i in 0..15 {
            assert!(a.predict(media("image/png", png(i))).is_err());
        }
    }
    flush(&agents);
    wait_for("the canary gate to halt 1.1.0", 30, || {
        f.channel_state().0 == RolloutState::Halted
    });
    // (The store is read outside the browser's runtime: the PostgreSQL
    // client blocks.)
    let halt_reason = f.channel_state().1;

    rt.block_on(async {
        c.goto(&format!("{base}/ui/rollouts")).await.unwrap();
        assert_eq!(text(&c, "#channel-stable dd.state").await, "■ halted");
        let reason = text(&c, "#channel-stable .halt-reason").await;
        assert!(reason.contains("error rate"), "{reason}");
        assert!(
            reason.contains("gw-north") && reason.contains("gw-south"),
            "the halt names no devices: {reason}"
        );
        assert_eq!(Some(reason.clone()), halt_reason);
        screenshot(&c, "rollout-halted").await;

        // Resume: a confirmation page first, then the decision.
        click(&c, Locator::Css("#channel-stable a[data-action=resume]")).await;
        at(&c, "/ui/rollouts/stable/resume").await;
        assert!(text(&c, "p.question")
            .await
            .contains("Resume the rollout of digits 1.1.0 on channel stable"));
        screenshot(&c, "confirm-resume").await;
        click(&c, Locator::Id("confirm")).await;
        at(&c, "/ui/rollouts").await;
        assert!(text(&c, ".notice.ok").await.contains("is now active"));
        assert_eq!(text(&c, "#channel-stable dd.state").await, "▶ active");
    });
    assert_eq!(f.channel_state().0, RolloutState::Active);
    let entry = last_audit(&f, "rollout.resume");
    assert_eq!(
        (
            entry.actor.as_str(),
            entry.operator.as_deref(),
            entry.details["via"].as_str(),
            entry.details["from"].as_str()
        ),
        ("admin", Some("alice"), "console", "halted")
    );

    rt.block_on(async {
        c.goto(&format!("{base}/ui/audit?q=rollout.resume"))
            .await
            .unwrap();
        assert_eq!(
            c.find(Locator::Id("chain"))
                .await
                .unwrap()
                .attr("data-verified")
                .await
                .unwrap()
                .as_deref(),
            Some("true")
        );
        let row = text(&c, "#audit tbody tr").await;
        for want in ["rollout.resume", "alice", "via=console", "stable"] {
            assert!(
                row.contains(want),
                "`{want}` missing from the audit entry: {row}"
            );
        }
        // The search leaves out what does not match.
        assert_eq!(
            count(&c, "#audit tbody tr").await,
            count(&c, "#audit tbody tr[data-action='rollout.resume']").await
        );
        c.goto(&format!("{base}/ui/audit")).await.unwrap();
        assert!(count(&c, "#audit tr[data-action='rollout.halt']").await >= 1);
        assert!(count(&c, "#audit tr[data-action='console.login']").await >= 1);
        screenshot(&c, "audit").await;

        // Charts per version: drawn by uPlot from the page's data.
        c.goto(&format!("{base}/ui/models/digits")).await.unwrap();
        let versions = text(&c, "#versions").await;
        assert!(
            versions.contains("1.0.0") && versions.contains("1.1.0"),
            "{versions}"
        );
        assert!(
            versions.contains("50.0% of 2"),
            "accuracy from the two labels: {versions}"
        );
        wait_until(&c, "#chart-latency-p50[data-drawn=true] canvas").await;
        assert_eq!(
            count(&c, "[data-chart][data-drawn=true]").await,
            5,
            "latency p50/p99, errors, throughput, accuracy"
        );
        screenshot(&c, "model").await;

        // The drift heatmap: the repeated digit drifts.
        c.goto(&format!("{base}/ui/models/digits/1.0.0/drift"))
            .await
            .unwrap();
        let heatmap = text(&c, "#heatmap").await;
        assert!(
            count(&c, "#heatmap thead th").await >= 4,
            "fewer than three time buckets: {heatmap}"
        );
        // The repeated digit drifts far more than the ordinary traffic.
        let mut psi = Vec::new();
        for cell in c
            .find_all(Locator::Css("#heatmap td.cell[data-feature='pixel.mean']"))
            .await
            .unwrap()
        {
            let t = cell.text().await.unwrap();
            psi.push(t.split_whitespace().next().unwrap().parse::<f64>().unwrap());
        }
        let n = psi.len();
        assert!(n >= 4, "{heatmap}");
        let ordinary = psi[0].max(psi[1]);
        assert!(
            psi[n - 2].min(psi[n - 1]) > 2.0 * ordinary,
            "pixel.mean PSI {psi:?}: {heatmap}"
        );
        assert!(
            count(&c, "#heatmap td.cell.drift[data-feature='pixel.mean']").await >= 1,
            "{heatmap}"
        );
        // A drifting cell opens that feature's distributions.
        let cell = c
            .find(Locator::Css("#heatmap td.cell.drift a"))
            .await
            .unwrap();
        let feature = c
            .find(Locator::Css("#heatmap td.cell.drift"))
            .await
            .unwrap()
            .attr("data-feature")
            .await
            .unwrap()
            .unwrap();
        cell.click().await.unwrap();
        // The cell's link names its bucket (`at`); the page before did not.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c
            .current_url()
            .await
            .unwrap()
            .query()
            .unwrap_or("")
            .contains("at=")
        {
            assert!(Instant::now() < deadline, "the heatmap cell did not open");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        at(&c, "/ui/models/digits/1.0.0/drift").await;
        assert_eq!(
            text(&c, "#dist-h").await,
            format!("{feature}: baseline and current")
        );
        // The bucket's observations only, and some of them outside the
        // baseline's usual shares.
        let about = text(&c, "#distribution p").await;
        assert!(about.contains("observations in the bucket from"), "{about}");
        let n: u64 = about.split_whitespace().next().unwrap().parse().unwrap();
        assert!(n > 0 && n < 400, "{about}");
        assert!(count(&c, "#dist-chart rect.current").await >= 2);
        screenshot(&c, "drift").await;
        c.execute(
            "document.getElementById('distribution').scrollIntoView()",
            vec![],
        )
        .await
        .unwrap();
        screenshot(&c, "drift-distribution").await;

        // Samples: the digits drawn, with predictions and labels.
        c.goto(&format!("{base}/ui/samples?model=digits"))
            .await
            .unwrap();
        assert!(count(&c, "article.sample img.sample-image").await > 0);
        let natural: serde_json::Value = c
            .execute(
                "return document.querySelector('img.sample-image').naturalWidth",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            natural.as_u64().unwrap_or(0) > 0,
            "the sample image did not decode"
        );
        assert_eq!(count(&c, "article.sample dd.label .ok").await, 1);
        assert_eq!(count(&c, "article.sample dd.label .bad").await, 1);
        screenshot(&c, "samples").await;

        // The microphone's samples: a waveform and a player per recording.
        c.goto(&format!("{base}/ui/samples?model=silero-vad"))
            .await
            .unwrap();
        assert!(count(&c, "article.sample svg.waveform path").await >= 1);
        assert_eq!(
            count(&c, "article.sample svg.waveform").await,
            count(&c, "article.sample audio").await
        );
        let label = c
            .find(Locator::Css("article.sample svg.waveform"))
            .await
            .unwrap()
            .attr("aria-label")
            .await
            .unwrap()
            .unwrap();
        assert!(label.contains("at 16000 Hz"), "{label}");
        screenshot(&c, "samples-audio").await;

        // A viewer sees everything and can change nothing.
        click(&c, Locator::Css("header .who button")).await;
        at(&c, "/ui/login").await;
        login(&c, &base, VIEWER, "victor").await;
        at(&c, "/ui/fleet").await;
        c.goto(&format!("{base}/ui/rollouts")).await.unwrap();
        assert!(text(&c, "header .who").await.contains("viewer (read-only)"));
        assert_eq!(count(&c, "a[data-action]").await, 0);
        c.goto(&format!("{base}/ui/rollouts/stable/pause"))
            .await
            .unwrap();
        assert!(text(&c, ".notice.bad")
            .await
            .contains("logged in as a viewer"));
    });
    rt.block_on(c.close()).unwrap();
    assert_eq!(
        f.channel_state().0,
        RolloutState::Active,
        "the viewer changed the rollout"
    );
}

async fn wait_until(c: &Client, css: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(c, css).await == 0 {
        assert!(Instant::now() < deadline, "`{css}` never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------ the same rules over HTTP

/// A client that does not follow redirects (to see them).
fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Log in with `token`; the session cookie (`name=value`) and the set-cookie line.
fn session(base: &str, token: &str) -> (String, String) {
    let r = http()
        .post(format!("{base}/ui/login"))
        .form(&[
            ("token", token),
            ("operator", "mallory"),
            ("next", "/ui/rollouts"),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "login");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    (set.split(';').next().unwrap().to_string(), set)
}

/// The value of the hidden field `name` in `page`.
fn hidden(page: &str, name: &str) -> String {
    let key = format!("name=\"{name}\" value=\"");
    let at = page
        .find(&key)
        .unwrap_or_else(|| panic!("no `{name}` field in {page}"))
        + key.len();
    page[at..].split('"').next().unwrap().to_string()
}

/// A console page as the session sees it.
fn get(base: &str, cookie: &str, path: &str) -> reqwest::blocking::Response {
    http()
        .get(format!("{base}{path}"))
        .header("cookie", cookie)
        .send()
        .unwrap()
}

/// The CSRF token in a page the session sees.
fn csrf(base: &str, cookie: &str) -> String {
    hidden(&get(base, cookie, "/ui/rollouts").text().unwrap(), "csrf")
}

/// The fields of `action`'s confirmation form: the CSRF token and the
/// rollout as seen.
fn confirm_form(base: &str, cookie: &str, action: &str) -> [(&'static str, String); 2] {
    let page = get(base, cookie, &format!("/ui/rollouts/stable/{action}"));
    assert_eq!(page.status(), 200, "confirmation page of {action}");
    let page = page.text().unwrap();
    [
        ("csrf", hidden(&page, "csrf")),
        ("seen", hidden(&page, "seen")),
    ]
}

/// Post `form` to `action` on channel `stable` with the session, and the
/// extra request headers given.
fn post_action(
    base: &str,
    cookie: &str,
    action: &str,
    form: &impl serde::Serialize,
    headers: &[(&str, &str)],
) -> reqwest::blocking::Response {
    let mut req = http()
        .post(format!("{base}/ui/rollouts/stable/{action}"))
        .header("cookie", cookie)
        .form(form);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().unwrap()
}

#[test]
fn console_session_cookie_is_httponly_strict_and_secure_by_default() {
    let f = Fleet::with_settings(|s| s.console.viewer_token = Some(VIEWER.into()));
    let (_, set) = session(&f.url(), ADMIN);
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/ui"] {
        assert!(set.contains(attr), "`{attr}` missing: {set}");
    }
    // The value is encrypted: neither the role nor the CSRF token shows.
    assert!(!set.contains("admin") && !set.contains("csrf"), "{set}");
    // Pages carry a strict content security policy.
    let r = http().get(format!("{}/ui/login", f.url())).send().unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
}

#[test]
fn rejects_console_action_without_csrf_token() {
    let (f, _a) = on_v1();
    let base = f.url();
    let (cookie, _) = session(&base, ADMIN);
    let r = post_action(&base, &cookie, "abort", &[("csrf", "0".repeat(64))], &[]);
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("CSRF token does not match"));
    let r = post_action(&base, &cookie, "abort", &[("seen", "active")], &[]);
    assert_eq!(r.status(), 403);
    assert_eq!(f.channel_state().0, RolloutState::Active);
    // With the token, the same post acts (the console's own form).
    let form = confirm_form(&base, &cookie, "abort");
    let r = post_action(&base, &cookie, "abort", &form, &[]);
    assert_eq!(r.status(), 303);
    assert_eq!(f.channel_state().0, RolloutState::Halted);
    let entry = last_audit(&f, "rollout.abort");
    assert_eq!(
        (entry.operator.as_deref(), entry.details["via"].as_str()),
        (Some("mallory"), "console")
    );
    let login = last_audit(&f, "console.login");
    assert_eq!(
        (login.actor.as_str(), login.operator.as_deref()),
        ("admin", Some("mallory"))
    );
}

#[test]
fn rejects_console_action_from_another_origin() {
    let (f, _a) = on_v1();
    let base = f.url();
    let (cookie, _) = session(&base, ADMIN);
    let form = confirm_form(&base, &cookie, "abort");
    let r = post_action(
        &base,
        &cookie,
        "abort",
        &form,
        &[("origin", "http://evil.example")],
    );
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("came from another site"));
    // A browser that says the request is cross-site (or same-site: another
    // port or subdomain) is refused too, whatever the Origin.
    for site in ["cross-site", "same-site"] {
        let r = post_action(&base, &cookie, "abort", &form, &[("sec-fetch-site", site)]);
        assert_eq!(r.status(), 403, "{site}");
    }
    // ... and so is a login posted from another site.
    let r = http()
        .post(format!("{base}/ui/login"))
        .header("origin", "http://evil.example")
        .form(&[("token", ADMIN)])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("set-cookie").is_none());
    assert_eq!(f.channel_state().0, RolloutState::Active);
}

#[test]
fn rejects_stale_console_action_after_the_rollout_changed() {
    let (f, _a) = on_v1();
    let base = f.url();
    let (cookie, _) = session(&base, ADMIN);
    // The operator opens "pause" on the active rollout ...
    let form = confirm_form(&base, &cookie, "pause");
    // ... the rollout is halted meanwhile ...
    f.client
        .rollout("stable", edgeml_client::wire::fleet::RolloutAction::Abort)
        .unwrap();
    // ... and the confirmed pause must not turn the halt into a pause
    // (devices would keep the halted release).
    let r = post_action(&base, &cookie, "pause", &form, &[]);
    assert_eq!(r.status(), 409);
    assert!(r
        .text()
        .unwrap()
        .contains("changed since you looked: it is now halted"));
    assert_eq!(f.channel_state().0, RolloutState::Halted);
    // Nor does a hand-made pause of the halted rollout, with a fresh view.
    let page = get(&base, &cookie, "/ui/rollouts/stable/pause");
    assert_eq!(page.status(), 409);
    assert!(page
        .text()
        .unwrap()
        .contains("pause does not apply to it now"));
    assert_eq!(f.channel_state().0, RolloutState::Halted);
}

#[test]
fn rejects_console_action_by_viewer() {
    let (f, _a) = {
        let f = Fleet::with_settings(|s| s.console.viewer_token = Some(VIEWER.into()));
        f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
        let a = f.agent("gw-1");
        assert!(matches!(a.poll(), Ok(PollOutcome::Installed(_))));
        (f, a)
    };
    let base = f.url();
    let (cookie, _) = session(&base, VIEWER);
    let token = csrf(&base, &cookie);
    let r = post_action(&base, &cookie, "abort", &[("csrf", token)], &[]);
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("logged in as a viewer"));
    assert_eq!(f.channel_state().0, RolloutState::Active);
    assert_eq!(last_audit(&f, "console.login").actor, "viewer");
    // A forged cookie is no session at all: a well-formed admin session in
    // the clear, and the viewer's real cookie with one character changed.
    let forged = r#"edgeml_session={"role":"admin","operator":"mallory","csrf":"00","expires_ms":99999999999999}"#;
    let (name, value) = cookie.split_once('=').unwrap();
    let mut bytes = value.as_bytes().to_vec();
    bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{name}={}", String::from_utf8(bytes).unwrap());
    for c in [forged.to_string(), tampered] {
        let r = http()
            .get(format!("{base}/ui/fleet"))
            .header("cookie", &c)
            .send()
            .unwrap();
        assert_eq!(r.status(), 303, "{c}");
        assert!(r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/ui/login"));
    }
}

// ------------------------------------------------ the command line's view

fn fleet_status(f: &Fleet) -> String {
    let out = edgeml()
        .args(["fleet", "status", "--server", &f.url()])
        .env("EDGEML_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Progress and tables go to a terminal only: nothing on stderr here.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn fleet_status_prints_rollouts_and_devices_as_tables() {
    let (f, _a) = on_v1();
    let out = fleet_status(&f);
    let line = |start: &str| {
        out.lines()
            .find(|l| l.contains(start))
            .unwrap_or_else(|| panic!("no line with `{start}`:\n{out}"))
            .to_string()
    };
    assert!(
        out.contains("Rollouts (1)") && out.contains("Devices (1)"),
        "{out}"
    );
    let rollout = line("digits 1.0.0");
    for want in ["stable", "active", "100%", "1 of 1"] {
        assert!(rollout.contains(want), "`{want}` missing: {rollout}");
    }
    let device = line("gw-1");
    for want in ["stable", "digits 1.0.0", "installed"] {
        assert!(device.contains(want), "`{want}` missing: {device}");
    }
    // A halt shows with its reason.
    f.client
        .rollout("stable", edgeml_client::wire::fleet::RolloutAction::Abort)
        .unwrap();
    let out = fleet_status(&f);
    assert!(
        out.contains("halted") && out.contains("aborted by an operator"),
        "{out}"
    );
}

#[test]
fn console_session_holds_across_replicas_and_ends_when_its_token_is_replaced() {
    let key = vec![7u8; 64];
    let settings = |admin: &str| {
        let mut s = edgeml_collector::Settings::new(admin, ENROL);
        s.console.session_key = Some(key.clone());
        s
    };
    let f = Fleet::with_settings(|s| s.console.session_key = Some(key.clone()));
    let (cookie, _) = session(&f.url(), ADMIN);
    let fleet_page =
        |server: &edgeml_collector::Server| get(&server.url(), &cookie, "/ui/fleet").status();
    // A second replica on the same database with the same key and token
    // takes the session ...
    let replica = edgeml_collector::Server::start_with(
        f.db.open(),
        settings(ADMIN),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    assert_eq!(fleet_page(&replica), 200);
    // ... one whose admin token was replaced does not.
    let rotated = edgeml_collector::Server::start_with(
        f.db.open(),
        settings("a-new-admin-token"),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    assert_eq!(fleet_page(&rotated), 303);
}

/// The actions a rollouts page offers (`data-action` of its buttons).
fn offered(base: &str, cookie: &str) -> Vec<String> {
    let page = get(base, cookie, "/ui/rollouts").text().unwrap();
    page.split("data-action=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_string())
        .collect()
}

#[test]
fn console_pauses_resumes_promotes_and_aborts_a_paced_rollout_each_audited() {
    let f = Fleet::new();
    f.push(&f.signed(&DIGITS_IMAGE, "1.0.0"), "1.0.0", 100.0);
    let bundle = f.signed(&DIGITS_IMAGE, "1.1.0");
    let mut r = f.release_for(&bundle, "1.1.0", 100.0);
    r.schedule = Some(edgeml_fleet::Schedule {
        steps: vec![25.0, 100.0],
        min_step_secs: 3600,
        min_step_devices: 1,
    });
    let env = edgeml_fleet::Envelope::sign(&r, &[&f.release[0], &f.release[1]]).unwrap();
    f.publish_release(env.to_vec()).unwrap();
    let base = f.url();
    let (cookie, _) = session(&base, ADMIN);
    let rollout = || f.store().release("stable").unwrap().unwrap();
    assert_eq!(offered(&base, &cookie), ["pause", "promote", "abort"]);
    for (action, state, step, offers) in [
        (
            "pause",
            RolloutState::Paused,
            0,
            vec!["resume", "promote", "abort"],
        ),
        (
            "resume",
            RolloutState::Active,
            0,
            vec!["pause", "promote", "abort"],
        ),
        ("promote", RolloutState::Active, 1, vec!["pause", "abort"]),
        ("abort", RolloutState::Halted, 1, vec!["resume"]),
    ] {
        let form = confirm_form(&base, &cookie, action);
        let r = post_action(&base, &cookie, action, &form, &[]);
        assert_eq!(
            r.status(),
            303,
            "{action}: {}",
            r.text().unwrap_or_default()
        );
        let now = rollout();
        assert_eq!((now.state, now.step), (state, step), "after {action}");
        assert_eq!(offered(&base, &cookie), offers, "after {action}");
        let entry = last_audit(&f, &format!("rollout.{action}"));
        assert_eq!(
            (
                entry.actor.as_str(),
                entry.operator.as_deref(),
                entry.details["via"].as_str(),
                entry.details["to"].as_str()
            ),
            ("admin", Some("mallory"), "console", state.name()),
            "{action}"
        );
    }
}
