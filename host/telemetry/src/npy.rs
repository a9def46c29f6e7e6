//! NumPy `.npy` encoding of raw little-endian tensors: reference data for
//! baselines, exported samples, and `edgeml run` outputs all use it.

use edgeml_bundle::Dtype;
use npyz::WriterBuilder;

/// Parse a C-ordered `.npy` file into dtype, shape and little-endian bytes.
pub fn decode(bytes: &[u8]) -> Result<(Dtype, Vec<u64>, Vec<u8>), String> {
    let file = npyz::NpyFile::new(bytes).map_err(|e| format!("not a .npy file: {e}"))?;
    if file.order() == npyz::Order::Fortran {
        return Err(
            "Fortran-ordered arrays are not supported; save it with np.ascontiguousarray".into(),
        );
    }
    let shape = file.shape().to_vec();
    let descr = file.dtype().descr();
    let bad = |e: std::io::Error| format!("bad .npy data: {e}");
    let (dtype, data) = match descr
        .trim_matches('\'')
        .trim_start_matches(['<', '>', '|', '='])
    {
        "f4" => (
            Dtype::F32,
            le(file.into_vec::<f32>().map_err(bad)?, f32::to_le_bytes),
        ),
        "f8" => (
            Dtype::F64,
            le(file.into_vec::<f64>().map_err(bad)?, f64::to_le_bytes),
        ),
        "i4" => (
            Dtype::I32,
            le(file.into_vec::<i32>().map_err(bad)?, i32::to_le_bytes),
        ),
        "i8" => (
            Dtype::I64,
            le(file.into_vec::<i64>().map_err(bad)?, i64::to_le_bytes),
        ),
        "u1" => (Dtype::U8, file.into_vec::<u8>().map_err(bad)?),
        other => {
            return Err(format!(
                "dtype `{other}` is not supported (use float32, float64, int32, int64 or uint8)"
            ))
        }
    };
    Ok((dtype, shape, data))
}

fn le<T: Copy, const N: usize>(v: Vec<T>, f: fn(T) -> [u8; N]) -> Vec<u8> {
    v.into_iter().flat_map(f).collect()
}

/// Encode little-endian `data` of `dtype` and `shape` as a `.npy` file.
pub fn encode(dtype: Dtype, shape: &[u64], data: &[u8]) -> Result<Vec<u8>, String> {
    let want = shape
        .iter()
        .try_fold(dtype.size() as u64, |a, &d| a.checked_mul(d));
    if want != Some(data.len() as u64) {
        return Err(format!(
            "{} bytes do not fill shape {shape:?} of {dtype}",
            data.len()
        ));
    }
    let mut buf = Vec::with_capacity(data.len() + 128);
    let chunks = data.chunks_exact(dtype.size());
    macro_rules! put {
        ($ty:ty) => {{
            let mut out = npyz::WriteOptions::<$ty>::new()
                .default_dtype()
                .shape(shape)
                .writer(&mut buf)
                .begin_nd()
                .map_err(|e| e.to_string())?;
            out.extend(chunks.map(|c| {
                let mut a = [0u8; std::mem::size_of::<$ty>()];
                a.copy_from_slice(c);
                <$ty>::from_le_bytes(a)
            }))
            .map_err(|e| e.to_string())?;
            out.finish().map_err(|e| e.to_string())?;
        }};
    }
    match dtype {
        Dtype::F32 => put!(f32),
        Dtype::F64 => put!(f64),
        Dtype::I32 => put!(i32),
        Dtype::I64 => put!(i64),
        Dtype::U8 => put!(u8),
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_dtype() {
        for (dtype, data) in [
            (Dtype::F32, 1.5f32.to_le_bytes().repeat(6)),
            (Dtype::F64, (-2.25f64).to_le_bytes().repeat(6)),
            (Dtype::I32, 7i32.to_le_bytes().repeat(6)),
            (Dtype::I64, (-9i64).to_le_bytes().repeat(6)),
            (Dtype::U8, vec![3u8; 6]),
        ] {
            let bytes = encode(dtype, &[2, 3], &data).unwrap();
            assert_eq!(decode(&bytes).unwrap(), (dtype, vec![2, 3], data));
        }
        assert!(encode(Dtype::F32, &[2], &[0u8; 4]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
            let mut npy = b"\x93NUMPY\x01\x00".to_vec();
            npy.extend_from_slice(&bytes);
            let _ = decode(&npy);
        }

        #[test]
        fn round_trips_any_shape(shape in proptest::collection::vec(0u64..5, 0..4)) {
            let n: u64 = shape.iter().product();
            let data = vec![1u8; n as usize * 4];
            let bytes = encode(Dtype::F32, &shape, &data).unwrap();
            proptest::prop_assert_eq!(decode(&bytes).unwrap(), (Dtype::F32, shape, data));
        }
    }
}
