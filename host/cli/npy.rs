//! Tensors on disk as NumPy `.npy` files.

use anyhow::{bail, Context, Result};
use edgeml_runtime::{Dtype, Tensor};
use npyz::WriterBuilder;
use std::path::Path;

/// Read `path` as a tensor called `name`. C order only; the shape comes from the file.
pub fn read(name: &str, path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = npyz::NpyFile::new(&bytes[..])
        .with_context(|| format!("{} is not a .npy file", path.display()))?;
    if file.order() == npyz::Order::Fortran {
        bail!(
            "{}: Fortran-ordered arrays are not supported; save it with np.ascontiguousarray",
            path.display()
        );
    }
    let shape = file.shape().to_vec();
    let descr = file.dtype().descr();
    let (dtype, data) = match descr
        .trim_matches('\'')
        .trim_start_matches(['<', '>', '|', '='])
    {
        "f4" => (Dtype::F32, le(file.into_vec::<f32>()?, f32::to_le_bytes)),
        "f8" => (Dtype::F64, le(file.into_vec::<f64>()?, f64::to_le_bytes)),
        "i4" => (Dtype::I32, le(file.into_vec::<i32>()?, i32::to_le_bytes)),
        "i8" => (Dtype::I64, le(file.into_vec::<i64>()?, i64::to_le_bytes)),
        "u1" => (Dtype::U8, file.into_vec::<u8>()?),
        other => bail!(
            "{}: dtype `{other}` is not supported (use float32, float64, int32, int64 or uint8)",
            path.display()
        ),
    };
    Ok(Tensor {
        name: name.to_string(),
        dtype,
        shape,
        data,
    })
}

fn le<T: Copy, const N: usize>(v: Vec<T>, f: fn(T) -> [u8; N]) -> Vec<u8> {
    v.into_iter().flat_map(f).collect()
}

/// Write a tensor to `path`.
pub fn write(t: &Tensor, path: &Path) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let w = std::io::BufWriter::new(file);
    let size = t.dtype.size();
    let chunks = t.data.chunks_exact(size);
    macro_rules! put {
        ($ty:ty) => {{
            let mut out = npyz::WriteOptions::<$ty>::new()
                .default_dtype()
                .shape(&t.shape)
                .writer(w)
                .begin_nd()?;
            out.extend(
                chunks
                    .map(|c| <$ty>::from_le_bytes(c.try_into().expect("chunk size matches dtype"))),
            )?;
            out.finish()?;
        }};
    }
    match t.dtype {
        Dtype::F32 => put!(f32),
        Dtype::F64 => put!(f64),
        Dtype::I32 => put!(i32),
        Dtype::I64 => put!(i64),
        Dtype::U8 => put!(u8),
    }
    Ok(())
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
