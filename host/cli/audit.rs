//! `edgeml audit log` and `edgeml audit verify`: the fleet server's
//! hash-chained audit log, checked here, on the operator's machine.

use crate::args::{AuditArgs, AuditCommand};
use anyhow::{Context, Result};
use edgeml_client::wire::audit::{verify_chain, AuditEntry, AuditHead};
use std::io::Write;
use std::path::Path;

pub fn run(args: &AuditArgs) -> Result<()> {
    match &args.command {
        AuditCommand::Log {
            server,
            action,
            json,
        } => {
            let (entries, _) = crate::fleet::client(server)?.audit_log()?;
            let shown: Vec<&AuditEntry> = entries
                .iter()
                .filter(|e| {
                    action
                        .as_ref()
                        .is_none_or(|a| e.action.starts_with(a.as_str()))
                })
                .collect();
            if *json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                print_log(&shown);
            }
            Ok(())
        }
        AuditCommand::Verify {
            server,
            checkpoint,
            json,
        } => verify(server, checkpoint.as_deref(), *json),
    }
}

fn print_log(entries: &[&AuditEntry]) {
    println!(
        "{:>5}  {:<20}  {:<18}  {:<16}  {:<24}  details",
        "seq", "time (UTC)", "who", "action", "target"
    );
    for e in entries {
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms),
        )
        .to_string();
        let who = match &e.operator {
            Some(o) => format!("{} ({o})", e.actor),
            None => e.actor.clone(),
        };
        let mut details: Vec<String> = e.details.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !e.key_ids.is_empty() {
            details.push(format!("keys={}", e.key_ids.join(",")));
        }
        println!(
            "{:>5}  {:<20}  {:<18}  {:<16}  {:<24}  {}",
            e.seq,
            when,
            who,
            e.action,
            e.target,
            details.join(" ")
        );
    }
}

fn verify(server: &crate::args::FleetServer, checkpoint: Option<&Path>, json: bool) -> Result<()> {
    let kept = match checkpoint {
        Some(p) if p.exists() => Some(read_checkpoint(p)?),
        _ => None,
    };
    let (entries, server_head) = crate::fleet::client(server)?.audit_log()?;
    let head = verify_chain(&entries, Some(&server_head), kept.as_ref())
        .context("the audit log failed verification")?;
    if let Some(p) = checkpoint {
        write_checkpoint(p, &head)?;
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": true, "entries": entries.len(), "head": head, "checkpoint": kept})
        );
    } else {
        println!(
            "audit log OK: {} entries, every hash and link checked; head {} ({})",
            entries.len(),
            head.seq,
            head.hash
        );
        match (checkpoint, &kept) {
            (Some(p), Some(k)) => println!(
                "it still contains checkpoint entry {} unchanged; {} now records entry {}",
                k.seq,
                p.display(),
                head.seq
            ),
            (Some(p), None) => println!("{} now records entry {}", p.display(), head.seq),
            (None, _) => println!(
                "note: without --checkpoint, entries removed from the end together with the server's head record go unnoticed"
            ),
        }
    }
    Ok(())
}

fn read_checkpoint(p: &Path) -> Result<AuditHead> {
    let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not an audit checkpoint (written by `edgeml audit verify --checkpoint`)",
            p.display()
        )
    })
}

/// Replace the checkpoint atomically: a crash leaves the old one or the new one.
fn write_checkpoint(p: &Path, head: &AuditHead) -> Result<()> {
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing a checkpoint in {}", dir.display()))?;
    tmp.write_all(serde_json::to_string_pretty(head)?.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", p.display()))?;
    tmp.persist(p)
        .with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}
