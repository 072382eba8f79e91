//! lambdatorch: serverless PyTorch inference on AWS Lambda, with TorchScript models and libtorch on
//! Amazon EFS.
//!
//! One core, two front ends. The core turns images (or tensors) into model outputs:
//! [`manifest`] describes a model directory, [`image`] decodes and preprocesses exactly as
//! torchvision does, [`model`] runs TorchScript through libtorch (crate `tch`), [`registry`] caches
//! loaded models and maps request names to directories safely. [`service`] turns a request into a
//! response and [`events`] maps Lambda events (direct, API Gateway v1/v2, Function URLs, ALB) to
//! requests and responses to proxy responses: both handlers run exactly this code, with the
//! [`limits`] checked before the work they guard and panics contained ([`contain`]). The Python
//! extension (`python` feature, module `lambdatorch._core`) binds it without ever importing
//! Python torch; the native handler (`lambda` feature, `src/bin/`) runs it on `lambda_runtime`,
//! started by the `bootstrap` launcher (crate `bootstrap/`, which links neither this crate nor
//! libtorch).
#![deny(missing_docs)]

pub mod error;
pub mod events;
pub mod image;
pub mod jpeg;
pub mod limits;
pub mod manifest;
pub mod model;
pub mod registry;
pub mod service;

#[cfg(feature = "python")]
mod python;

pub use error::{contain, Error, ErrorKind, Result};
pub use limits::Limits;
pub use model::{Model, Prediction, TensorData, LIBTORCH_VERSION};
pub use registry::Registry;
