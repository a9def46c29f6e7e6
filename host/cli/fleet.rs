//! `edgeml root`, `push`, `rollout`, `fleet` and `agent`.

use crate::args::{
    FleetServer, HostArgs, LogFormat, PushArgs, ReleaseOptions, RolloutArgs, RolloutCommand,
    RootArgs, RootCommand, RootKeys,
};
use crate::monitor::token;
use anyhow::{anyhow, bail, Context, Result};
use edgeml_bundle::{PublicKey, SecretKey};
use edgeml_fleet::wire::{ChannelView, FleetDevice};
use edgeml_fleet::{BundleRef, Envelope, Release, Root, TrustedRoot};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, SystemTime};

fn client() -> Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?)
}

fn admin_token(s: &FleetServer) -> Result<String> {
    token(
        None,
        s.admin_token_file.as_deref(),
        "EDGEML_ADMIN_TOKEN",
        "admin-token",
    )
}

fn url(s: &FleetServer, path: &str) -> String {
    format!("{}{path}", s.server.trim_end_matches('/'))
}

/// Send, and turn a non-2xx answer into the server's error message.
fn send(req: reqwest::blocking::RequestBuilder, what: &str) -> Result<reqwest::blocking::Response> {
    let resp = req
        .send()
        .with_context(|| format!("{what}: fleet server unreachable"))?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let text = resp.text().unwrap_or_default();
    let msg = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
        .unwrap_or(text);
    bail!("{what} refused ({status}): {msg}")
}

fn secret_keys(paths: &[std::path::PathBuf]) -> Result<Vec<SecretKey>> {
    paths
        .iter()
        .map(|p| SecretKey::from_file(p).with_context(|| format!("reading {}", p.display())))
        .collect()
}

fn public_keys(paths: &[std::path::PathBuf]) -> Result<Vec<PublicKey>> {
    paths
        .iter()
        .map(|p| PublicKey::from_file(p).with_context(|| format!("reading {}", p.display())))
        .collect()
}

fn build_root(version: u64, k: &RootKeys) -> Result<(Root, Vec<SecretKey>)> {
    let root_keys = secret_keys(&k.root_keys)?;
    let root_pubs: Vec<PublicKey> = root_keys.iter().map(SecretKey::public_key).collect();
    let root = Root::new(
        version,
        SystemTime::now() + Duration::from(k.expires),
        (&root_pubs, k.root_threshold),
        (&public_keys(&k.release_keys)?, k.release_threshold),
        (&public_keys(&k.publisher_keys)?, k.publisher_threshold),
    );
    let root = if k.timestamp_keys.is_empty() {
        root
    } else {
        root.with_timestamp(&public_keys(&k.timestamp_keys)?, k.timestamp_threshold)
    };
    Ok((root, root_keys))
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

pub fn root(args: &RootArgs) -> Result<()> {
    match &args.command {
        RootCommand::Init { keys, out } => {
            let (root, signers) = build_root(1, keys)?;
            root.validate()?;
            let env = Envelope::sign(&root, &signers.iter().collect::<Vec<_>>())?;
            TrustedRoot::bootstrap(&env.to_vec()).context("checking the new root")?;
            write(out, &env.to_vec())?;
            println!("wrote root version 1 to {}; provision it on devices (agent.toml `root`) and publish it with `edgeml root publish`", out.display());
        }
        RootCommand::Rotate {
            from,
            sign,
            keys,
            revoke,
            out,
        } => {
            let old_bytes =
                std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
            let mut trusted = TrustedRoot::bootstrap(&old_bytes)
                .with_context(|| format!("{} is not a valid root", from.display()))?;
            let old = trusted.root().clone();
            let (mut root, new_signers) = build_root(old.version + 1, keys)?;
            root.revoked = old.revoked.clone();
            for p in revoke {
                let k =
                    PublicKey::from_file(p).with_context(|| format!("reading {}", p.display()))?;
                root.keys
                    .insert(k.id().to_string(), hex::encode(k.to_bytes()));
                root.revoked.insert(k.id().to_string());
            }
            root.validate()?;
            let old_signers = secret_keys(sign)?;
            let signers: Vec<&SecretKey> = old_signers.iter().chain(new_signers.iter()).collect();
            let env = Envelope::sign(&root, &signers)?;
            trusted
                .update(&env.to_vec())
                .context("checking the new root against the current one")?;
            write(out, &env.to_vec())?;
            println!(
                "wrote root version {} to {} ({} key(s) revoked); publish it with `edgeml root publish`",
                root.version,
                out.display(),
                root.revoked.len()
            );
        }
        RootCommand::Publish { root, server } => {
            let bytes =
                std::fs::read(root).with_context(|| format!("reading {}", root.display()))?;
            let env = Envelope::from_slice(&bytes, "root")?;
            let r: Root = env.payload_unverified()?;
            send(
                client()?
                    .put(url(server, &format!("/v1/fleet/roots/{}", r.version)))
                    .bearer_auth(admin_token(server)?)
                    .body(bytes),
                "publishing the root",
            )?;
            println!("published root version {} to {}", r.version, server.server);
        }
    }
    Ok(())
}

fn parse_share(s: &str) -> Result<f64> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| anyhow!("rollout share `{s}` is not a percentage (e.g. 10%)"))?;
    if !(0.0..=100.0).contains(&v) {
        bail!("rollout share `{s}` must be between 0% and 100%");
    }
    Ok(v)
}

