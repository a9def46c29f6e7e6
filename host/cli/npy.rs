//! Tensors on disk as NumPy `.npy` files.

use anyhow::{anyhow, Context, Result};
use edgeml_runtime::Tensor;
use std::path::Path;

/// Read `path` as a tensor called `name`. C order only; the shape comes from the file.
pub fn read(name: &str, path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (dtype, shape, data) =
        edgeml_telemetry::npy::decode(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(Tensor {
        name: name.to_string(),
        dtype,
        shape,
        data,
    })
}

/// Write a tensor to `path`.
pub fn write(t: &Tensor, path: &Path) -> Result<()> {
    let bytes = edgeml_telemetry::npy::encode(t.dtype, &t.shape, &t.data)
        .map_err(|e| anyhow!("{}: {e}", t.name))?;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// A file name for a tensor: anything outside `[A-Za-z0-9._-]` becomes `_`,
/// so `gpu_0/softmax_1` is written as `gpu_0_softmax_1.npy`; never empty,
/// never hidden, never a path.
pub fn file_stem(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while s.starts_with('.') {
        s.replace_range(..1, "_");
    }
    if s.is_empty() {
        s.push_str("output");
    }
    s.truncate(200);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeml_runtime::Dtype;

    #[test]
    fn file_stem_neutralises_paths_and_hidden_names() {
        assert_eq!(file_stem("gpu_0/softmax_1"), "gpu_0_softmax_1");
        assert_eq!(file_stem("../../etc/passwd"), "_._.._etc_passwd");
        assert_eq!(file_stem(".hidden"), "_hidden");
        assert_eq!(file_stem(""), "output");
        assert_eq!(file_stem("a:b c"), "a_b_c");
    }

    #[test]
    fn round_trips_every_dtype() {
        let dir = tempfile::tempdir().unwrap();
        for (dtype, data) in [
            (Dtype::F32, 1.5f32.to_le_bytes().repeat(6)),
            (Dtype::F64, (-2.25f64).to_le_bytes().repeat(6)),
            (Dtype::I32, 7i32.to_le_bytes().repeat(6)),
            (Dtype::I64, (-9i64).to_le_bytes().repeat(6)),
            (Dtype::U8, vec![3u8; 6]),
        ] {
            let t = Tensor {
                name: "x".into(),
                dtype,
                shape: vec![2, 3],
                data,
            };
            let p = dir.path().join(format!("{dtype}.npy"));
            write(&t, &p).unwrap();
            assert_eq!(read("x", &p).unwrap(), t);
        }
    }
}
