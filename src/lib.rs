//! lambdatorch: serverless PyTorch inference on AWS Lambda, with the models and libtorch on
//! Amazon EFS.
//!
//! One core, two front ends. A [`Model`] is a manifest ([`manifest`]) plus three parts, each in
//! its own module: an [`input`] pipeline (images through [`image`] and [`jpeg`], preprocessed
//! exactly as torchvision does; texts through [`text`], tokenized by the Hugging Face `tokenizers`
//! crate; or tensors of the manifest's dtype, [`tensor`]), a [`backend`]
//! that runs the forward pass (TorchScript through libtorch's `tch` binding, or an AOTInductor
//! package through a small C++ shim), and an [`output`] head (classification, embedding or raw). The
//! [`batcher`] lets concurrent requests share forward passes. [`registry`] caches loaded models
//! within a memory budget and maps request names to directories safely. [`service`] turns a request into a response and [`events`] maps Lambda
//! events (direct, API Gateway v1/v2, Function URLs, ALB) to requests, responses to proxy
//! responses, and logs each request: both handlers run exactly this code, with the [`limits`]
//! checked before the work they guard and panics contained ([`contain`]). The Python extension
//! (`python` feature, module `lambdatorch._core`) binds it without ever importing Python torch;
//! the native handler (`lambda` feature, [`lambda`] and `src/bin/`) runs it on `lambda_runtime`,
//! started by the `bootstrap` launcher (crate `bootstrap/`, which links neither this crate nor
//! libtorch).
#![deny(missing_docs)]

pub mod backend;
pub mod batcher;
pub mod error;
pub mod events;
pub mod image;
pub mod input;
pub mod jpeg;
pub mod lanes;
pub mod limits;
pub mod manifest;
pub mod model;
pub mod output;
pub mod registry;
pub mod service;
pub mod tensor;
pub mod text;

#[cfg(feature = "lambda")]
pub mod lambda;
#[cfg(any(feature = "python", feature = "lambda"))]
pub mod logging;
#[cfg(feature = "python")]
mod python;

pub use error::{contain, Error, ErrorKind, Result};
pub use limits::Limits;
pub use model::{Model, LIBTORCH_VERSION};
pub use output::Prediction;
pub use registry::Registry;
pub use tensor::{DType, TensorData};
