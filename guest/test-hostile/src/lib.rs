//! A hostile model component for the host's tests. What it does is chosen
//! by the media type of the input:
//!
//! - `x-test/loop`: spins forever (the host must time it out);
//! - `x-test/grow`: allocates without bound (the host must stop it at its memory limit);
//! - `x-test/panic`: panics (a trap);
//! - `x-test/load-bytes`: asks `wasi:nn` to load model bytes it brought itself
//!   (the host must refuse: they are not the signed model);
//! - `x-test/escape`: tries the filesystem, environment and arguments and
//!   reports what it could see as monitoring values (all must be zero);
//! - `x-test/tensor-flood`: makes 1 MiB `wasi:nn` tensors from one small
//!   buffer and keeps them all (host memory, not its own: the host must
//!   count it against the guest's memory limit);
//! - `x-test/context-flood`: creates execution contexts and keeps them all
//!   (the host must cap them);
//! - tensors: passed to the model, like the generic component.

use edgeml_guest::bindings::wasi::nn::graph::{load, load_by_name, ExecutionTarget, GraphEncoding};
use edgeml_guest::bindings::wasi::nn::tensor::{Tensor as NnTensor, TensorType};
use edgeml_guest::{Error, Guest, Input, Metadata, Prediction};

struct Hostile;

impl Guest for Hostile {
    fn metadata() -> Result<Metadata, Error> {
        edgeml_guest::metadata(
            "edgeml-test-hostile@0",
            &["x-test/*"],
            &["fs_entries", "env_vars", "args"],
        )
    }

    fn predict(input: Input) -> Result<Prediction, Error> {
        let media = match input {
            Input::Tensors(t) => {
                return Ok(Prediction {
                    outputs: edgeml_guest::compute(t)?,
                    scores: None,
                    monitoring: vec![],
                })
            }
            Input::Media(m) => m,
        };
        match media.media_type.as_str() {
            "x-test/loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "x-test/grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "x-test/panic" => panic!("hostile guest panicked on purpose"),
            "x-test/tensor-flood" => {
                let buffer = vec![0u8; 1 << 20];
                let mut hoard = Vec::new();
                loop {
                    hoard.push(NnTensor::new(&[1 << 18], TensorType::Fp32, &buffer));
                    std::hint::black_box(&hoard);
                }
            }
            "x-test/context-flood" => {
                let name = edgeml_guest::manifest()?.name.clone();
                let graph = load_by_name(&name)
                    .map_err(|e| Error::Inference(format!("{:?}: {}", e.code(), e.data())))?;
                let mut hoard = Vec::new();
                loop {
                    let ctx = graph
                        .init_execution_context()
                        .map_err(|e| Error::Inference(format!("{:?}: {}", e.code(), e.data())))?;
                    hoard.push(ctx);
                    std::hint::black_box(&hoard);
                }
            }
            "x-test/load-bytes" => {
                let foreign = b"these bytes are not the signed model".to_vec();
                match load(&[foreign], GraphEncoding::Onnx, ExecutionTarget::Cpu) {
                    Ok(_) => Err(Error::Inference("host loaded foreign model bytes".into())),
                    Err(e) => Err(Error::Inference(format!("{:?}: {}", e.code(), e.data()))),
                }
            }
            "x-test/escape" => {
                let fs = ["/", ".", "/etc", "/tmp"]
                    .iter()
                    .filter_map(|d| std::fs::read_dir(d).ok())
                    .map(|entries| entries.count())
                    .sum::<usize>();
                let env = std::env::vars().count();
                let args = std::env::args().count();
                Ok(Prediction {
                    outputs: vec![],
                    scores: None,
                    monitoring: vec![fs as f32, env as f32, args as f32],
                })
            }
            other => Err(Error::UnsupportedMedia(other.to_string())),
        }
    }
}

edgeml_guest::export!(Hostile);