/// The channel's current release, if any.
fn current(s: &FleetServer, channel: &str) -> Result<Option<Release>> {
    let resp = client()?
        .get(url(s, &format!("/v1/fleet/channels/{channel}")))
        .send()
        .context("fleet server unreachable")?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status().is_success() {
        bail!(
            "reading channel `{channel}`: fleet server answered {}",
            resp.status()
        );
    }
    let view: ChannelView = resp.json().context("channel view")?;
    Ok(Some(view.release.payload_unverified()?))
}

fn publish(s: &FleetServer, release: &Release, opts: &ReleaseOptions) -> Result<()> {
    let keys = secret_keys(&opts.keys)?;
    let env = Envelope::sign(release, &keys.iter().collect::<Vec<_>>())?;
    send(
        client()?
            .put(url(
                s,
                &format!("/v1/fleet/channels/{}/release", release.channel),
            ))
            .bearer_auth(admin_token(s)?)
            .body(env.to_vec()),
        "publishing the release",
    )?;
    Ok(())
}

pub fn push(args: &PushArgs) -> Result<()> {
    let bytes = std::fs::read(&args.bundle)
        .with_context(|| format!("reading {}", args.bundle.display()))?;
    let info = edgeml_bundle::inspect(&bytes)?;
    let manifest = info.manifest.ok_or_else(|| {
        anyhow!(
            "{} has no manifest; pack it with `edgeml pack`",
            args.bundle.display()
        )
    })?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let share = parse_share(&args.rollout)?;
    let s = &args.server;
    send(
        client()?
            .put(url(s, &format!("/v1/fleet/bundles/{sha256}")))
            .bearer_auth(admin_token(s)?)
            .body(bytes.clone()),
        "uploading the bundle",
    )?;
    let version = current(s, &args.channel)?.map_or(1, |r| r.version + 1);
    let release = Release {
        kind: "release".into(),
        channel: args.channel.clone(),
        version,
        expires: humantime::format_rfc3339_seconds(
            SystemTime::now() + Duration::from(args.release.expires),
        )
        .to_string(),
        model: manifest.name.clone(),
        model_version: manifest.version.clone(),
        bundle: BundleRef {
            sha256: sha256.clone(),
            size: bytes.len() as u64,
        },
        rollout_percent: share,
        allow_downgrade: args.allow_downgrade,
    };
    publish(s, &release, &args.release)?;
    println!(
        "pushed {} {} to channel {} (release {version}, bundle sha256:{}, rollout {share}%, expires {})",
        manifest.name,
        manifest.version,
        args.channel,
        &sha256[..12],
        release.expires
    );
    Ok(())
}

pub fn rollout(args: &RolloutArgs) -> Result<()> {
    let (channel, server, action) = match &args.command {
        RolloutCommand::Pause { channel, server } => (channel, server, "pause"),
        RolloutCommand::Resume { channel, server } => (channel, server, "resume"),
        RolloutCommand::Set {
            share,
            channel,
            server,
            release,
        } => {
            let mut r = current(server, channel)?
                .ok_or_else(|| anyhow!("nothing published to channel `{channel}`"))?;
            r.version += 1;
            r.rollout_percent = parse_share(share)?;
            r.expires = humantime::format_rfc3339_seconds(
                SystemTime::now() + Duration::from(release.expires),
            )
            .to_string();
            publish(server, &r, release)?;
            println!(
                "channel {channel}: {} {} now rolls out to {}% (release {})",
                r.model, r.model_version, r.rollout_percent, r.version
            );
            return Ok(());
        }
    };
    send(
        client()?
            .post(url(
                server,
                &format!("/v1/fleet/channels/{channel}/rollout"),
            ))
            .bearer_auth(admin_token(server)?)
            .json(&serde_json::json!({ "action": action })),
        "changing the rollout",
    )?;
    println!("channel {channel}: rollout {action}d");
    Ok(())
}

