//! `edgeml root`, `push`, `rollout` and `fleet`: the operator's side of
//! the fleet API, through `edgeml_client`.

use crate::args::{
    FleetServer, PushArgs, ReleaseOptions, RolloutArgs, RolloutCommand, RootArgs, RootCommand,
    RootKeys,
};
use crate::monitor::token;
use anyhow::{anyhow, bail, Context, Result};
use edgeml_bundle::{PublicKey, SecretKey};
use edgeml_client::wire::fleet::RolloutAction;
use edgeml_client::Client;
use edgeml_fleet::{
    AbortCriteria, ArtifactRef, BundleRef, Envelope, Release, Root, Schedule, TrustedRoot,
};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A client of the fleet server with the admin token; uploads may take minutes.
pub(crate) fn client(s: &FleetServer) -> Result<Client> {
    let token = token(
        None,
        s.admin_token_file.as_deref(),
        "EDGEML_ADMIN_TOKEN",
        "admin-token",
    )?;
    let client = Client::with_timeout(&s.server, Duration::from_secs(600))?.with_admin_token(token);
    Ok(match operator() {
        Some(name) => client.with_operator(name),
        None => client,
    })
}

/// Who is acting, for the server's audit log: `EDGEML_OPERATOR`, else the
/// login name.
fn operator() -> Option<String> {
    ["EDGEML_OPERATOR", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|n| !n.trim().is_empty()))
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
    let root = if k.build_keys.is_empty() {
        root
    } else {
        root.with_build(&public_keys(&k.build_keys)?)
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
            client(server)?
                .publish_root(r.version, bytes)
                .context("publishing the root")?;
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
fn current(client: &Client, channel: &str) -> Result<Option<Release>> {
    let view = client
        .channel(channel)
        .with_context(|| format!("reading channel `{channel}`"))?;
    Ok(view.map(|v| v.release.payload_unverified()).transpose()?)
}

fn publish(client: &Client, release: &Release, opts: &ReleaseOptions) -> Result<()> {
    let keys = secret_keys(&opts.keys)?;
    let env = Envelope::sign(release, &keys.iter().collect::<Vec<_>>())?;
    client
        .publish_release(&release.channel, env.to_vec())
        .context("publishing the release")?;
    Ok(())
}

/// The registry of `edgeml push --registry`.
fn registry(url: &str, args: &PushArgs) -> Result<edgeml_client::oci::Registry> {
    let r = edgeml_client::oci::Registry::new(url)?;
    Ok(match &args.registry_user {
        Some(user) => {
            let password = std::env::var("EDGEML_REGISTRY_PASSWORD").map_err(|_| {
                anyhow!("--registry-user needs the password in $EDGEML_REGISTRY_PASSWORD")
            })?;
            r.with_basic_auth(user, password)
        }
        None => r,
    })
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
    let client = client(&args.server)?;
    let size = bytes.len() as u64;
    let registry = args
        .registry
        .as_deref()
        .map(|url| registry(url, args))
        .transpose()?;
    match &registry {
        Some(r) => {
            // OCI tags allow [A-Za-z0-9_.-]: semver build metadata's `+` becomes `_`.
            let tag = manifest.version.to_string().replace('+', "_");
            let annotations: std::collections::BTreeMap<String, String> = [
                (
                    "org.opencontainers.image.title",
                    format!("{}.wasm", manifest.name),
                ),
                (
                    "org.opencontainers.image.version",
                    manifest.version.to_string(),
                ),
                ("dev.edgeml.model", manifest.name.clone()),
                ("dev.edgeml.content-sha256", info.content_sha256.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            // Also tagged by digest (as the server tags what it stores): a
            // later push of the same version moves the version tag, and the
            // registry's garbage collection must not take a pinned bundle.
            let pb =
                crate::progress::spinner(&format!("pushing {} bytes to {}", bytes.len(), r.url()));
            for t in [format!("sha256-{sha256}"), tag.clone()] {
                r.push_artifact(
                    &bytes,
                    edgeml_client::oci::WASM_LAYER,
                    &t,
                    annotations.clone(),
                )
                .with_context(|| format!("pushing the bundle to {}", r.url()))?;
            }
            pb.finish_and_clear();
            println!("pushed {}:{tag} (sha256:{sha256})", r.url());
        }
        None => {
            let pb = crate::progress::bytes(size, "uploading the bundle");
            client
                .upload_bundle_from(&sha256, pb.wrap_read(std::io::Cursor::new(bytes)), size)
                .context("uploading the bundle")?;
            pb.finish_and_clear();
        }
    }
    let mut artifacts = Vec::new();
    for path in &args.artifacts {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let claims = edgeml_bundle::artifact::read_claims(&bytes)
            .with_context(|| format!("{} is not a precompiled artifact", path.display()))?;
        if claims.bundle_sha256 != info.content_sha256 {
            bail!(
                "{} was compiled from bundle content {}, not from {} (content {}); precompile this bundle",
                path.display(),
                claims.bundle_sha256,
                args.bundle.display(),
                info.content_sha256
            );
        }
        let digest = hex::encode(Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        match &registry {
            Some(r) => {
                r.push_artifact(
                    &bytes,
                    edgeml_client::oci::PRECOMPILED_LAYER,
                    &format!("sha256-{digest}"),
                    Default::default(),
                )
                .with_context(|| format!("pushing {} to {}", path.display(), r.url()))?;
            }
            None => {
                client
                    .upload_artifact(&digest, bytes)
                    .with_context(|| format!("uploading {}", path.display()))?;
            }
        }
        artifacts.push(ArtifactRef {
            target: claims.target,
            engine: claims.engine,
            sha256: digest,
            size,
        });
    }
    let version = current(&client, &args.channel)?.map_or(1, |r| r.version + 1);
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
            size,
        },
        rollout_percent: share,
        allow_downgrade: args.allow_downgrade,
        artifacts,
        target: args.target.clone(),
        schedule: schedule(args, share)?,
        abort: match (&args.abort_failures, args.abort_after) {
            (Some(share), Some(min_devices)) => Some(AbortCriteria {
                failure_share: parse_share(share)? / 100.0,
                min_devices,
            }),
            _ => None,
        },
    };
    release
        .validate()
        .context("checking the release before signing it")?;
    publish(&client, &release, &args.release)?;
    println!(
        "pushed {} {} to channel {} (release {version}, bundle sha256:{}, rollout {}{}, expires {}{})",
        manifest.name,
        manifest.version,
        args.channel,
        &sha256[..12],
        match &release.schedule {
            Some(s) => format!(
                "in steps {} (next step after {} with {} device(s) running it)",
                s.steps_text(),
                args.step_time,
                s.min_step_devices
            ),
            None => format!("{share}%"),
        },
        release
            .target
            .as_deref()
            .map(|t| format!(" of devices matching `{t}`"))
            .unwrap_or_default(),
        release.expires,
        if release.artifacts.is_empty() {
            String::new()
        } else {
            let targets: Vec<&str> = release.artifacts.iter().map(|a| a.target.as_str()).collect();
            format!(", precompiled for {}", targets.join(", "))
        }
    );
    Ok(())
}

/// The step schedule `--steps` asks for, ending at `share` percent.
fn schedule(args: &PushArgs, share: f64) -> Result<Option<Schedule>> {
    let Some(spec) = &args.steps else {
        return Ok(None);
    };
    let steps = match spec.strip_prefix("exp:") {
        Some(rest) => {
            let (start, rate) = rest
                .split_once(':')
                .ok_or_else(|| anyhow!("`--steps {spec}`: write exp:START:RATE (exp:1:2)"))?;
            let rate: f64 = rate
                .parse()
                .map_err(|_| anyhow!("`--steps {spec}`: the rate `{rate}` is not a number"))?;
            Schedule::exponential(parse_share(start)?, rate, share)?
        }
        None => spec
            .split(',')
            .map(parse_share)
            .collect::<Result<Vec<_>>>()?,
    };
    if steps.last() != Some(&share) {
        bail!(
            "the last step ({}%) must be the rollout share ({share}%): end `--steps` with it, or give `--rollout {}%`",
            steps.last().copied().unwrap_or(0.0),
            steps.last().copied().unwrap_or(0.0)
        );
    }
    Ok(Some(Schedule {
        steps,
        min_step_secs: Duration::from(args.step_time).as_secs(),
        min_step_devices: args.step_devices,
    }))
}

/// `edgeml fleet tag DEVICE key=value ...`
pub fn tag(s: &FleetServer, device: &str, pairs: &[String]) -> Result<()> {
    let tags = edgeml_fleet::parse_tags(pairs.iter().map(String::as_str))?;
    let now = client(s)?
        .set_device_tags(device, &tags)
        .with_context(|| format!("setting the tags of device `{device}`"))?;
    println!("device {device}: tags {}", tags_text(&now));
    Ok(())
}

fn tags_text(tags: &edgeml_fleet::Tags) -> String {
    if tags.is_empty() {
        return "-".into();
    }
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn rollout(args: &RolloutArgs) -> Result<()> {
    let (channel, server, action) = match &args.command {
        RolloutCommand::Pause { channel, server } => (channel, server, RolloutAction::Pause),
        RolloutCommand::Resume { channel, server } => (channel, server, RolloutAction::Resume),
        RolloutCommand::Abort { channel, server } => (channel, server, RolloutAction::Abort),
        RolloutCommand::Promote { channel, server } => (channel, server, RolloutAction::Promote),
        RolloutCommand::Set {
            share,
            channel,
            server,
            release,
        } => {
            let client = client(server)?;
            let mut r = current(&client, channel)?
                .ok_or_else(|| anyhow!("nothing published to channel `{channel}`"))?;
            r.version += 1;
            r.rollout_percent = parse_share(share)?;
            if r.schedule.is_some() {
                bail!(
                    "the release on channel `{channel}` is paced in steps; `edgeml rollout promote` moves it to its last step, or push a release with new `--steps`"
                );
            }
            r.expires = humantime::format_rfc3339_seconds(
                SystemTime::now() + Duration::from(release.expires),
            )
            .to_string();
            publish(&client, &r, release)?;
            println!(
                "channel {channel}: {} {} now rolls out to {}% (release {})",
                r.model, r.model_version, r.rollout_percent, r.version
            );
            return Ok(());
        }
    };
    let changed = client(server)?
        .rollout(channel, action)
        .context("changing the rollout")?;
    match changed.step {
        Some(step) => println!(
            "channel {channel}: rollout {}, step {}",
            changed.state.name(),
            step + 1
        ),
        None => println!("channel {channel}: rollout {}", changed.state.name()),
    }
    Ok(())
}

/// The channels and the devices (those of `channel` only, if given).
fn fleet_state(
    client: &edgeml_client::Client,
    channel: Option<&str>,
) -> Result<(
    Vec<edgeml_client::wire::fleet::ChannelStatus>,
    Vec<edgeml_client::wire::fleet::FleetDevice>,
)> {
    let channels = client
        .channels()
        .context("reading channels")?
        .into_iter()
        .filter(|c| channel.is_none_or(|ch| c.channel == ch))
        .collect();
    let devices = client
        .fleet_devices()
        .context("reading devices")?
        .into_iter()
        .filter(|d| channel.is_none_or(|c| d.status.channel == c))
        .collect();
    Ok((channels, devices))
}

pub fn view(s: &FleetServer, channel: Option<&str>, json: bool) -> Result<()> {
    let client = client(s)?;
    let (channels, devices) = fleet_state(&client, channel)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"channels": channels, "devices": devices})
            )?
        );
        return Ok(());
    }
    for c in &channels {
        let share = share_text(c);
        let target = c
            .release
            .target
            .as_deref()
            .map(|t| format!(" of `{t}`"))
            .unwrap_or_default();
        println!(
            "channel {}: {} {} at {share}{target}, rollout {}{}",
            c.channel,
            c.release.model,
            c.release.model_version,
            c.state.name(),
            c.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    println!(
        "{:<16} {:<10} {:<10} {:<9} {:<12} {:>9}  {:<24} last error",
        "DEVICE", "INSTALLED", "TARGET", "CODE", "STATE", "SEEN", "TAGS"
    );
    let now = edgeml_telemetry::now_ms();
    for d in &devices {
        let st = &d.status;
        let code = format!(
            "{}{}",
            st.host_target.as_deref().unwrap_or("-"),
            if st.can_compile { "" } else { "*" }
        );
        println!(
            "{:<16} {:<10} {:<10} {:<9} {:<12} {:>8}s  {:<24} {}",
            d.device_id,
            st.installed.as_ref().map_or("-", |i| i.version.as_str()),
            st.target.as_deref().unwrap_or("-"),
            code,
            st.state.name(),
            now.saturating_sub(d.last_seen_ms) / 1000,
            tags_text(&d.tags),
            st.last_error.as_deref().unwrap_or("")
        );
    }
    if devices.iter().any(|d| !d.status.can_compile) {
        println!("* no compiler: runs only precompiled artifacts (edgeml precompile, edgeml push --artifact)");
    }
    Ok(())
}

/// A channel's share: `25%`, or `25% (step 2 of 3: 5%,25%,100%)`.
fn share_text(c: &edgeml_client::wire::fleet::ChannelStatus) -> String {
    match &c.release.schedule {
        Some(s) => format!(
            "{}% (step {} of {}: {})",
            c.release.share(Some(c.step)),
            c.step + 1,
            s.steps.len(),
            s.steps_text()
        ),
        None => format!("{}%", c.release.rollout_percent),
    }
}

/// `edgeml fleet status`: the rollouts and the devices as tables.
pub fn status(s: &FleetServer, channel: Option<&str>) -> Result<()> {
    use comfy_table::{
        presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, ContentArrangement, Table,
    };
    let client = client(s)?;
    let (channels, devices) = fleet_state(&client, channel)?;
    let backlog: std::collections::BTreeMap<String, (u64, u64)> = client
        .devices()
        .context("reading telemetry devices")?
        .into_iter()
        .map(|d| (d.device_id, (d.pending_records, d.dropped_records)))
        .collect();
    let new_table = |header: &[&str]| {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_width(160)
            .set_header(header.to_vec());
        t
    };
    let mut rollouts = new_table(&[
        "CHANNEL", "RELEASE", "STATE", "SHARE", "TARGET", "RUNNING", "REASON",
    ]);
    for c in &channels {
        let on_channel = devices.iter().filter(|d| d.status.channel == c.channel);
        let running = on_channel
            .clone()
            .filter(|d| {
                d.status
                    .installed
                    .as_ref()
                    .is_some_and(|i| i.sha256 == c.release.bundle.sha256)
            })
            .count();
        rollouts.add_row(vec![
            Cell::new(&c.channel),
            Cell::new(format!("{} {}", c.release.model, c.release.model_version)),
            Cell::new(c.state.name()),
            Cell::new(share_text(c)),
            Cell::new(c.release.target.as_deref().unwrap_or("all")),
            Cell::new(format!("{running} of {}", on_channel.count()))
                .set_alignment(CellAlignment::Right),
            Cell::new(c.reason.as_deref().unwrap_or("")),
        ]);
    }
    let mut fleet = new_table(&[
        "DEVICE", "CHANNEL", "MODEL", "CODE", "TAGS", "SEEN", "HEALTH", "BACKLOG",
    ]);
    let now = edgeml_telemetry::now_ms();
    for d in &devices {
        let st = &d.status;
        let health = match (&st.error_kind, &st.last_error) {
            (Some(k), Some(e)) => format!("{}: {k}: {e}", st.state.name()),
            (None, Some(e)) => format!("{}: {e}", st.state.name()),
            _ => st.state.name().to_string(),
        };
        let backlog = match backlog.get(&d.device_id) {
            Some((p, 0)) => format!("{p}"),
            Some((p, dropped)) => format!("{p} ({dropped} dropped)"),
            None => "-".into(),
        };
        fleet.add_row(vec![
            Cell::new(&d.device_id),
            Cell::new(&st.channel),
            Cell::new(
                st.installed
                    .as_ref()
                    .map_or("-".to_string(), |i| format!("{} {}", i.model, i.version)),
            ),
            Cell::new(format!(
                "{}{}",
                st.host_target.as_deref().unwrap_or("-"),
                if st.can_compile { "" } else { "*" }
            )),
            Cell::new(tags_text(&d.tags)),
            Cell::new(format!(
                "{}s ago",
                now.saturating_sub(d.last_seen_ms) / 1000
            ))
            .set_alignment(CellAlignment::Right),
            Cell::new(health),
            Cell::new(backlog).set_alignment(CellAlignment::Right),
        ]);
    }
    println!("Rollouts ({})\n{rollouts}", channels.len());
    println!("Devices ({})\n{fleet}", devices.len());
    if devices.iter().any(|d| !d.status.can_compile) {
        println!("* no compiler: runs only precompiled artifacts (edgeml precompile, edgeml push --artifact)");
    }
    Ok(())
}
