//! lambdatorch: serverless PyTorch inference on AWS Lambda, with TorchScript models and libtorch on
//! Amazon EFS.
//!
//! One core, two front ends. The core turns images (or tensors) into model outputs:
//! [`manifest`] describes a model directory, [`image`] decodes and preprocesses exactly as
//! torchvision does, [`model`] runs TorchScript through libtorch (crate `tch`), [`registry`] caches
//! loaded models and maps request names to directories safely. The Python extension
//! (`python` feature, module `lambdatorch._core`) binds it without ever importing Python torch.
#![deny(missing_docs)]

pub mod error;
pub mod image;
pub mod manifest;
pub mod model;
pub mod registry;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, ErrorKind, Result};
pub use model::{Model, Prediction, TensorData, LIBTORCH_VERSION};
pub use registry::Registry;