pub fn view(s: &FleetServer, channel: Option<&str>, json: bool) -> Result<()> {
    let token = admin_token(s)?;
    let channels: serde_json::Value = send(
        client()?
            .get(url(s, "/v1/fleet/channels"))
            .bearer_auth(&token),
        "reading channels",
    )?
    .json()?;
    #[derive(serde::Deserialize)]
    struct Devices {
        devices: Vec<FleetDevice>,
    }
    let devices: Devices = send(
        client()?
            .get(url(s, "/v1/fleet/devices"))
            .bearer_auth(&token),
        "reading devices",
    )?
    .json()?;
    let devices: Vec<_> = devices
        .devices
        .into_iter()
        .filter(|d| channel.is_none_or(|c| d.status.channel == c))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"channels": channels["channels"], "devices": devices})
            )?
        );
        return Ok(());
    }
    for c in channels["channels"].as_array().into_iter().flatten() {
        if channel.is_some_and(|ch| c["channel"] != ch) {
            continue;
        }
        println!(
            "channel {}: {} {} at {}%, rollout {}{}",
            c["channel"].as_str().unwrap_or("?"),
            c["release"]["model"].as_str().unwrap_or("?"),
            c["release"]["model_version"].as_str().unwrap_or("?"),
            c["release"]["rollout_percent"],
            c["state"].as_str().unwrap_or("?"),
            c["reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    println!(
        "{:<16} {:<10} {:<10} {:<12} {:>9}  last error",
        "DEVICE", "INSTALLED", "TARGET", "STATE", "SEEN"
    );
    let now = edgeml_telemetry::now_ms();
    for d in &devices {
        let st = &d.status;
        println!(
            "{:<16} {:<10} {:<10} {:<12} {:>8}s  {}",
            d.device_id,
            st.installed.as_ref().map_or("-", |i| i.version.as_str()),
            st.target.as_deref().unwrap_or("-"),
            serde_json::to_value(st.state)?.as_str().unwrap_or("?"),
            now.saturating_sub(d.last_seen_ms) / 1000,
            st.last_error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// Structured logs on stderr: levels by `RUST_LOG` (default `info`), text or JSON.
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

pub fn agent(
    config: &Path,
    telemetry: Option<&Path>,
    log_format: LogFormat,
    host: &HostArgs,
) -> Result<()> {
    init_logs(log_format);
    let mut agent_config = edgeml_agent::AgentConfig::from_file(config)?;
    let mut runtime_config = crate::commands::config(host)?;
    if let Some(t) = telemetry {
        let tc = edgeml_runtime::TelemetryConfig::from_file(t)?;
        if tc.device_id != agent_config.device_id {
            bail!(
                "the telemetry device_id `{}` differs from the agent's `{}`",
                tc.device_id,
                agent_config.device_id
            );
        }
        // One device key for both.
        agent_config.identity_dir.get_or_insert(tc.dir.clone());
        runtime_config.telemetry(edgeml_runtime::Telemetry::start(tc)?);
    }
    let runtime = edgeml_runtime::Runtime::new(&runtime_config)?;
    let agent = edgeml_agent::Agent::start(agent_config, runtime)?;
    let status = agent.status();
    println!(
        "edgeml agent {} serving {} on {}",
        agent.device_id(),
        status
            .installed
            .map_or("nothing yet".to_string(), |i| format!(
                "{} {}",
                i.model, i.version
            )),
        agent
            .serve_addr()
            .map_or("a Unix socket".to_string(), |a| format!("http://{a}"))
    );
    if let Some(e) = status.last_error {
        println!("last error: {e}");
    }
    agent.wait();
    Ok(())
}

/// `edgeml agent status`: what the agent recorded, without the server.
pub fn agent_status(config: &Path, telemetry: Option<&Path>, json: bool) -> Result<()> {
    let agent_config = edgeml_agent::AgentConfig::from_file(config)?;
    let status = edgeml_agent::last_status(&agent_config)?;
    let spool = telemetry
        .map(edgeml_runtime::TelemetryConfig::from_file)
        .transpose()?
        .map(|t| edgeml_runtime::telemetry::spool_stats(&t));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "device_id": agent_config.device_id,
                "status": status,
                "spool": spool,
            }))?
        );
        return Ok(());
    }
    let version = |i: &Option<edgeml_agent::Installed>| {
        i.as_ref()
            .map_or("none".to_string(), |i| format!("{} {}", i.model, i.version))
    };
    println!("device:      {}", agent_config.device_id);
    match &status {
        None => println!("status:      no report yet (the agent has not polled)"),
        Some(s) => {
            println!("channel:     {}", s.channel);
            println!(
                "state:       {}",
                serde_json::to_value(s.state)?.as_str().unwrap_or("?")
            );
            println!("installed:   {}", version(&s.installed));
            println!("last good:   {}", version(&s.last_good));
            println!("root:        version {}", s.root_version);
            if let Some(t) = &s.target {
                println!("target:      {t}");
            }
            println!("last error:  {}", s.last_error.as_deref().unwrap_or("none"));
        }
    }
    if let Some(sp) = spool {
        println!(
            "spool:       {} records ({} bytes) waiting, {} dropped",
            sp.pending_records, sp.pending_bytes, sp.dropped_records
        );
    }
    Ok(())
}
