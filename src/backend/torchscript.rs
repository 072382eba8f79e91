//! TorchScript archives (`torch.jit.save`), run by libtorch's `torch::jit::Module` through `tch`.

use std::path::Path;

use tch::{CModule, Device, IValue, Tensor};

use super::Backend;
use crate::error::first_line;

/// A TorchScript module in eval mode.
pub struct TorchScript {
    module: CModule,
}

impl TorchScript {
    /// Loads the archive at `path` onto the CPU, in eval mode.
    pub fn load(path: &Path) -> Result<TorchScript, String> {
        let mut module = CModule::load_on_device(path, Device::Cpu).map_err(|err| {
            format!(
                "not a loadable TorchScript model: {}",
                first_line(&err.to_string())
            )
        })?;
        module.set_eval();
        Ok(TorchScript { module })
    }
}

impl Backend for TorchScript {
    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        let inputs: Vec<IValue> = inputs
            .iter()
            .map(|t| IValue::Tensor(t.shallow_clone()))
            .collect();
        let output = tch::no_grad(|| self.module.forward_is(&inputs))
            .map_err(|err| first_line(&err.to_string()))?;
        tensors_of(output)
    }
}

/// A module's return value as tensors: one tensor, or a tuple or list of them.
fn tensors_of(value: IValue) -> Result<Vec<Tensor>, String> {
    match value {
        IValue::Tensor(tensor) => Ok(vec![tensor]),
        IValue::Tuple(items) | IValue::GenericList(items) => items
            .into_iter()
            .map(|item| match item {
                IValue::Tensor(tensor) => Ok(tensor),
                other => Err(format!("the model returned a {} inside its outputs, not a tensor", kind(&other))),
            })
            .collect(),
        IValue::TensorList(tensors) => Ok(tensors),
        other => Err(format!(
            "the model returned a {}; lambdatorch serves models that return a tensor or a tuple of tensors",
            kind(&other)
        )),
    }
}

fn kind(value: &IValue) -> &'static str {
    match value {
        IValue::None => "None",
        IValue::Bool(_) => "bool",
        IValue::Int(_) => "int",
        IValue::Double(_) => "float",
        IValue::String(_) => "string",
        IValue::GenericDict(_) => "dict",
        _ => "value of another kind",
    }
}
