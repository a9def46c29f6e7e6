//! `edgeml bench`: cold load (verify + compile), cached load (verify + load
//! the compiled artifact + first prediction), predict latency and throughput.

use crate::args::BenchArgs;
use crate::commands::{config, load, parse_inputs, policy, runtime_with};
use anyhow::{bail, Context, Result};
use edgeml_runtime::{bundle::Dim, CacheOutcome, Input, Model, Tensor};
use serde_json::json;
use std::time::{Duration, Instant};

pub fn bench(args: &BenchArgs) -> Result<()> {
    if args.iterations == 0 || args.threads == 0 {
        bail!("--iterations and --threads must be at least 1");
    }
    let policy = policy(&args.trust)?;
    let bundle_len = std::fs::metadata(&args.bundle)
        .with_context(|| format!("reading {}", args.bundle.display()))?
        .len();
    // A private cache so the first load really compiles and the second
    // really does not; or the one `--cache-dir` names: warm, both loads come
    // from it, and the peak RSS is that of serving alone (compiling peaks far
    // higher, and a device loads cached or precompiled code).
    let mut cfg = config(&args.host)?;
    let private = match &args.host.cache_dir {
        Some(_) => None,
        None => {
            let dir = tempfile::tempdir().context("creating a temporary cache directory")?;
            cfg.cache_dir(dir.path());
            Some(dir)
        }
    };
    cfg.perf_map(args.perf_map);

    let t = Instant::now();
    let cold_runtime = runtime_with(&cfg)?;
    let (_, cold) = load(&cold_runtime, &args.bundle, &policy)?;
    let cold_load = (cold.load_info().cache != CacheOutcome::Hit).then(|| t.elapsed());
    let input = match parse_inputs(&args.input)? {
        Some(i) => i,
        None => zeros(&cold),
    };
    drop(cold);
    drop(cold_runtime);

    let t = Instant::now();
    let runtime = runtime_with(&cfg)?;
    let (_, model) = load(&runtime, &args.bundle, &policy)?;
    if model.load_info().cache != CacheOutcome::Hit {
        bail!(
            "the second load did not come from the cache: {:?}",
            model.load_info().cache
        );
    }
    model.predict(input.clone())?;
    let cached_load = t.elapsed();

    let pb = crate::progress::steps((args.warmup + args.iterations) as u64, "measuring latency");
    for _ in 0..args.warmup {
        model.predict(input.clone())?;
        pb.inc(1);
    }
    let mut lat = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        let i = input.clone();
        let t = Instant::now();
        model.predict(i)?;
        lat.push(t.elapsed());
        pb.inc(1);
    }
    pb.finish_and_clear();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    let pb = crate::progress::spinner(&format!("measuring throughput on {} threads", args.threads));
    let throughput = throughput(&model, &input, args.threads, args.iterations);
    pb.finish_and_clear();
    let throughput = throughput?;

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if args.json {
        let out = json!({
            "model": model.manifest().name,
            "version": model.manifest().version.to_string(),
            "backend": model.backend(),
            "onnxruntime": runtime.onnxruntime_library().map(|(_, version)| version),
            "bundle_bytes": bundle_len,
            "iterations": args.iterations,
            "threads": args.threads,
            "cold_load_ms": cold_load.map(ms),
            "cached_load_ms": ms(cached_load),
            "p50_us": us(pct(0.50)),
            "p90_us": us(pct(0.90)),
            "p99_us": us(pct(0.99)),
            "throughput_per_s": throughput,
            "peak_rss_kb": peak_rss_kb(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} {} ({} backend, {} bytes)",
            model.manifest().name,
            model.manifest().version,
            model.backend(),
            bundle_len
        );
        match cold_load {
            Some(d) => println!("cold load (verify + compile):           {:>10.1} ms", ms(d)),
            None => println!("cold load (verify + compile):           (the cache was warm)"),
        }
        println!(
            "cached load (verify + load + 1st call): {:>10.1} ms",
            ms(cached_load)
        );
        println!(
            "predict p50 / p90 / p99:                {:>10.1} / {:.1} / {:.1} us",
            us(pct(0.5)),
            us(pct(0.9)),
            us(pct(0.99))
        );
        println!(
            "throughput ({} thread(s)):               {:>10.1} /s",
            args.threads, throughput
        );
    }
    drop(private);
    Ok(())
}

fn throughput(model: &Model, input: &Input, threads: usize, iterations: usize) -> Result<f64> {
    let per_thread = iterations.div_ceil(threads);
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || -> Result<()> {
                    for _ in 0..per_thread {
                        model.predict(input.clone())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))??;
        }
        Ok(())
    })?;
    Ok((per_thread * threads) as f64 / t.elapsed().as_secs_f64())
}

/// Peak resident set size of this process (Linux `VmHWM`), if known.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Zero tensors shaped like the model's inputs, symbolic dimensions set to 1.
fn zeros(model: &Model) -> Input {
    Input::Tensors(
        model
            .manifest()
            .inputs
            .iter()
            .map(|s| {
                let shape: Vec<u64> = s
                    .shape
                    .iter()
                    .map(|d| if let Dim::Fixed(n) = d { *n } else { 1 })
                    .collect();
                let n = shape.iter().product::<u64>() as usize;
                Tensor {
                    name: s.name.clone(),
                    dtype: s.dtype,
                    shape,
                    data: vec![0; n * s.dtype.size()],
                }
            })
            .collect(),
    )
}
